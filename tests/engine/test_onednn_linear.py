"""oneDNN-prepacked linears (engine/onednn_linear.py, cpu_kernels "onednn"): same model up to
fp32 rounding, batch invariant rows, and an engine that packs gives the tokens of one that does
not."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import malloc_stats
from engine.config import ModelConfig
from engine.cpu_linear import pack_linears, packed_copy
from engine.model import RetNet
from engine.onednn_linear import ROW_BLOCK, PackedLinear, can_pack, row_bucket
from engine.sampling import SamplingParams
from engine.sequence import Request
from tests.engine.conftest import TINY_ENGINE_MODEL

pytestmark = pytest.mark.skipif(not can_pack("cpu", torch.float32),
                                reason="oneDNN linear not available in this torch build")

LINEARS_PER_LAYER = 4  # qkvg o, gate_up down


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(length)]


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def test_can_pack():
    assert can_pack("cpu", torch.float32) and can_pack(torch.device("cpu"), torch.float32)
    assert not can_pack("meta", torch.float32)
    assert not can_pack("cuda", torch.float32)
    assert not can_pack("cpu", torch.float64)
    assert not can_pack("cpu", torch.float16)


@pytest.mark.parametrize("shape", [(5, 64), (3, 7, 64), (1, 1, 64), (64,), (0, 64)])
def test_packed_linear_matches_f_linear_for_any_leading_shape(shape):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 64), torch.randn(96), torch.randn(shape)
    out = PackedLinear(weight, bias)(x)
    assert out.shape == (*shape[:-1], 96) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("in_out", [(64, 64), (64, 128), (128, 64), (64, 300), (256, 2048)])
def test_rows_are_bitwise_independent_of_the_row_count(in_out):
    """A row's numbers are the same whatever the number of rows and its place among them."""
    torch.manual_seed(0)
    linear = PackedLinear(torch.randn(in_out[1], in_out[0]))
    x = torch.randn(80, in_out[0])
    full = linear(x)
    for m in range(1, 70):
        for offset in (0, 5):
            assert torch.equal(linear(x[offset : offset + m]), full[offset : offset + m]), m
    assert torch.equal(linear(x[7]), full[7])  # a lone row, 1-D
    assert torch.equal(linear(x[None, None, 7]), full[None, None, 7])


def test_pack_linears_counts_and_packs_the_tied_head():
    torch.manual_seed(0)
    for tied in (False, True):
        config = ModelConfig(**TINY_ENGINE_MODEL, tie_embeddings=tied)
        model = RetNet(config).eval().requires_grad_(False)
        assert pack_linears(model, "onednn") == config.num_layers * LINEARS_PER_LAYER + 1
        assert not any(isinstance(m, nn.Linear) for m in model.modules())
        assert isinstance(model.lm_head, PackedLinear)
        assert model.lm_head.out_features == config.vocab_size


def test_packed_copy_leaves_the_model_alone_and_shares_other_weights(tiny_model):
    packed, count = packed_copy(tiny_model, "onednn")
    assert count == tiny_model.config.num_layers * LINEARS_PER_LAYER + 1
    assert isinstance(tiny_model.layers[0].attn.qkvg_proj, nn.Linear)
    assert isinstance(tiny_model.lm_head, nn.Linear)
    assert packed.embed_tokens.weight is tiny_model.embed_tokens.weight
    assert packed.layers[1].ffn_norm.weight is tiny_model.layers[1].ffn_norm.weight


@pytest.mark.parametrize("tied", [False, True])
def test_packed_model_logits_match_prefill_and_decode_step(tiny_model, tied):
    model = tiny_model
    if tied:
        torch.manual_seed(1)
        model = RetNet(ModelConfig(**TINY_ENGINE_MODEL, tie_embeddings=True)).eval()
        model.requires_grad_(False)
    packed, _ = packed_copy(model, "onednn")
    ids = torch.tensor([prompt(0, 100), prompt(1, 100)])
    with torch.inference_mode():
        ref_logits, ref_state = model.prefill(ids)
        logits, state = packed.prefill(ids)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(state.kv, ref_state.kv, atol=1e-4, rtol=1e-4)
        next_ids = ref_logits[:, -1].argmax(-1)
        ref_step, _ = model.step(next_ids, ref_state)
        step, _ = packed.step(next_ids, ref_state)
        torch.testing.assert_close(step, ref_step, atol=1e-4, rtol=1e-4)


