"""Resident memory of the engine over many chat turns: it must stay flat.

`retserve bench engine_memory [--conversations 64] [--turns 40] [--cpu-kernels KIND] ...`

Every turn, each conversation feeds a user message of its own length (new tokens only) on top
of its state from the turn before, carried as bytes as a store would, replies with up to
`--max-tokens` tokens, feeds two end-of-turn tokens and hands its state back. All conversations
run their turn together, as a load test in lockstep does. Resident memory (VmRSS) and glibc's
heap figures are read after every turn; a state is a fixed size, so after the first turns
nothing should grow. `--async` runs the turns as a server does: through `AsyncEngine` (the
engine on its own thread) with states turned from and into bytes on worker threads.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time

import torch

from bench.common import bench_model, malloc_stats, rss_bytes
from engine.async_engine import AsyncEngine
from engine.engine_config import CPU_KERNELS, EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState
from server import malloc_tuning


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retserve bench engine_memory", description=__doc__)
    p.add_argument("--conversations", type=int, default=64)
    p.add_argument("--turns", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=32, help="reply tokens per turn, at most")
    p.add_argument("--min-message", type=int, default=8, help="new tokens per turn, at least")
    p.add_argument("--max-message", type=int, default=96, help="new tokens per turn, at most")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--cpu-kernels", choices=CPU_KERNELS, default="native",
                   help="CPU: retserve's kernels, oneDNN's packed linears or torch's (MKL)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="through AsyncEngine, states (de)serialised on worker threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_requests(model_config, states: list[bytes | None], num_tokens: list[int],
                  rng: random.Random, args, turn: int) -> list[tuple[Request, bytes | None]]:
    """Each conversation's next request, its state still as bytes."""
    requests = []
    for i in range(len(states)):
        ids = [rng.randrange(model_config.vocab_size)
               for _ in range(rng.randint(args.min_message, args.max_message))]
        # replies of different lengths: the decode batch shrinks through every size
        params = SamplingParams(temperature=0.8, max_tokens=rng.randint(1, args.max_tokens),
                                seed=turn * len(states) + i)
        requests.append((Request(f"t{turn}-c{i}", ids, params, return_state=True,
                                 trailing_ids=(1, 2)), states[i]))
    return requests


def to_state(data: bytes | None, model_config, num_tokens: int) -> RetentionState | None:
    return None if data is None else RetentionState.from_bytes(data, model_config, num_tokens)


def keep(states: list[bytes | None], num_tokens: list[int], request_id: str,
         data: bytes, final: RetentionState) -> None:
    i = int(request_id.rsplit("-c", 1)[1])
    states[i], num_tokens[i] = data, int(final.num_tokens[0])


def run_turn(engine: LLMEngine, states, num_tokens, requests) -> None:
    mc = engine.model.config
    for i, (request, data) in enumerate(requests):
        request.initial_state = to_state(data, mc, num_tokens[i])
    for outputs in engine.generate([r for r, _ in requests]).values():
        final = outputs[-1].state
        keep(states, num_tokens, outputs[-1].request_id, final.to_bytes(), final)


async def run_turn_async(engine: AsyncEngine, states, num_tokens, requests) -> None:
    mc = engine.engine.model.config

    async def one(i: int, request: Request, data: bytes | None) -> None:
        request.initial_state = await asyncio.to_thread(to_state, data, mc, num_tokens[i])
        final = None
        async for output in engine.generate(request):
            final = output.state if output.finished else None
        keep(states, num_tokens, request.request_id, await asyncio.to_thread(final.to_bytes),
             final)

    await asyncio.gather(*(one(i, r, d) for i, (r, d) in enumerate(requests)))


def run(argv: list[str]) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    torch.set_num_threads(args.num_threads)
    model, source = bench_model()
    config = EngineConfig(device="cpu", max_num_seqs=args.conversations,
                          num_threads=args.num_threads,
                          cpu_kernels=args.cpu_kernels)
    engine = LLMEngine(model, config)
    rng = random.Random(args.seed)
    states: list[bytes | None] = [None] * args.conversations
    num_tokens = [0] * args.conversations
    per_turn = []

    async def turns() -> None:
        async_engine = AsyncEngine(engine) if args.use_async else None
        for turn in range(1, args.turns + 1):
            t0 = time.perf_counter()
            requests = make_requests(model.config, states, num_tokens, rng, args, turn)
            if async_engine is None:
                run_turn(engine, states, num_tokens, requests)
            else:
                await run_turn_async(async_engine, states, num_tokens, requests)
            gc.collect()
            per_turn.append({"turn": turn, "rss_bytes": rss_bytes(),
                             "seconds": round(time.perf_counter() - t0, 3), **malloc_stats()})
        if async_engine is not None:
            async_engine.shutdown()

    asyncio.run(turns())
    first = next(t for t in per_turn if t["turn"] == min(2, args.turns))
    last = per_turn[-1]
    mid = per_turn[len(per_turn) // 2]
    return {
        "bench": "engine_memory",
        "source": source,
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cpu_kernels": engine.cpu_kernels,
        "packed_linears": engine.packed_linears,
        # server/malloc_tuning.py, applied by the retserve command line at start-up
        "malloc_tuned": malloc_tuning.is_applied,
        "run": {"conversations": args.conversations, "turns": args.turns,
                "through": "AsyncEngine" if args.use_async else "LLMEngine",
                "max_tokens": args.max_tokens,
                "message_tokens": [args.min_message, args.max_message]},
        "load_average": {"before": load_before, "after": list(os.getloadavg())},
        "seconds": round(time.perf_counter() - started, 1),
        "tokens_per_conversation_last": sum(num_tokens) / len(num_tokens),
        "per_turn": per_turn,
        "summary": {
            "rss_mb_turn2": round(first["rss_bytes"] / 2**20, 1),
            "rss_mb_last": round(last["rss_bytes"] / 2**20, 1),
            "rss_change_turn2_to_last": round(last["rss_bytes"] / first["rss_bytes"] - 1, 4),
            "rss_change_mid_to_last": round(last["rss_bytes"] / mid["rss_bytes"] - 1, 4),
            "target_rss_change": 0.05,
        },
    }
