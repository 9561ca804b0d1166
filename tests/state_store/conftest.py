"""Fixtures for the state store: real backends (memory, sqlite, Redis) and private redis-servers.

The shared Redis is RETSERVE_TEST_REDIS_URL, else 127.0.0.1:6379 if it answers, else a private
redis-server started for the session. Every test writes under its own key prefix and deletes
what it wrote.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

import pytest
import redis

from state_store import ConversationStore, HotCache, StateRecord, open_store
from tests.redis_server import free_cluster_port

FINGERPRINT = "f1a9e2" * 8
MiB = 2**20


def _raw(client: redis.Redis, *args) -> bytes:
    """A command's reply as Redis sent it, without redis-py's parsing."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


@pytest.fixture
def redis_cluster(redis_servers):
    """A 3-primary Redis Cluster of private servers; returns their ports."""
    servers = [redis_servers("--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                             port=free_cluster_port()) for _ in range(3)]
    clients = [redis.Redis(port=s.port) for s in servers]
    try:
        bounds = [0, 5461, 10923, 16384]
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", servers[0].port)
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in (info := _raw(c, "CLUSTER", "INFO"))
                      and b"cluster_known_nodes:3" in info for c in clients):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return [s.port for s in servers]


def delete_prefix(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        for pattern in (f"{prefix}*", f"{{{prefix}*"):  # values, and their parts
            batch = list(client.scan_iter(match=pattern, count=1000))
            if batch:
                client.delete(*batch)


@pytest.fixture
def prefix(request, redis_url):
    """A key prefix unique to this test (and this run); removed from Redis afterwards."""
    value = f"t{uuid.uuid4().hex[:12]}"
    yield value
    delete_prefix(redis_url, value)


BACKENDS = ["memory", "sqlite", "redis"]


def backend_url(name: str, tmp_path: Path, redis_url: str, index: int = 0) -> str:
    return {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/store{index}.db",
            "redis": redis_url}[name]


@pytest.fixture
async def open_backend(tmp_path, redis_url):
    """open_backend(name, **opts): a fresh store of that backend, closed at teardown."""
    opened = []

    def open_(name: str, **opts):
        store = open_store(backend_url(name, tmp_path, redis_url, len(opened)), **opts)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend, open_backend):
    """Each backend in turn; small parts so the multi-part paths run on small data."""
    return open_backend(backend, part_size=1 * MiB)


@pytest.fixture
def make_record():
    """make_record(num_bytes, seed=0): a float32 record whose body is num_bytes long."""

    def make(num_bytes: int = 4096, *, seed: int = 0, fingerprint: str = FINGERPRINT,
             num_tokens: int = 7) -> StateRecord:
        assert num_bytes % 8 == 0
        half = num_bytes // 8  # two tensors of float32, `half` elements each
        body = random.Random(seed).randbytes(num_bytes)
        return StateRecord(model_fingerprint=fingerprint, dtype="float32",
                           tensors=[("layer0.S", (half,)), ("layer0.n", (half,))],
                           num_tokens=num_tokens, body=body)

    return make


def chat(turns: int, last_user: bool = True) -> list[dict]:
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"q{i}"},
                     {"role": "assistant", "content": f"a{i}"}]
    if last_user:
        messages.append({"role": "user", "content": "next"})
    return messages


@pytest.fixture
def make_chat():
    """make_chat(turns, last_user=True): system, (user, assistant) x turns[, user]."""
    return chat


@pytest.fixture(scope="session")
def big_payload() -> bytes:
    """64 MiB of random bytes, made once."""
    return os.urandom(64 * MiB)


@pytest.fixture
def conversations(store, prefix):
    """A ConversationStore over each backend, namespaced to this test, with a hot cache."""
    return ConversationStore(store, FINGERPRINT, hot_cache=HotCache(64 * MiB), namespace=prefix)
