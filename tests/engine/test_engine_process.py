"""ProcessEngine beyond what every engine client promises (tests/engine/test_async_engine.py):
it streams what the engine in this process makes, bad input is refused before anything is
sent, a dead engine process fails its streams, and it never outlives its parent."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.engine_config import EngineConfig
from engine.engine_process import EngineLaunch, EngineProcessError, ProcessEngine
from engine.errors import InvalidRequestError
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState
from tests.engine.conftest import ENGINE_SETTINGS
from tests.engine.streams import collect, prompt, tokens, wait_until


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
        ProcessEngine(EngineLaunch(str(tmp_path), EngineConfig(**ENGINE_SETTINGS)))


PARENT = """
import sys, time
from engine.engine_config import EngineConfig
from engine.engine_process import EngineLaunch, ProcessEngine
engine = ProcessEngine(EngineLaunch(sys.argv[1], EngineConfig(device="cpu", max_num_seqs=4)))
print(engine.pid, flush=True)
time.sleep(600)
"""


def test_the_engine_process_exits_with_its_parent(tiny_checkpoint):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_checkpoint)],
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
