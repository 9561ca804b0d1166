"""StateStore behaviour every backend shares: bytes in, the same bytes out, TTL, CAS, listing."""

import asyncio
import os

import pytest
import redis.asyncio as aioredis

from state_store import StateStore

KiB, MiB = 2**10, 2**20


@pytest.mark.parametrize("size", [1 * KiB, 64 * KiB, 1 * MiB, 1 * MiB + 1, 5 * MiB + 123, 64 * MiB],
                         ids=["1K", "64K", "1M", "1M+1", "5M+123", "64M"])
async def test_round_trip(store: StateStore, prefix, big_payload, size):
    value = big_payload[:size]
    await store.put(f"{prefix}:rt", value)
    assert await store.get(f"{prefix}:rt") == value


async def test_missing_key_reads_none(store, prefix):
    assert await store.get(f"{prefix}:nothing") is None
    assert await store.delete(f"{prefix}:nothing") is False


async def test_overwrite_between_inline_and_multipart(store, prefix, big_payload):
    key = f"{prefix}:ow"
    for value in (big_payload[: 3 * MiB], b"small", big_payload[5:3 * MiB], b"", big_payload[:2]):
        await store.put(key, value)
        assert await store.get(key) == value
    assert await store.delete(key) is True
    assert await store.get(key) is None


async def test_redis_leaves_no_orphan_parts(open_backend, prefix, big_payload, redis_url):
    store = open_backend("redis", part_size=1 * MiB)
    key = f"{prefix}:parts"
    await store.put(key, big_payload[: 4 * MiB])
    await store.put(key, big_payload[1: 4 * MiB])  # new parts, old ones dropped in the same EXEC
    raw = aioredis.Redis.from_url(redis_url)
    try:
        assert len([k async for k in raw.scan_iter(match=f"{{{key}}}*")]) == 4
        await store.delete(key)
        assert [k async for k in raw.scan_iter(match=f"{{{prefix}*")] == []
    finally:
        await raw.aclose()


async def test_readers_never_see_a_mixed_record(store, prefix):
    """Overwrites between two multi-part values: every read is one of them, whole."""
    key = f"{prefix}:flip"
    a, b = os.urandom(3 * MiB + 1), os.urandom(4 * MiB + 2)
    await store.put(key, a)
    done = False
    seen = set()

    async def reader():
        while not done:
            value = await store.get(key)
            assert value in (a, b), "a read mixed two writes"
            seen.add(value == a)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    for i in range(12):
        await store.put(key, b if i % 2 == 0 else a)
        await asyncio.sleep(0.002)
    done = True
    await asyncio.gather(*readers)
    assert seen  # reads happened


async def test_put_takes_a_memoryview(store, prefix, big_payload):
    view = memoryview(big_payload)[10: 10 + 2 * MiB]
    await store.put(f"{prefix}:mv", view)
    assert await store.get(f"{prefix}:mv") == bytes(view)


async def test_ttl_expires(store, prefix):
    await store.put(f"{prefix}:short", b"x" * 100, ttl=0.3)
    await store.put(f"{prefix}:short-big", os.urandom(2 * MiB + 5), ttl=0.3)
    await store.put(f"{prefix}:long", b"y", ttl=60)
    assert await store.get(f"{prefix}:short") == b"x" * 100
    await asyncio.sleep(0.5)
    assert await store.get(f"{prefix}:short") is None
    assert await store.get(f"{prefix}:short-big") is None
    assert await store.get(f"{prefix}:long") == b"y"
    assert await store.list(f"{prefix}:") == [f"{prefix}:long"]


async def test_read_refreshes_ttl(backend, open_backend, prefix):
    store = open_backend(backend, default_ttl=0.6, part_size=1 * MiB)
    big = os.urandom(2 * MiB + 1)
    await store.put(f"{prefix}:kept", b"v")
    await store.put(f"{prefix}:kept-big", big)
    await store.put(f"{prefix}:unread", b"v")
    for _ in range(4):  # 4 x 0.25 s > 0.6 s: alive only because every read pushed expiry back
        await asyncio.sleep(0.25)
        assert await store.get(f"{prefix}:kept") == b"v"
        assert await store.get(f"{prefix}:kept-big") == big
    assert await store.get(f"{prefix}:unread") is None


