"""retserve's CPU kernels (engine/native_kernels.py, cpu_kernels "native"): built and cached
per machine, the linear equal to F.linear up to fp32 rounding and bitwise batch invariant, the
native decode step equal to torch's for every model variant, and an engine without a compiler
falling back to oneDNN."""

import random

import pytest
import torch
import torch.nn.functional as F

from engine import native_kernels
from engine.config import ModelConfig
from engine.cpu_linear import packed_copy, resolve_kernels
from engine.model import RetNet
from engine.native_decode import NativeDecoder
from engine.native_linear import NativeLinear
from engine.sampling import SamplingParams
from engine.sequence import Request
from tests.engine.conftest import TINY_ENGINE_MODEL

KERNELS = native_kernels.load()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no C compiler on this machine")

# every knob the C layer branches on, each in at least one variant
VARIANTS = {
    "torchscale": dict(),
    "fla": dict(rotary="rope", state_norm="none", head_norm_affine=True, short_conv=4),
    "conv_no_activation": dict(short_conv=3, short_conv_activation="none"),
    "group_norm_gelu": dict(head_norm="group", ffn_activation="gelu", head_norm_eps=1e-5),
    "tied_embed_norm": dict(tie_embeddings=True, embed_norm=True, scale_embedding=True),
    "odd_dims": dict(hidden_size=40, num_heads=2, qk_dim=36, v_dim=40, ffn_dim=72,
                     short_conv=2, ffn_activation="gelu"),
}


def random_model(seed: int = 0, **overrides) -> RetNet:
    torch.manual_seed(seed)
    model = RetNet(ModelConfig(**{**TINY_ENGINE_MODEL, **overrides})).eval()
    for p in model.parameters():  # norms and convolutions away from their identity start
        p.data.add_(0.1 * torch.randn_like(p))
    return model.requires_grad_(False)


def test_the_library_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native_kernels.load.cache_clear()
    cache = tmp_path / "retserve" / "kernels"
    try:
        kernels = native_kernels.load()
        assert kernels is not None and kernels.path.parent == cache
        built = kernels.path.stat().st_mtime_ns
        native_kernels.load.cache_clear()
        assert native_kernels.load().path == kernels.path
        assert kernels.path.stat().st_mtime_ns == built  # reused, not rebuilt
        assert [p.name for p in cache.iterdir()] == [kernels.path.name]  # no temporaries
    finally:
        native_kernels.load.cache_clear()


