"""Scheduler + LLMEngine: admission, chunked prefill under a token budget, batch invariance,
continuing from exported states, final-state semantics."""

import random
import time

import pytest
import torch

from engine.errors import EngineOverloaded
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(length)]


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def run_alone(engine, request: Request) -> list[int]:
    return tokens(engine.generate([request])[request.request_id])


def varied_requests(n: int = 16) -> list[Request]:
    rng = random.Random(1)
    requests = []
    for i in range(n):
        if i % 2:
            params = SamplingParams(temperature=0.0, max_tokens=rng.randint(5, 40),
                                    ignore_eos=True)
        else:
            params = SamplingParams(temperature=rng.choice([0.5, 0.8, 1.2]), seed=1000 + i,
                                    top_p=rng.choice([1.0, 0.9]), top_k=rng.choice([None, 40]),
                                    min_p=rng.choice([0.0, 0.02]),
                                    presence_penalty=rng.choice([0.0, 0.5]),
                                    frequency_penalty=rng.choice([0.0, 0.3]),
                                    max_tokens=rng.randint(5, 40))
        requests.append(Request(f"r{i}", prompt(i, rng.choice([1, 2, 7, 64, 65, 129, 300, 450])),
                                params))
    return requests


def test_batch_invariance_greedy_and_seeded(make_engine):
    """16 concurrent requests (different lengths, budgets, parameters) produce exactly the tokens
    each produces alone on the same engine."""
    engine = make_engine()
    requests = varied_requests()
    batch_sizes = []
    decode = engine.runner.decode
    engine.runner.decode = lambda seqs: batch_sizes.append(len(seqs)) or decode(seqs)
    together = engine.generate(requests)
    engine.runner.decode = decode
    assert max(batch_sizes) >= 12
    for request in requests:
        assert tokens(together[request.request_id]) == run_alone(engine, request), \
            request.request_id
        assert len(tokens(together[request.request_id])) == request.params.max_tokens


def test_admission_respects_max_num_seqs_and_slots(make_engine):
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=128)
    for i in range(10):
        engine.add_request(Request(f"r{i}", prompt(i, 3), SamplingParams(max_tokens=3)))
    engine.step()
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_slots_used) == (4, 6, 4)
    while engine.has_unfinished_requests():
        engine.step()
        assert engine.stats().num_slots_used <= 4
    assert engine.stats().num_slots_used == 0


def test_full_waiting_queue_raises_overloaded(make_engine):
    engine = make_engine(max_num_seqs=2, max_waiting=3, max_num_batched_tokens=128)
    for i in range(3):
        engine.add_request(Request(f"r{i}", [1, 2], SamplingParams(max_tokens=2)))
    with pytest.raises(EngineOverloaded):
        engine.add_request(Request("one-too-many", [1, 2], SamplingParams(max_tokens=2)))
    # the rest of a turn already under way (its refeed, a fork) is never refused half done
    engine.add_request(Request("refeed", [1, 2], prefill_only=True, admitted=True))
    assert engine.scheduler.num_waiting == 4


def test_every_step_respects_the_token_budget_and_prompts_split_into_chunks(make_engine):
    engine = make_engine()  # budget 208, 16 seqs: pieces of 192 = 3 chunks of 64
    chunk, budget = engine.model.config.chunk_size, engine.config.max_num_batched_tokens
    assert engine.scheduler.piece_size == 192
    for i, length in enumerate([1000, 3, 500, 70, 129]):
        engine.add_request(Request(f"r{i}", prompt(i, length), SamplingParams(max_tokens=4)))
    pieces: dict[str, list[int]] = {}
    schedule = engine.scheduler.schedule

    def spy():
        batch = schedule()
        assert batch.num_tokens <= budget
        for seq, n in batch.prefill:
            pieces.setdefault(seq.request_id, []).append(n)
        return batch

    engine.scheduler.schedule = spy
    while engine.has_unfinished_requests():
        engine.step()
    assert pieces["r0"] == [192] * 5 + [39]  # 999: the last prompt token goes via decode
    assert all(n % chunk == 0 for p in pieces.values() for n in p[:-1])
    assert pieces["r1"] == [2] and pieces["r2"] == [192, 192, 115] and pieces["r4"] == [128]
    assert sum(pieces["r3"]) == 69


