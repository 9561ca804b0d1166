"""ProcessEngine: the engine in a process of its own streams what the engine in this process
streams, states cross the boundary both ways, aborts free slots, bad input is refused before
anything is sent, and the engine process never outlives the process that started it."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import aclosing

import pytest
import torch

from engine.checkpoint import save_model
from engine.engine_config import EngineConfig
from engine.engine_process import EngineLaunch, EngineProcessError, ProcessEngine
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState

SETTINGS = dict(device="cpu", max_num_seqs=16, max_num_batched_tokens=208,
                decode_buckets=tuple(range(4, 65, 4)), num_threads=1)


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(length)]


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    save_model(tiny_model, path)
    return path


@pytest.fixture
def make_process(checkpoint):
    engines = []

    def make(**overrides) -> ProcessEngine:
        engines.append(ProcessEngine(EngineLaunch(str(checkpoint), EngineConfig(
            **{**SETTINGS, **overrides}))))
        return engines[-1]

    yield make
    for engine in engines:
        engine.shutdown()


async def collect(engine, request: Request):
    return [output async for output in engine.generate(request)]


async def wait_until(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


async def test_concurrent_requests_give_the_tokens_of_the_engine_in_this_process(
        make_process, make_engine):
    engine = make_process()
    rng = random.Random(5)
    requests = [Request(f"r{i}", prompt(i, rng.randint(1, 150)), SamplingParams(
        temperature=0.0 if i % 2 else 0.9, seed=i, top_k=50, max_tokens=rng.randint(3, 25),
        ignore_eos=True, logprobs=2)) for i in range(12)]
    together = await asyncio.gather(*(collect(engine, r) for r in requests))
    alone = make_engine().generate(requests)
    for request, outputs in zip(requests, together, strict=True):
        assert tokens(outputs) == tokens(alone[request.request_id])
        assert [lp.token_id for o in outputs for lp in o.logprobs] == tokens(outputs)
        final = outputs[-1]
        assert final.finish_reason == "length" and final.timings.finished is not None
        assert final.num_prompt_tokens == len(request.prompt_ids)
    assert engine.num_streams == 0
    await wait_until(lambda: engine.stats().num_running == 0)
    assert engine.stats().num_slots_used == 0 and engine.stats().num_steps > 0
    assert engine.info.num_slots == 16 and engine.info.model_config.vocab_size == 300


async def test_a_returned_state_crosses_back_and_resumes_the_conversation(make_process,
                                                                         tiny_model):
    engine = make_process()
    turn1, turn2 = prompt(10, 40), prompt(11, 7)
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    first = await collect(engine, Request("t1", turn1, greedy, return_state=True,
                                          trailing_ids=(9,)))
    reply = tokens(first)
    state = first[-1].state
    assert isinstance(state, RetentionState) and int(state.num_tokens[0]) == 40 + 5 + 1
    second = await collect(engine, Request("t2", turn2, greedy, initial_state=state))
    assert second[-1].num_cached_tokens == 46
    with torch.inference_mode():
        logits, _ = tiny_model.prefill(torch.tensor([turn1 + reply + [9] + turn2]))
    assert second[0].token_ids[0] == logits[0, -1].argmax().item()


async def test_closing_or_aborting_a_stream_frees_its_slot(make_process):
    engine = make_process()
    params = SamplingParams(max_tokens=10_000, ignore_eos=True)
    async with aclosing(engine.generate(Request("gone", prompt(3, 20), params))) as stream:
        async for output in stream:
            if output.num_generated_tokens >= 3:
                break
    await wait_until(lambda: engine.stats().num_slots_used == 0)
    stream = engine.generate(Request("x", prompt(5, 10), params))
    await anext(stream)
    engine.abort("x")
    rest = [o async for o in stream]
    assert rest[-1].finish_reason == "abort"
    await wait_until(lambda: engine.stats().num_slots_used == 0)
    assert engine.num_streams == 0


async def test_bad_input_is_refused_before_it_is_sent(make_process):
    engine = make_process(max_logprobs=2)
    with pytest.raises(InvalidRequestError):
        engine.generate(Request("bad", [1, 2], SamplingParams(logprobs=3)))
    for bad in (dict(prompt_ids=[]), dict(prompt_ids=[1, 300]), dict(trailing_ids=(400,)),
                dict(initial_state=RetentionState(torch.zeros(2, 1, 2, 32, 32),
                                                  torch.zeros(1, dtype=int)))):
        with pytest.raises(InvalidRequestError):
            engine.generate(Request(**{"request_id": "bad", "prompt_ids": [1, 2], **bad}))
    # a grammar only the engine process compiles: refused on the stream
    with pytest.raises(InvalidRequestError):
        await collect(engine, Request("g", [1, 2], SamplingParams(grammar="not a grammar")))
    assert (await collect(engine, Request("ok", [1, 2], SamplingParams(max_tokens=2))))


async def test_a_full_waiting_queue_is_overloaded(make_process):
    engine = make_process(max_num_seqs=1, max_waiting=2, max_num_batched_tokens=128)
    params = SamplingParams(max_tokens=10_000)
    streams = [engine.generate(Request(f"q{i}", [1], params)) for i in range(3)]
    await anext(streams[0])
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


async def test_shutdown_ends_open_streams_and_the_process(make_process):
    engine = make_process()
    stream = engine.generate(Request("s", [1, 2], SamplingParams(max_tokens=10_000)))
    await anext(stream)
    engine.shutdown()
    assert not engine.is_alive
    with pytest.raises(RuntimeError):
        async for _ in stream:
            pass
    with pytest.raises(RuntimeError):
        await anext(engine.generate(Request("late", [1])))


async def test_a_dead_engine_process_fails_its_streams(make_process):
    engine = make_process()
    stream = engine.generate(Request("s", [1, 2], SamplingParams(max_tokens=10_000)))
    await anext(stream)
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(EngineProcessError):
        async for _ in stream:
            pass
    assert not engine.is_alive


def test_a_checkpoint_that_cannot_load_is_reported(tmp_path):
    with pytest.raises(EngineProcessError, match="not a retserve checkpoint"):
        ProcessEngine(EngineLaunch(str(tmp_path), EngineConfig(**SETTINGS)))


PARENT = """
import sys, time
from engine.engine_config import EngineConfig
from engine.engine_process import EngineLaunch, ProcessEngine
engine = ProcessEngine(EngineLaunch(sys.argv[1], EngineConfig(device="cpu", max_num_seqs=4)))
print(engine.pid, flush=True)
time.sleep(600)
"""


def test_the_engine_process_exits_with_its_parent(checkpoint):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(checkpoint)],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGINT)  # a terminal's ^C reaches the whole group...
        parent.kill()  # ...and the parent dies without saying stop
        parent.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                break  # exited; its parent (now gone) never reaped it
            time.sleep(0.05)
        is_running = os.path.exists(f"/proc/{child}") and \
            open(f"/proc/{child}/stat").read().split()[2] != "Z"
        assert not is_running
    finally:
        parent.kill()
