"""StatePool: a fixed buffer of slots; decoding rows stay dense; states survive every move."""

import dataclasses
import random

import pytest
import torch

from engine.config import ModelConfig
from engine.state import RetentionState
from engine.state_pool import StatePool

CONFIG = ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=2, qk_dim=64,
                     v_dim=128, ffn_dim=128)


CONV_CONFIG = dataclasses.replace(CONFIG, short_conv=4)


def random_state(seed: int, num_tokens: int = 5, config: ModelConfig = CONFIG
                 ) -> RetentionState:
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(2, 1, 2, 32, 64, generator=g)
    conv = torch.randn(2, 1, 3, config.conv_channels, generator=g) if config.short_conv else None
    return RetentionState(kv, torch.tensor([num_tokens]), conv)


def test_free_list_allocate_and_free():
    pool = StatePool(CONFIG, num_slots=3)
    slots = [pool.allocate() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2] and not pool.can_allocate()
    pool.free(slots[1])
    assert pool.can_allocate() and pool.num_free == 1
    assert pool.allocate() == slots[1]


def test_new_slot_holds_the_empty_state():
    pool = StatePool(CONFIG, num_slots=2)
    slot = pool.allocate()
    pool.load(slot, random_state(0))
    pool.free(slot)
    slot = pool.allocate()
    empty = pool.export(slot)
    assert empty.kv.abs().sum() == 0 and empty.num_tokens.item() == 0


def test_load_export_round_trip_bytes_and_tensors():
    pool = StatePool(CONFIG, num_slots=2)
    state = random_state(1, num_tokens=77)
    a, b = pool.allocate(), pool.allocate()
    pool.load(a, state)
    pool.load(b, RetentionState.from_bytes(state.to_bytes(torch.bfloat16), CONFIG, 77,
                                           torch.bfloat16))
    out_a, out_b = pool.export(a), pool.export(b)
    assert torch.equal(out_a.kv, state.kv) and out_a.num_tokens.item() == 77
    assert torch.equal(out_b.kv, state.kv.bfloat16().float()) and out_b.num_tokens.item() == 77
    assert out_a.to_bytes() == state.to_bytes()
    with pytest.raises(ValueError):
        RetentionState.from_bytes(b"\0" * 10, CONFIG, 1)
    with pytest.raises(ValueError):
        pool.load(a, RetentionState.stack([state, state]))


def test_export_outlives_the_slot():
    pool = StatePool(CONFIG, num_slots=1)
    slot = pool.allocate()
    pool.load(slot, random_state(2))
    out = pool.export(slot)
    pool.free(slot)
    pool.allocate()
    assert torch.equal(out.kv, random_state(2).kv)


@pytest.mark.parametrize("padding,config", [(3, CONFIG), (0, CONFIG), (0, CONV_CONFIG)],
                         ids=["padding", "full-pool", "full-pool-conv"])
def test_decoding_slots_are_dense_rows_and_states_follow_their_slot(padding, config):
    """Random allocate / start decoding / free, often with every slot taken (with no padding
    rows a full pool has no free row at all)."""
    rng = random.Random(0)
    pool = StatePool(config, num_slots=12, num_padding_rows=padding)
    expected: dict[int, RetentionState] = {}
    data_ptr, nbytes = pool.kv.data_ptr(), pool.nbytes
    full = 0
    for i in range(600):
        op = rng.random()
        full += not pool.can_allocate()
        if op < 0.45 and pool.can_allocate():
            slot = pool.allocate()
            expected[slot] = random_state(i, num_tokens=i, config=config)
            pool.load(slot, expected[slot])
        elif op < 0.7 and expected:
            pool.start_decoding(rng.choice(list(expected)))
        elif expected:
            slot = rng.choice(list(expected))
            pool.free(slot)
            del expected[slot]
        n = pool.num_decoding
        assert [pool.row(s) for s in pool.decoding_slots] == list(range(n))
        live_rows = {pool.row(s) for s in expected}
        assert len(live_rows) == len(expected)
        assert not live_rows & set(range(n, n + padding))  # padding rows are always free
        for slot, state in expected.items():
            out = pool.export(slot)
            assert torch.equal(out.num_tokens, state.num_tokens)
            for got, want in zip(out.tensors, state.tensors, strict=True):
                assert torch.equal(got, want)
    assert full > 50  # the full-pool moves were exercised
    assert pool.kv.data_ptr() == data_ptr and pool.nbytes == nbytes  # never reallocated


def test_decode_batch_is_a_view_the_step_updates_in_place():
    pool = StatePool(CONFIG, num_slots=4, num_padding_rows=1)
    slots = [pool.allocate() for _ in range(2)]
    for s in slots:
        pool.load(s, random_state(s))
        pool.start_decoding(s)
    view = pool.decode_batch(3)  # 2 rows + 1 padding
    kv, positions = view.kv, view.num_tokens
    assert kv.shape[1] == 3 and kv.data_ptr() == pool.kv.data_ptr()
    kv.mul_(2)
    positions += 1
    assert torch.equal(pool.export(slots[0]).kv, random_state(slots[0]).kv * 2)
    assert pool.export(slots[1]).num_tokens.item() == 6


def test_nbytes_counts_the_whole_buffer():
    pool = StatePool(CONFIG, num_slots=5, num_padding_rows=2)
    row = StatePool.row_nbytes(CONFIG)
    assert row == CONFIG.state_numel * 4
    assert pool.nbytes == 7 * row + 7 * 8