def test_long_prompt_does_not_stall_running_sequences(make_engine, tiny_model):
    """While a 16k-token prompt is prefilled piece by piece, running sequences get a token in
    every step, and no gap between their tokens exceeds about one budget-sized step."""
    engine = make_engine(max_num_seqs=8, max_num_batched_tokens=520)  # pieces of 512
    for i in range(4):
        engine.add_request(Request(f"short{i}", prompt(i, 5),
                                   SamplingParams(max_tokens=1000, ignore_eos=True)))
    for _ in range(3):
        engine.step()
    engine.add_request(Request("long", prompt(99, 16384), SamplingParams(max_tokens=1)))
    last_seen = {f"short{i}": time.perf_counter() for i in range(4)}
    gaps, num_prefill_steps = [], 0
    while "long" in engine._seqs:
        outputs = engine.step()
        num_prefill_steps += 1
        now = time.perf_counter()
        got = {o.request_id for o in outputs}
        assert set(last_seen) <= got  # every running sequence got its token this step
        for request_id in last_seen:
            gaps.append(now - last_seen[request_id])
            last_seen[request_id] = now
    assert num_prefill_steps >= 16384 // 512
    # one budget's time: a 512-token chunkwise piece plus a decode step of the running rows
    piece = torch.tensor([prompt(5, 512)])
    with torch.inference_mode():
        reference = []
        for _ in range(5):
            start = time.perf_counter()
            tiny_model.prefill(piece, tiny_model.empty_state(1))
            tiny_model.step(piece[:, 0].repeat(4), tiny_model.empty_state(4))
            reference.append(time.perf_counter() - start)
    # slack for a shared machine; prefilling the whole prompt in one step would take ~32x
    budget_time = sorted(reference)[2]
    assert max(gaps) < 3 * budget_time + 0.1, (max(gaps), budget_time)


def test_continuing_from_an_exported_state_matches_an_uninterrupted_run(make_engine):
    engine = make_engine()
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    p = prompt(3, 140)
    full = run_alone(engine, Request("full", p, params))
    first = engine.generate([Request("first", p, SamplingParams(
        temperature=0.0, max_tokens=10, ignore_eos=True), return_state=True)])["first"]
    state = first[-1].state
    assert tokens(first) == full[:10]
    assert state.num_tokens.item() == len(p) + 10 and state.kv.device.type == "cpu"
    rest = SamplingParams(temperature=0.0, max_tokens=13, ignore_eos=True)
    resumed = run_alone(engine, Request("resumed", [full[10]], rest, initial_state=state))
    assert resumed == full[11:]
    restored = RetentionState.from_bytes(state.to_bytes(), engine.model.config, len(p) + 10)
    from_bytes = run_alone(engine, Request("bytes", [full[10]], rest, initial_state=restored))
    assert from_bytes == full[11:]


def test_final_state_is_prompt_reply_without_stop_token_and_trailing(make_engine, tiny_model):
    engine = make_engine()
    p = prompt(4, 70)
    greedy = run_alone(engine, Request("g", p, SamplingParams(temperature=0.0, max_tokens=12,
                                                              ignore_eos=True)))
    stop = next(t for i, t in enumerate(greedy) if i >= 3 and t not in greedy[:i])
    cut = greedy.index(stop)
    trailing = (7, 8)
    outputs = engine.generate([Request("s", p, SamplingParams(
        temperature=0.0, max_tokens=12, stop_token_ids=(stop,)), return_state=True,
        trailing_ids=trailing)])["s"]
    final = outputs[-1]
    assert tokens(outputs) == greedy[: cut + 1] and final.finish_reason == "stop"
    assert final.num_generated_tokens == cut + 1 and final.num_prompt_tokens == 70
    fed = p + greedy[:cut] + list(trailing)
    assert final.state.num_tokens.item() == len(fed)
    with torch.inference_mode():
        _, reference = tiny_model.prefill(torch.tensor([fed]))
    torch.testing.assert_close(final.state.kv, reference.kv, atol=1e-4, rtol=1e-4)
    assert final.timings.first_token <= final.timings.finished


def test_abort_frees_the_slot_at_once(make_engine):
    engine = make_engine()
    engine.add_request(Request("a", prompt(1, 500), SamplingParams(max_tokens=50)))
    engine.add_request(Request("b", prompt(2, 5), SamplingParams(max_tokens=50)))
    engine.step()
    assert engine.stats().num_slots_used == 2
    output = engine.abort_request("a")
    assert output.finish_reason == "abort" and engine.stats().num_slots_used == 1
    assert engine.abort_request("a") is None
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats().num_slots_used == 0


