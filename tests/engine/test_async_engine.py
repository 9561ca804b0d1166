"""The engine clients (`make_client`: AsyncEngine's thread and ProcessEngine's process, both):
streaming, batch invariance, aborts and disconnects that leave nothing behind, follow-up turns
from a returned state, refused input; and what only the thread version can show from inside."""

import asyncio
import gc
import random
from contextlib import aclosing
from pathlib import Path

import pytest
import torch

from engine.async_engine import AsyncEngine
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState
from tests.engine.streams import collect, prompt, wait_until


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_streams_tokens_then_a_final_output_with_usage(make_client):
    engine = make_client()
    outputs = await collect(engine, Request("a", prompt(0, 30), SamplingParams(
        temperature=0.0, max_tokens=6, ignore_eos=True)))
    # one token per step; a consumer that falls behind may take several at once
    assert sum(len(o.token_ids) for o in outputs) == 6 and all(o.token_ids for o in outputs)
    assert [o.finish_reason for o in outputs] == [None] * (len(outputs) - 1) + ["length"]
    final = outputs[-1]
    assert (final.num_prompt_tokens, final.num_generated_tokens, final.num_cached_tokens) == \
        (30, 6, 0)
    assert final.text == "" and final.state is None and final.timings.finished is not None
    assert engine.num_streams == 0 and engine.stats().num_slots_used == 0


async def test_a_consumer_that_falls_behind_gets_what_piled_up_as_one_output(make_client):
    engine = make_client()
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=24, ignore_eos=True,
                            logprobs=2)
    prompt_ids = prompt(1, 20)
    fast = await collect(engine, Request("fast", prompt_ids, params))
    slow = []
    async for output in engine.generate(Request("slow", prompt_ids, params)):
        slow.append(output)
        await asyncio.sleep(0.05)  # several engine steps
    # fast: one output per step while it keeps up (a loaded machine may still merge a few)
    assert len(slow) < min(len(fast), 24) and sum(len(o.token_ids) for o in fast) == 24
    for field in ("token_ids", "text", "logprobs"):
        assert [x for o in slow for x in getattr(o, field)] == \
            [x for o in fast for x in getattr(o, field)], field
    assert slow[-1].finish_reason == "length" and slow[-1].num_generated_tokens == 24
    assert all(o.finish_reason is None for o in slow[:-1])


async def test_a_stream_interval_joins_tokens_after_the_first(make_async):
    every, joined = make_async(), make_async(stream_interval=4)
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=23, ignore_eos=True,
                            logprobs=1)
    ids = prompt(2, 30)
    one = await collect(every, Request("a", ids, params))
    four = await collect(joined, Request("a", ids, params))
    # the first token is never held back (a busy consumer may join the next four to it)
    assert len(four[0].token_ids) % 4 == 1
    assert all(len(o.token_ids) >= 4 for o in four[1:-1]) and len(four) <= 1 + 22 // 4 + 1
    for field in ("token_ids", "text", "logprobs"):
        assert [x for o in four for x in getattr(o, field)] == \
            [x for o in one for x in getattr(o, field)], field
    # a stream closed while tokens are held back leaves nothing behind
    async with aclosing(joined.generate(Request("b", ids, SamplingParams(
            max_tokens=10_000, ignore_eos=True)))) as stream:
        async for output in stream:
            if output.num_generated_tokens >= 6:
                break
    await wait_until(lambda: joined.stats().num_slots_used == 0 and not joined.core.num_held)
    assert joined.num_streams == 0


async def test_concurrent_requests_match_one_at_a_time(make_client):
    engine = make_client()
    rng = random.Random(5)
    requests = [Request(f"r{i}", prompt(i, rng.randint(1, 200)), SamplingParams(
        temperature=0.0 if i % 2 else 0.9, seed=i, top_k=50, max_tokens=rng.randint(3, 25),
        ignore_eos=True)) for i in range(16)]
    together = await asyncio.gather(*(collect(engine, r) for r in requests))
    for request, outputs in zip(requests, together, strict=True):
        alone = await collect(engine, request)
        assert [t for o in outputs for t in o.token_ids] == [t for o in alone for t in o.token_ids]


