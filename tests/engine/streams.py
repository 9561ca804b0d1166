"""What the engine-client tests share: prompts, collecting a stream, waiting for a condition."""

from __future__ import annotations

import asyncio
import random

from engine.engine_client import EngineClient
from engine.sequence import Request, RequestOutput


def prompt(seed: int, length: int) -> list[int]:
    """Token ids of the tiny model's vocabulary (300), the same for a seed."""
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(length)]


async def collect(engine: EngineClient, request: Request) -> list[RequestOutput]:
    return [output async for output in engine.generate(request)]


def tokens(outputs: list[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


async def wait_until(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")
