"""The same store over Redis Sentinel and Redis Cluster, chosen by URL."""

import asyncio
import os

import redis
from redis.asyncio.cluster import RedisCluster

from state_store import open_store

MiB = 2**20


async def _exercise(store) -> None:
    """Inline and multi-part values, overwrite, CAS, listing and delete."""
    values = {f"app:k{i}": os.urandom(size) for i, size in enumerate(
        [100, 2 * MiB + 3, 64 * 1024, 5 * MiB])}
    for key, value in values.items():
        await store.put(key, value, ttl=60)
    for key, value in values.items():
        assert await store.get(key) == value
    await store.put("app:k1", b"now small")
    assert await store.get("app:k1") == b"now small"
    assert await store.list("app:") == sorted(values)
    results = await asyncio.gather(*(store.compare_and_set("app:ptr", None, b"%d" % i)
                                     for i in range(20)))
    assert results.count(True) == 1
    for key in values:
        assert await store.delete(key)
    assert await store.list("app:k") == []


async def test_sentinel_url_finds_the_master(redis_servers):
    master = redis_servers()
    sentinel = redis_servers(sentinel_of=master.port)
    store = open_store(f"redis+sentinel://127.0.0.1:{sentinel.port}/main", part_size=1 * MiB)
    try:
        await _exercise(store)
    finally:
        await store.close()


async def test_cluster_keeps_each_record_on_one_slot(redis_cluster):
    nodes = ",".join(f"127.0.0.1:{port}" for port in redis_cluster)
    store = open_store(f"redis+cluster://{nodes}", part_size=1 * MiB)
    try:
        assert isinstance(store.client, RedisCluster)
        await _exercise(store)
        # keys spread over all three primaries, yet each multi-part write was one transaction
        for i in range(30):
            await store.put(f"spread:{i}", os.urandom(MiB + i))
        counts = []
        for port in redis_cluster:
            with redis.Redis(port=port) as node:
                counts.append(node.dbsize())
        assert all(c > 0 for c in counts), counts
    finally:
        await store.close()

