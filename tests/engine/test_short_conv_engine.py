"""The engine with a short-convolution model: the conv state lives in the pool next to the
retention state, survives export and bytes, and decoding matches the parallel form."""

import pytest
import torch

from engine.config import ModelConfig
from engine.engine_config import EngineConfig
from engine.errors import InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState
from tests.engine.conftest import TINY_ENGINE_MODEL
from tests.engine.test_scheduler import prompt, run_alone, tokens

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def conv_model():
    torch.manual_seed(0)
    model = RetNet(ModelConfig(**TINY_ENGINE_MODEL, short_conv=4))
    with torch.no_grad():  # taps far from the identity init, so the conv state matters
        for layer in model.layers:
            layer.attn.qkv_conv.weight.normal_(0, 0.5)
    return model.eval().requires_grad_(False)


@pytest.fixture
def engine(conv_model):
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LLMEngine(conv_model, EngineConfig(
        device="cpu", max_num_seqs=16, max_num_batched_tokens=208,
        decode_buckets=tuple(range(4, 65, 4)), num_threads=1))
    torch.set_num_threads(num_threads)


def greedy_reference(model: RetNet, ids: list[int], n: int) -> list[int]:
    """Greedy continuation through the parallel form over the whole text each time."""
    ids = list(ids)
    out = []
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model.forward_parallel(torch.tensor([ids]))[0, -1].argmax()))
            ids.append(out[-1])
    return out


def test_pool_holds_the_conv_state(engine, conv_model):
    c = conv_model.config
    assert engine.pool.conv.shape == (c.num_layers, engine.pool.num_rows, 3, c.conv_channels)
    assert engine.pool.nbytes == engine.pool.num_rows * (c.state_numel * 4 + 8)


def test_concurrent_greedy_decoding_matches_the_parallel_form(engine, conv_model):
    prompts = {f"r{i}": prompt(10 + i, length) for i, length in enumerate((3, 17, 70, 130))}
    requests = [Request(rid, p, SamplingParams(max_tokens=12, **GREEDY))
                for rid, p in prompts.items()]
    results = engine.generate(requests)
    for rid, p in prompts.items():
        assert tokens(results[rid]) == greedy_reference(conv_model, p, 12), rid


def test_continuing_from_an_exported_state_matches_an_uninterrupted_run(engine):
    p = prompt(3, 90)
    full = run_alone(engine, Request("full", p, SamplingParams(max_tokens=20, **GREEDY)))
    first = engine.generate([Request("first", p, SamplingParams(max_tokens=8, **GREEDY),
                                     return_state=True)])["first"]
    state = first[-1].state
    assert tokens(first) == full[:8] and state.conv is not None
    rest = SamplingParams(max_tokens=11, **GREEDY)
    assert run_alone(engine, Request("obj", [full[8]], rest, initial_state=state)) == full[9:]
    restored = RetentionState.from_bytes(state.to_bytes(), engine.model.config, len(p) + 8)
    from_bytes = Request("bytes", [full[8]], rest, initial_state=restored)
    assert run_alone(engine, from_bytes) == full[9:]


def test_final_state_matches_a_prefill_of_the_same_text(engine, conv_model):
    p = prompt(5, 40)
    out = engine.generate([Request("s", p, SamplingParams(max_tokens=6, **GREEDY),
                                   return_state=True, trailing_ids=(7,))])["s"]
    fed = p + tokens(out) + [7]
    with torch.inference_mode():
        _, reference = conv_model.prefill(torch.tensor([fed]))
    final = out[-1].state
    torch.testing.assert_close(final.conv, reference.conv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.kv, reference.kv, atol=1e-4, rtol=1e-4)


def test_a_state_without_the_conv_part_is_refused(engine, conv_model):
    plain = RetNet(ModelConfig(**TINY_ENGINE_MODEL))
    state = RetentionState.empty(plain.config, 1)
    with pytest.raises(InvalidRequestError, match="shapes"):
        engine.add_request(Request("x", [1, 2], SamplingParams(max_tokens=1),
                                   initial_state=state))
    with pytest.raises(InvalidRequestError, match="RetentionState"):
        engine.add_request(Request("y", [1, 2], SamplingParams(max_tokens=1),
                                   initial_state=RetentionState.empty(conv_model.config, 1)
                                   .to_bytes()))