def test_engine_packs_a_copy_and_gives_the_tokens_of_an_unpacked_engine(make_engine, tiny_model):
    packed, plain = make_engine(cpu_kernels="onednn"), make_engine(cpu_kernels="torch")
    assert packed.packed_linears == tiny_model.config.num_layers * LINEARS_PER_LAYER + 1
    assert plain.packed_linears == 0 and plain.model is tiny_model
    assert isinstance(tiny_model.lm_head, nn.Linear)  # the caller's model is not changed
    requests = [Request(f"r{i}", prompt(i, length), SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True))
        for i, length in enumerate([1, 5, 64, 130])]
    a, b = packed.generate(requests), plain.generate(requests)
    for request in requests:
        assert tokens(a[request.request_id]) == tokens(b[request.request_id])


@pytest.mark.parametrize("kernels", ["onednn", "native"])
def test_packed_engine_is_batch_invariant_with_a_bucket_for_every_size(make_engine, kernels):
    """No padding (CPU default buckets 1, 2, 3, ...): a request's logits alone (batch of one)
    and among others (every batch size as they finish) are bitwise the same."""
    engine = make_engine(decode_buckets=None, cpu_kernels=kernels)
    assert engine.cpu_kernels == kernels and engine.runner.buckets[:3] == (1, 2, 3)
    logits_of = {}
    decode = engine.runner.decode

    def recording_decode(seqs):
        logits, slots, steps = decode(seqs)
        for seq, row in zip(seqs, logits, strict=True):
            logits_of.setdefault(seq.request_id, []).append(row.clone())
        return logits, slots, steps

    engine.runner.decode = recording_decode
    rng = random.Random(3)
    requests = [Request(f"r{i}", prompt(i, rng.choice([1, 3, 40, 70])), SamplingParams(
        temperature=0.0 if i % 2 else 0.8, seed=i, max_tokens=3 + 2 * i, ignore_eos=True))
        for i in range(9)]
    together = engine.generate(requests)
    batched = logits_of
    for request in requests:
        logits_of = {}
        alone = engine.generate([request])
        assert tokens(together[request.request_id]) == tokens(alone[request.request_id])
        assert all(torch.equal(a, b) for a, b in zip(
            batched[request.request_id], logits_of[request.request_id], strict=True))


def test_rows_past_a_block_match_each_row_alone():
    torch.manual_seed(0)
    linear = PackedLinear(torch.randn(96, 64))
    x = torch.randn(ROW_BLOCK * 2 + 37, 64)
    full = linear(x)
    assert full.shape == (x.shape[0], 96)
    for i in (0, ROW_BLOCK - 1, ROW_BLOCK, ROW_BLOCK + 5, x.shape[0] - 1):
        assert torch.equal(full[i], linear(x[i]))


def test_row_buckets_are_few_and_cover_every_count():
    buckets = {row_bucket(m) for m in range(1, ROW_BLOCK + 1)}
    assert len(buckets) <= 18 and max(buckets) == ROW_BLOCK
    for m in range(1, ROW_BLOCK + 1):
        assert m <= row_bucket(m) and (m <= 16 or row_bucket(m) - m < max(8, m / 4))


@pytest.mark.skipif(not malloc_stats(), reason="glibc's mallinfo2 is needed to read the heap")
def test_any_number_of_rows_costs_no_memory_once_the_buckets_are_seen():
    """oneDNN caches a JIT-built primitive (~0.5 MB) per shape: unbucketed, 600 row counts
    would keep ~300 MB."""
    torch.manual_seed(0)
    linear = PackedLinear(torch.randn(96, 64))
    x = torch.randn(1000, 64)
    with torch.inference_mode():
        for m in sorted({row_bucket(m) for m in range(1, ROW_BLOCK + 1)}):
            linear(x[:m])
        before = malloc_stats()["heap_in_use_bytes"]
        for m in range(1, 1000, 3):
            linear(x[:m])
        grown = malloc_stats()["heap_in_use_bytes"] - before
    assert grown < 4 << 20, grown