async def test_expire_shortens_and_extends_whole_records(store, prefix):
    small, big = f"{prefix}:e-small", f"{prefix}:e-big"
    await store.put(small, b"v", ttl=60)
    await store.put(big, os.urandom(3 * MiB + 7), ttl=60)  # multi-part on redis
    await store.put(f"{prefix}:e-kept", b"k", ttl=0.3)
    assert await store.expire(small, 0.3) and await store.expire(big, 0.3)
    assert await store.expire(f"{prefix}:e-kept", 60)
    assert await store.expire(f"{prefix}:e-none", 1) is False
    await asyncio.sleep(0.5)
    assert await store.get(small) is None and await store.get(big) is None
    assert await store.get(f"{prefix}:e-kept") == b"k"
    assert await store.list(f"{prefix}:e-") == [f"{prefix}:e-kept"]
    with pytest.raises(ValueError):
        await store.expire(small, 0)


async def test_redis_expire_reaches_every_part(open_backend, prefix, redis_url):
    store = open_backend("redis", part_size=1 * MiB)
    key = f"{prefix}:e-parts"
    await store.put(key, os.urandom(3 * MiB + 1))
    assert await store.expire(key, 30)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in raw.scan_iter(match=f"{{{key}}}*")] + [key.encode()]
        assert len(keys) == 5
        assert all(0 < ttl <= 30_000 for ttl in [await raw.pttl(k) for k in keys])
    finally:
        await raw.aclose()


async def test_list_by_prefix(store, prefix, big_payload):
    for name in ("a:1", "a:2", "ab:3", "b:1"):
        await store.put(f"{prefix}:{name}", big_payload[: 2 * MiB] if name == "a:2" else b"v")
    assert await store.list(f"{prefix}:a:") == [f"{prefix}:a:1", f"{prefix}:a:2"]
    assert await store.list(f"{prefix}:a") == [f"{prefix}:a:1", f"{prefix}:a:2", f"{prefix}:ab:3"]
    assert await store.list(f"{prefix}:c") == []


async def test_compare_and_set(store, prefix):
    key = f"{prefix}:ptr"
    assert await store.compare_and_set(key, None, b"one") is True
    assert await store.compare_and_set(key, None, b"two") is False  # exists already
    assert await store.compare_and_set(key, b"uno", b"two") is False  # wrong expectation
    assert await store.get(key) == b"one"
    assert await store.compare_and_set(key, b"one", b"two") is True
    assert await store.compare_and_set(key, b"two", None) is True  # swap to "absent"
    assert await store.get(key) is None
    assert await store.compare_and_set(key, b"two", b"three") is False


async def test_concurrent_cas_exactly_one_winner_per_round(store, prefix):
    key = f"{prefix}:race"
    results = await asyncio.gather(*(store.compare_and_set(key, None, b"w%d" % i)
                                     for i in range(50)))
    assert results.count(True) == 1
    assert await store.get(key) == b"w%d" % results.index(True)


async def test_invalid_keys_are_refused(store):
    for key in ("", "has space", "{tag}", "a" * 600, "nul\0"):
        with pytest.raises(ValueError):
            await store.get(key)


async def test_pointer_values_are_bounded(store, prefix):
    with pytest.raises(ValueError):
        await store.compare_and_set(f"{prefix}:p", None, bytes(65 * KiB))


async def test_operations_are_counted(store, prefix):
    await store.put(f"{prefix}:c", b"v")
    await store.get(f"{prefix}:c")
    await store.get(f"{prefix}:none")
    stats = store.stats
    assert stats.count(store.backend, "put", "ok") == 1
    assert stats.count(store.backend, "get", "hit") == 1
    assert stats.count(store.backend, "get", "miss") == 1
    snap = stats.snapshot()
    assert all(sum(op["bucket_counts"]) == op["count"] for op in snap["ops"])