def test_without_a_compiler_the_engine_falls_back_to_onednn(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native_kernels.load.cache_clear()
    try:
        assert native_kernels.load() is None
        assert "could not be built" in caplog.text
        assert resolve_kernels("native", "cpu", torch.float32) == "onednn"
    finally:
        monkeypatch.undo()
        native_kernels.load.cache_clear()
    assert resolve_kernels("native", "cpu", torch.float32) == "native"
    assert resolve_kernels("native", "cpu", torch.float64) == "torch"
    assert resolve_kernels("native", "meta", torch.float32) == "torch"
    with pytest.raises(ValueError, match="cpu kernels"):
        resolve_kernels("fast", "cpu", torch.float32)


@pytest.mark.parametrize("in_out", [(64, 64), (64, 300), (37, 5), (256, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_f_linear(in_out, dtype):
    torch.manual_seed(0)
    weight, bias = torch.randn(in_out[1], in_out[0]).to(dtype), torch.randn(in_out[1])
    linear = NativeLinear(weight, KERNELS, bias)
    for shape in [(5, in_out[0]), (3, 7, in_out[0]), (in_out[0],), (0, in_out[0])]:
        x = torch.randn(shape)
        out = linear(x)
        assert out.shape == (*shape[:-1], in_out[1]) and out.dtype == torch.float32
        torch.testing.assert_close(out, F.linear(x, weight.float(), bias), atol=1e-4,
                                   rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_out", [(64, 64), (128, 300), (256, 1536)])
def test_linear_rows_are_bitwise_independent_of_the_row_count(in_out, threads):
    """Every row count, 1 included (oneDNN's needs 2), at any offset."""
    torch.manual_seed(0)
    linear = NativeLinear(torch.randn(in_out[1], in_out[0]), KERNELS)
    x = torch.randn(80, in_out[0])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = linear(x)
        for m in range(1, 70):
            for offset in (0, 5):
                assert torch.equal(linear(x[offset : offset + m]), full[offset : offset + m]), m
    finally:
        torch.set_num_threads(before)


def _decode(model, ids_per_step, state):
    logits = []
    with torch.inference_mode():
        for ids in ids_per_step:
            logits.append(model.decode_step(ids, state.kv, state.num_tokens, state.conv))
    return torch.stack(logits), state


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_decode_step_matches_torch_for_every_variant(variant):
    """From a prefilled state, 12 steps: logits and the states (retention and convolution)."""
    model = random_model(**VARIANTS[variant])
    native, count = packed_copy(model, "native")
    assert isinstance(native.decode_step, NativeDecoder) and count > 0
    batch = 3
    prompt = torch.randint(0, model.config.vocab_size, (batch, 9))
    steps = [torch.randint(0, model.config.vocab_size, (batch,)) for _ in range(12)]
    with torch.inference_mode():
        _, state = model.prefill(prompt)
    ref_logits, ref_state = _decode(model, steps, state.clone())
    logits, new_state = _decode(native, steps, state.clone())
    torch.testing.assert_close(logits, ref_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(new_state.kv, ref_state.kv, atol=1e-5, rtol=1e-4)
    if model.config.short_conv:
        torch.testing.assert_close(new_state.conv, ref_state.conv, atol=1e-5, rtol=1e-4)
    assert torch.equal(new_state.num_tokens, ref_state.num_tokens)


def test_native_decode_rows_are_bitwise_independent_of_the_batch():
    model = random_model(**VARIANTS["fla"])
    native, _ = packed_copy(model, "native")
    ids = torch.randint(0, model.config.vocab_size, (9,))
    with torch.inference_mode():
        _, state = model.prefill(torch.randint(0, model.config.vocab_size, (9, 5)))
        together = native.decode_step(ids, *_views(state.clone()))
        for row in range(9):
            alone = state.clone()
            alone = type(state)(alone.kv[:, row : row + 1].contiguous(),
                                alone.num_tokens[row : row + 1].clone(),
                                alone.conv[:, row : row + 1].contiguous())
            assert torch.equal(native.decode_step(ids[row : row + 1], *_views(alone))[0],
                               together[row])


def _views(state):
    return state.kv, state.num_tokens, state.conv


def test_native_decode_falls_back_for_states_it_cannot_take_and_checks_as_before():
    model = random_model(**VARIANTS["fla"])
    native, _ = packed_copy(model, "native")
    with torch.inference_mode():
        _, state = model.prefill(torch.randint(0, 300, (4, 6)))
        ids = torch.randint(0, 300, (2,))
        ref = model.decode_step(ids, *_views(_rows(state.clone())))
        out = native.decode_step(ids, *_views(_rows(state.clone())))  # strided rows
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="conv state"):
            native.decode_step(ids, state.kv[:, :2], state.num_tokens[:2], None)


def _rows(state):
    """Rows 0 and 2: views whose layers are not contiguous."""
    return type(state)(state.kv[:, ::2], state.num_tokens[::2].clone(), state.conv[:, ::2])


def test_engine_runs_native_by_default_and_gives_the_tokens_of_torch_kernels(make_engine):
    native, plain = make_engine(), make_engine(cpu_kernels="torch")
    assert native.cpu_kernels == "native" and plain.cpu_kernels == "torch"
    assert isinstance(native.model.decode_step, NativeDecoder)
    rng = random.Random(0)
    requests = [Request(f"r{i}", [rng.randrange(300) for _ in range(length)], SamplingParams(
        temperature=0.0, max_tokens=10, ignore_eos=True))
        for i, length in enumerate([1, 5, 64, 130])]
    a, b = native.generate(requests), plain.generate(requests)
    for request in requests:
        assert [t for o in a[request.request_id] for t in o.token_ids] == \
            [t for o in b[request.request_id] for t in o.token_ids]
