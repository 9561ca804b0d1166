"""The three retention forms are one function: parallel == chunkwise == recurrent."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.model import RetNet
from engine.state import RetentionState

VARIANTS = {
    "torchscale": dict(rotary="xpos", state_norm="sqrt_decay_sum", head_norm="rms",
                       ffn_activation="gelu", scale_embedding=True, embed_norm=True),
    "fla": dict(rotary="rope", state_norm="none", head_norm="rms", head_norm_affine=True,
                norm_eps=1e-5),
    "groupnorm": dict(head_norm="group", tie_embeddings=True),
    # short convolution over q/k/v: its state must carry across chunks, pieces and steps too
    "fla_conv": dict(rotary="rope", state_norm="none", head_norm_affine=True, short_conv=4),
    "conv_linear": dict(short_conv=3, short_conv_activation="none"),
}
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}


def make_model(variant: str, dtype: torch.dtype, chunk_size: int = 8, seed: int = 0) -> RetNet:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, qk_dim=32,
                         v_dim=48, ffn_dim=64, chunk_size=chunk_size, **VARIANTS[variant])
    model = RetNet(config)
    with torch.no_grad():  # larger than default init so the decays and norms actually matter
        for p in model.parameters():
            if p.dim() >= 2:  # matrices and conv kernels
                p.normal_(0, 0.3)
    return model.to(dtype).eval()


def recurrent_logits(model: RetNet, ids: torch.Tensor, state: RetentionState | None = None):
    state = state or model.empty_state(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 16])
def test_forms_agree_at_every_length(variant, dtype, chunk_size):
    model = make_model(variant, dtype, chunk_size)
    c = chunk_size
    lengths = sorted({1, max(c - 1, 1), c, c + 1, 3 * c + 2})
    with torch.no_grad():
        for length in lengths:
            ids = torch.randint(0, 101, (2, length))
            parallel = model.forward_parallel(ids)
            chunkwise, state = model.prefill(ids)
            recurrent, rec_state = recurrent_logits(model, ids)
            assert max_diff(parallel, chunkwise) < TOLERANCE[dtype], length
            assert max_diff(parallel, recurrent) < TOLERANCE[dtype], length
            assert max_diff(state.kv, rec_state.kv) < TOLERANCE[dtype] * 10, length
            if model.config.short_conv:
                assert max_diff(state.conv, rec_state.conv) < TOLERANCE[dtype], length
            assert state.num_tokens.tolist() == [length, length]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_resumes_from_a_state_saved_at_any_offset(variant, dtype):
    model = make_model(variant, dtype, chunk_size=4)
    ids = torch.randint(0, 101, (1, 19))
    with torch.no_grad():
        reference = model.forward_parallel(ids)
        for offset in range(1, 19):
            _, saved = model.prefill(ids[:, :offset])
            restored = RetentionState.from_bytes(saved.to_bytes(), model.config, offset,
                                                 dtype=saved.kv.dtype, out_dtype=saved.kv.dtype)
            resumed, _ = model.prefill(ids[:, offset:], restored)
            assert max_diff(resumed, reference[:, offset:]) < TOLERANCE[dtype], offset
            # a decode step after a resumed prefill is the same token as in one pass
            step_logits, _ = model.step(ids[:, offset], restored)
            assert max_diff(step_logits, reference[:, offset]) < TOLERANCE[dtype], offset


@pytest.mark.parametrize("variant", ["torchscale", "fla_conv"])
def test_batched_step_carries_one_position_per_row(variant):
    model = make_model(variant, torch.float64)
    prompts = [torch.randint(0, 101, (1, n)) for n in (1, 5, 12, 30)]
    with torch.no_grad():
        rows = [model.prefill(p)[1] for p in prompts]
        batch = RetentionState.stack(rows)
        assert batch.num_tokens.tolist() == [1, 5, 12, 30]
        next_ids = torch.tensor([7, 8, 9, 10])
        logits, stepped = model.step(next_ids, batch)
        for i, row in enumerate(rows):
            alone, alone_state = model.step(next_ids[i:i + 1], row)
            assert max_diff(logits[i:i + 1], alone) < 1e-12
            for got, want in zip(stepped.select([i]).tensors, alone_state.tensors, strict=True):
                assert max_diff(got, want) < 1e-12


@pytest.mark.parametrize("variant", ["fla", "fla_conv"])
def test_batched_prefill_rows_at_different_offsets(variant):
    model = make_model(variant, torch.float64, chunk_size=4)
    a, b = torch.randint(0, 101, (1, 9)), torch.randint(0, 101, (1, 3))
    tail = torch.randint(0, 101, (2, 6))
    with torch.no_grad():
        batch = RetentionState.stack([model.prefill(a)[1], model.prefill(b)[1]])
        together, _ = model.prefill(tail, batch)
        alone_a = model.forward_parallel(torch.cat([a, tail[:1]], 1))[:, 9:]
        alone_b = model.forward_parallel(torch.cat([b, tail[1:]], 1))[:, 3:]
    assert max_diff(together[:1], alone_a) < 1e-9
    assert max_diff(together[1:], alone_b) < 1e-9


@pytest.mark.parametrize("variant", ["torchscale", "conv_linear"])
def test_state_size_is_fixed_by_the_config_not_the_length(variant):
    model = make_model(variant, torch.float32)
    with torch.no_grad():
        short = model.prefill(torch.randint(0, 101, (1, 3)))[1]
        long = model.prefill(torch.randint(0, 101, (1, 300)))[1]
    assert len(short.to_bytes()) == len(long.to_bytes()) == model.config.state_numel * 4
    assert short.tensor_spec() == long.tensor_spec()


@pytest.mark.parametrize("variant", ["torchscale", "fla_conv"])
@pytest.mark.parametrize("store_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_state_bytes_round_trip(store_dtype, variant):
    model = make_model(variant, torch.float32)
    with torch.no_grad():
        _, state = model.prefill(torch.randint(0, 101, (1, 40)))
    data = state.to_bytes(store_dtype)
    back = RetentionState.from_bytes(data, model.config, 40, dtype=store_dtype)
    assert back.num_tokens.tolist() == [40]
    assert len(back.tensors) == len(state.tensors) == (2 if model.config.short_conv else 1)
    for got, want in zip(back.tensors, state.tensors, strict=True):
        if store_dtype == torch.float32:
            assert torch.equal(got, want)
        else:
            # relative error of one rounding: 2**-8 for bf16, 2**-11 for fp16
            assert max_diff(got, want) <= 2**-8 * want.abs().max().item()
    with pytest.raises(ValueError):
        RetentionState.from_bytes(data[:-2], model.config, 40, dtype=store_dtype)


def test_records_keep_the_conv_state_as_channels_by_taps():
    """States already stored hold each layer's conv state as [C, K-1]: the bytes and the
    header's shapes keep that layout whatever the layout in memory."""
    model = make_model("fla_conv", torch.float32)
    c = model.config
    with torch.no_grad():
        _, state = model.prefill(torch.randint(0, 101, (1, 40)))
    conv = torch.frombuffer(bytearray(state.to_bytes()), dtype=torch.float32)[c.kv_numel :]
    assert torch.equal(conv, state.conv[:, 0].transpose(1, 2).reshape(-1))
    assert state.tensor_spec()[-1] == (f"layers.{c.num_layers - 1}.conv",
                                       (c.conv_channels, c.short_conv - 1))


@pytest.mark.parametrize("variant", ["fla", "fla_conv"])
def test_split_and_stack_are_inverse(variant):
    model = make_model(variant, torch.float32)
    with torch.no_grad():
        _, state = model.prefill(torch.randint(0, 101, (3, 7)))
    rows = state.split()
    assert [r.batch_size for r in rows] == [1, 1, 1]
    again = RetentionState.stack(rows)
    assert torch.equal(again.num_tokens, state.num_tokens)
    for got, want in zip(again.tensors, state.tensors, strict=True):
        assert torch.equal(got, want)


def test_decays_stay_distinct_from_one_in_low_precision():
    # in bf16, 1 - 2**-10 rounds to 1.0; our decays are computed in fp32 whatever the weights
    model = make_model("torchscale", torch.float32)
    bf16 = make_model("torchscale", torch.float32).to(torch.bfloat16)
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    ids = torch.randint(0, 101, (1, 40))
    with torch.no_grad():
        ref = model.forward_parallel(ids)
        low, state = bf16.prefill(ids)
    assert state.kv.dtype == torch.float32
    assert torch.isfinite(low).all()
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
