"""Redis failing under the store: killed mid-write, frozen, absent. Private redis-servers only."""

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from state_store import ConversationStore, StoreUnavailable, open_store

MiB = 2**20


async def _wait_until_in_multi(url: str, min_queued: int = 4, timeout: float = 10.0) -> None:
    """Return once some client has queued at least `min_queued` commands inside a MULTI."""
    raw = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for client in await raw.client_list():
                if int(client.get("multi", -1)) >= min_queued:
                    return
            await asyncio.sleep(0.001)
        raise AssertionError("no transaction was seen in flight")
    finally:
        await raw.aclose()


async def _get_when_back(store, key: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await store.get(key)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_kill_9_mid_write_leaves_no_partial_record_and_aof_keeps_the_rest(redis_servers):
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    store = open_store(server.url, part_size=1 * MiB, timeout=2.0, reset_timeout=0.2)
    try:
        earlier = {"k:inline": os.urandom(10_000), "k:multi": os.urandom(3 * MiB + 7),
                   "k:big": os.urandom(9 * MiB)}
        for key, value in earlier.items():
            await store.put(key, value)
        v1, v2 = os.urandom(24 * MiB), os.urandom(48 * MiB)
        await store.put("k:victim", v1)

        seen = []

        async def reader():  # a reader racing the write sees v1 whole, never a mix
            while True:
                try:
                    seen.append(await store.get("k:victim"))
                except StoreUnavailable:
                    return

        read_task = asyncio.create_task(reader())
        while not seen:
            await asyncio.sleep(0.001)
        write_task = asyncio.create_task(store.put("k:victim", v2))
        await _wait_until_in_multi(server.url)
        server.kill()  # SIGKILL while the transaction is half received
        with pytest.raises(StoreUnavailable):
            await write_task
        await read_task
        assert seen and all(value == v1 for value in seen)

        # the breaker is open: each call fails at once instead of waiting on a dead socket
        t0 = time.perf_counter()
        for _ in range(50):
            with pytest.raises(StoreUnavailable):
                await store.get("k:inline")
        assert time.perf_counter() - t0 < 0.1
        assert store.breaker.state in ("open", "half_open")

        server.start()  # same port, same dir: the AOF is loaded
        assert await _get_when_back(store, "k:victim") == v1  # v2 never happened
        for key, value in earlier.items():
            assert await store.get(key) == value
        assert store.breaker.state == "closed"
        raw = aioredis.Redis.from_url(server.url)
        try:  # nothing of the killed write is left, not even orphan parts
            parts = [k async for k in raw.scan_iter(match="{k:victim}*")]
            assert len(parts) == 24
        finally:
            await raw.aclose()
    finally:
        await store.close()


async def test_frozen_redis_costs_one_timeout_then_fails_fast(redis_servers):
    server = redis_servers()
    store = open_store(server.url, timeout=0.3, reset_timeout=0.5)
    try:
        await store.put("k", b"v")
        server.signal(signal.SIGSTOP)  # accepts TCP, never answers: the worst kind of down
        try:
            t0 = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            first = time.perf_counter() - t0
            assert 0.25 < first < 1.5, first
            t0 = time.perf_counter()
            for _ in range(100):
                with pytest.raises(StoreUnavailable, match="circuit"):
                    await store.get("k")
            assert time.perf_counter() - t0 < 0.1
        finally:
            server.signal(signal.SIGCONT)
        await asyncio.sleep(0.6)  # past reset_timeout: the next call is the half-open probe
        assert await store.get("k") == b"v"
        assert store.breaker.state == "closed"
        assert store.stats.count("redis", "get", "unavailable") == 101
    finally:
        await store.close()


async def test_redis_that_is_not_there_fails_fast(redis_servers):
    server = redis_servers()
    server.kill()
    store = open_store(server.url, timeout=1.0, reset_timeout=5.0)
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            with pytest.raises(StoreUnavailable):
                await store.put("k", b"v")
        conv = ConversationStore(store, "ab" * 16)
        with pytest.raises(StoreUnavailable):  # the chat service falls back to a full prompt
            await conv.lookup("t", [{"role": "assistant", "content": "hi"}])
        assert time.perf_counter() - t0 < 0.5
        assert store.breaker.num_opened == 1
    finally:
        await store.close()