async def test_follow_up_turn_resumes_from_the_returned_state(make_client, tiny_model):
    engine = make_client()
    turn1 = prompt(1, 40)
    first = await collect(engine, Request("t1", turn1, SamplingParams(
        temperature=0.0, max_tokens=5, ignore_eos=True), return_state=True, trailing_ids=(9,)))
    reply = [t for o in first for t in o.token_ids]
    state = first[-1].state
    assert state.num_tokens.item() == 40 + 5 + 1
    turn2 = prompt(2, 12)
    second = await collect(engine, Request("t2", turn2, SamplingParams(
        temperature=0.0, max_tokens=3, ignore_eos=True), initial_state=state))
    assert second[-1].num_cached_tokens == 46 and second[-1].num_prompt_tokens == 12
    # the same conversation fed in one go gives the same next tokens (up to chunkwise vs
    # recurrent rounding, which these logits do not come near)
    with torch.inference_mode():
        logits, _ = tiny_model.prefill(torch.tensor([turn1 + reply + [9] + turn2]))
    assert second[0].token_ids[0] == logits[0, -1].argmax().item()


async def test_closing_the_stream_aborts_and_frees_the_slot_within_a_step(make_async):
    engine = make_async()
    params = SamplingParams(max_tokens=10_000, ignore_eos=True)
    async with aclosing(engine.generate(Request("gone", prompt(3, 20), params))) as stream:
        async for output in stream:
            if output.num_generated_tokens == 3:
                break
        closed_at = engine.stats().num_steps
    await wait_until(lambda: engine.stats().num_slots_used == 0)
    assert engine.stats().num_steps <= closed_at + 2  # at most the step in flight

    task = asyncio.create_task(collect(engine, Request("cancelled", prompt(4, 20), params)))
    await wait_until(lambda: engine.stats().num_slots_used == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled_at = engine.stats().num_steps
    await wait_until(lambda: engine.stats().num_slots_used == 0)
    assert engine.stats().num_steps <= cancelled_at + 2
    assert engine.num_streams == 0 and not engine.engine.has_unfinished_requests()


async def test_abort_ends_the_stream_with_abort(make_client):
    engine = make_client()
    stream = engine.generate(Request("x", prompt(5, 10), SamplingParams(max_tokens=10_000)))
    first = await anext(stream)
    engine.abort("x")
    rest = [o async for o in stream]
    assert first.finish_reason is None and rest[-1].finish_reason == "abort"
    assert engine.stats().num_slots_used == 0


async def test_a_thousand_requests_a_third_aborted_leave_nothing_behind(make_async):
    engine = make_async(max_num_seqs=32, max_num_batched_tokens=288)
    rng = random.Random(7)
    pool = engine.engine.pool
    pool_bytes, kv_ptr = pool.nbytes, pool.kv.data_ptr()

    async def client(i: int) -> str:
        request = Request(f"c{i}", prompt(i, rng.randint(1, 40)), SamplingParams(
            temperature=rng.choice([0.0, 1.0]), max_tokens=rng.randint(1, 24), ignore_eos=True))
        fate, after = rng.random(), rng.randint(0, 6)
        async with aclosing(engine.generate(request)) as stream:
            async for output in stream:
                if fate < 1 / 6 and output.num_generated_tokens >= after:
                    return "disconnected"  # the stream is closed: the request is aborted
                if fate < 1 / 3 and output.num_generated_tokens >= after:
                    engine.abort(request.request_id)
                if output.finished:
                    return output.finish_reason
        return "ended"

    async def run(n: int, offset: int) -> list[str]:
        tasks = [asyncio.create_task(client(offset + i)) for i in range(n)]
        cancel = rng.sample(tasks, n // 20)  # some consumers vanish mid-await
        await asyncio.sleep(0.05)
        for task in cancel:
            task.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    await run(150, 0)  # warm-up: allocator caches, lazily created objects
    await wait_until(lambda: engine.stats().num_slots_used == 0)
    gc.collect()
    rss, num_objects = rss_bytes(), len(gc.get_objects())

    results = await run(1000, 10_000)
    await wait_until(lambda: not engine.engine.has_unfinished_requests())
    await asyncio.sleep(0.05)
    gc.collect()
    reasons = [r if isinstance(r, str) else type(r).__name__ for r in results]
    assert reasons.count("abort") + reasons.count("disconnected") + \
        reasons.count("CancelledError") > 250
    assert reasons.count("length") > 500
    stats = engine.stats()
    assert (stats.num_slots_used, stats.num_running, stats.num_waiting) == (0, 0, 0)
    assert pool.num_free == pool.num_slots and pool.nbytes == pool_bytes
    assert pool.kv.data_ptr() == kv_ptr
    assert engine.num_streams == 0 and not engine.engine.has_unfinished_requests()
    assert not engine.engine.scheduler._by_slot and engine.core.num_queued == 0
    assert len(gc.get_objects()) - num_objects < 2000
    assert rss_bytes() - rss < 32 * 2**20


@pytest.mark.parametrize("bad", [
    dict(prompt_ids=[]),
    dict(prompt_ids=[1, 300]),
    dict(prompt_ids=[-1]),
    dict(prompt_ids=[1.5]),
    dict(trailing_ids=(400,)),
    dict(params=SamplingParams(stop_token_ids=(300,))),
    dict(params=SamplingParams(logit_bias={999: 1.0})),
    dict(initial_state=RetentionState(torch.zeros(2, 1, 2, 32, 32), torch.zeros(1, dtype=int))),
    dict(initial_state=b"\0" * 12),
    dict(initial_state="not a state"),
])
async def test_bad_input_is_refused_with_a_clear_error(make_async, bad):
    engine = make_async()
    fields = dict(request_id="bad", prompt_ids=[1, 2], params=SamplingParams())
    fields.update(bad)
    with pytest.raises(InvalidRequestError):
        engine.generate(Request(**fields))
    with pytest.raises(InvalidRequestError):
        engine.engine.add_request(Request(**fields))
    assert issubclass(InvalidRequestError, ValueError)


async def test_bad_sampling_values_and_duplicate_ids_are_refused(make_client):
    engine = make_client()
    with pytest.raises(InvalidRequestError):
        SamplingParams(max_tokens=0)
    with pytest.raises(InvalidRequestError):
        SamplingParams(top_p=2.0)
    stream = engine.generate(Request("dup", [1], SamplingParams(max_tokens=10_000)))
    await anext(stream)
    with pytest.raises(InvalidRequestError):
        engine.generate(Request("dup", [1]))
    await stream.aclose()


async def test_full_waiting_queue_is_overloaded(make_client):
    engine = make_client(max_num_seqs=1, max_waiting=2, max_num_batched_tokens=128)
    params = SamplingParams(max_tokens=10_000)
    streams = [engine.generate(Request(f"q{i}", [1], params)) for i in range(3)]
    await anext(streams[0])  # running: the next two wait
    firsts = [asyncio.create_task(anext(s)) for s in streams[1:]]
    await wait_until(lambda: engine.stats().num_waiting == 2)
    with pytest.raises(EngineOverloaded):
        engine.generate(Request("overflow", [1], params))
    for task in firsts:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for stream in streams:
        await stream.aclose()
    await wait_until(lambda: engine.stats().num_slots_used == 0)


async def test_text_deltas_come_from_the_incremental_detokenizer(tiny_tokenizer_dir):
    from engine.config import ModelConfig
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.model import RetNet
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = RetNet(ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2,
                               num_heads=2, qk_dim=64, v_dim=128, ffn_dim=128))
    engine = AsyncEngine(LLMEngine(model, EngineConfig(device="cpu", max_num_seqs=4,
                                                       max_num_batched_tokens=128), tokenizer))
    try:
        ids = tokenizer.encode_chat([{"role": "user", "content": "hello there"}])
        outputs = await collect(engine, Request("t", ids, SamplingParams(seed=0, max_tokens=20)))
    finally:
        engine.shutdown()
    generated = [t for o in outputs for t in o.token_ids]
    content = [t for t in generated if t not in tokenizer.stop_token_ids]
    assert "".join(o.text for o in outputs) == tokenizer.decode(content)


async def test_shutdown_ends_open_streams(make_client):
    engine = make_client()
    stream = engine.generate(Request("s", [1, 2], SamplingParams(max_tokens=10_000)))
    await anext(stream)
    engine.shutdown()
    assert not engine.is_alive
    with pytest.raises(RuntimeError):
        async for _ in stream:
            pass
    with pytest.raises(RuntimeError):
        await anext(engine.generate(Request("late", [1])))
