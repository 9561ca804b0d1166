"""Shared engine fixtures."""

import pytest

# --- engine (scheduler, pool, sampling) fixtures -----------------------------------------------

TINY_ENGINE_MODEL = dict(vocab_size=300, hidden_size=64, num_layers=2, num_heads=2, qk_dim=64,
                         v_dim=128, ffn_dim=128)


# one intra-op thread: on a shared 2-core machine OpenMP threads that wait for a descheduled
# peer make small matmuls 100x slower
ENGINE_SETTINGS = dict(device="cpu", max_num_seqs=16, max_num_batched_tokens=208,
                       decode_buckets=tuple(range(4, 65, 4)), num_threads=1)


@pytest.fixture(scope="session")
def tiny_model():
    """A random-weight RetNet (hidden 64, 2 layers, vocab 300), fp32 on CPU; never mutated."""
    import torch

    from engine.config import ModelConfig
    from engine.model import RetNet

    torch.manual_seed(0)
    return RetNet(ModelConfig(**TINY_ENGINE_MODEL)).eval().requires_grad_(False)


@pytest.fixture
def make_engine(tiny_model):
    """LLMEngine factory on the tiny model. Decode batches are padded to multiples of 4: MKL's
    sgemm gives row results that depend on the row count for 1-3 rows (and, with 2 threads,
    5-7 and 9-11), so these sizes make a row's numbers independent of the rest of the batch."""
    import torch

    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine

    def make(**overrides):
        settings = {**ENGINE_SETTINGS, **overrides}
        torch.set_num_threads(settings["num_threads"] or num_threads)
        return LLMEngine(tiny_model, EngineConfig(**settings))

    num_threads = torch.get_num_threads()
    yield make
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """The tiny model saved as a checkpoint, for engines built in a process of their own."""
    from engine.checkpoint import save_model

    path = tmp_path_factory.mktemp("tiny-checkpoint")
    save_model(tiny_model, path)
    return path


@pytest.fixture
def make_process(tiny_checkpoint):
    """ProcessEngine factory on the tiny model (the engine settings of `make_engine`)."""
    from engine.engine_config import EngineConfig
    from engine.engine_process import EngineLaunch, ProcessEngine

    engines = []

    def make(**overrides):
        config = EngineConfig(**{**ENGINE_SETTINGS, **overrides})
        engines.append(ProcessEngine(EngineLaunch(str(tiny_checkpoint), config)))
        return engines[-1]

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture
def make_async(make_engine):
    """AsyncEngine factory: the engine in a thread of this process."""
    from engine.async_engine import AsyncEngine

    engines = []

    def make(**overrides):
        engines.append(AsyncEngine(make_engine(**overrides)))
        return engines[-1]

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture(params=["thread", "process"])
def make_client(request):
    """Either engine client: the loop in a thread (AsyncEngine) or in a process of its own
    (ProcessEngine); what both promise is tested on both."""
    return request.getfixturevalue("make_async" if request.param == "thread" else "make_process")