def test_the_prompt_state_comes_with_the_first_output_only(make_engine, tiny_model):
    engine = make_engine()
    p = prompt(5, 90)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    outputs = engine.generate([Request("p", p, params, return_prompt_state=True),
                               Request("q", prompt(6, 30), params)])
    first, *rest = outputs["p"]
    assert all(o.prompt_state is None for o in [*rest, *outputs["q"]])
    with torch.inference_mode():
        _, reference = tiny_model.prefill(torch.tensor([p]))
    assert first.prompt_state.num_tokens.item() == len(p)
    torch.testing.assert_close(first.prompt_state.kv, reference.kv, atol=1e-4, rtol=1e-4)
    merged = first.merged(rest[0])  # a consumer that fell behind keeps it too
    assert merged.prompt_state is first.prompt_state


def test_initial_state_row_is_loaded_not_shared(make_engine):
    engine = make_engine()
    state = RetentionState.empty(engine.model.config, 1)
    out = engine.generate([Request("x", [1, 2, 3], SamplingParams(max_tokens=2),
                                   initial_state=state, return_state=True)])["x"][-1]
    assert state.kv.abs().sum() == 0 and out.state.kv.abs().sum() > 0


def test_a_burst_of_short_prompts_is_spread_over_steps(make_engine):
    """Each prefill piece costs at least one chunk of the budget (a model call is not free):
    16 new 10-token prompts under a 208-token budget get 3 pieces per step."""
    engine = make_engine()
    for i in range(16):
        engine.add_request(Request(f"r{i}", prompt(i, 10), SamplingParams(max_tokens=2)))
    schedule, pieces_per_step = engine.scheduler.schedule, []

    def spy():
        batch = schedule()
        pieces_per_step.append(len(batch.prefill))
        return batch

    engine.scheduler.schedule = spy
    while engine.has_unfinished_requests():
        engine.step()
    assert max(pieces_per_step) == 3 and sum(pieces_per_step) == 16


def test_logprobs_reach_the_output(make_engine):
    engine = make_engine()
    outputs = engine.generate([Request("lp", prompt(1, 9), SamplingParams(
        temperature=0.0, max_tokens=3, logprobs=2))])["lp"]
    for output in outputs:
        (lp,) = output.logprobs
        assert lp.token_id == output.token_ids[0] and len(lp.top) == 2
        assert lp.top[0][0] == lp.token_id and lp.logprob <= 0.0


@pytest.mark.parametrize("bad", [
    dict(max_num_seqs=0), dict(max_num_batched_tokens=16, max_num_seqs=16), dict(dtype="int8"),
    dict(decode_buckets=(8, 4)), dict(decode_buckets=(4, 8), max_num_seqs=16),
    dict(gpu_memory_utilization=0.0), dict(max_slots=0),
])
def test_engine_config_refuses_unsafe_values(bad):
    from engine.engine_config import EngineConfig

    with pytest.raises(ValueError):
        EngineConfig(**bad)


def test_default_buckets():
    from engine.engine_config import EngineConfig

    assert EngineConfig(device="cpu", max_num_seqs=5).resolved_buckets() == (1, 2, 3, 4, 5)
    cuda = EngineConfig(device="cuda", max_num_seqs=30).resolved_buckets()
    assert cuda == (1, 2, 4, 8, 16, 24, 32)
    assert EngineConfig(device="cuda").torch_dtype == torch.bfloat16
    assert EngineConfig(device="cpu").torch_dtype == torch.float32


def test_a_prefill_only_request_returns_the_prompt_state_for_forks(make_engine, tiny_model):
    """`n` choices prefill once: a prefill-only request feeds its whole prompt chunkwise and
    returns that state; each fork continues from a copy with the last token and gives exactly
    the tokens of a request that fed the whole prompt itself."""
    engine = make_engine()
    p = prompt(6, 150)
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=9, ignore_eos=True)
    whole = run_alone(engine, Request("whole", p, params))
    outputs = engine.generate([Request("pre", p[:-1], prefill_only=True)])["pre"]
    assert len(outputs) == 1 and outputs[0].token_ids == [] and outputs[0].finished
    state = outputs[0].state
    assert state.num_tokens.item() == len(p) - 1 and engine.stats().num_slots_used == 0
    with torch.inference_mode():
        _, reference = tiny_model.prefill(torch.tensor([p[:-1]]))
    torch.testing.assert_close(state.kv, reference.kv, atol=1e-5, rtol=1e-5)
    forks = engine.generate([Request(f"f{i}", p[-1:], params, initial_state=state)
                             for i in range(3)])
    assert all(tokens(forks[f"f{i}"]) == whole for i in range(3))
    assert forks["f0"][-1].num_cached_tokens == len(p) - 1
