"""Fixtures for the state store: real backends (memory, sqlite, Redis) and private redis-servers.

The shared Redis is RETSERVE_TEST_REDIS_URL, else 127.0.0.1:6379 if it answers, else a private
redis-server started for the session. Every test writes under its own key prefix and deletes
what it wrote.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from state_store import ConversationStore, HotCache, StateRecord, open_store

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
FINGERPRINT = "f1a9e2" * 8
MiB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too."""
    while True:
        port = random.randrange(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server process of our own, in its own directory, on a free port."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None,
                 sentinel_of: int | None = None):
        self.workdir = workdir
        self.args = args
        self.sentinel_of = sentinel_of  # port of the master this Sentinel watches
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER]
        if self.sentinel_of is not None:  # Sentinel insists on a config file it can rewrite
            conf = self.workdir / "sentinel.conf"
            conf.write_text(f"sentinel monitor main 127.0.0.1 {self.sentinel_of} 1\n")
            cmd += [str(conf), "--sentinel"]
        else:
            cmd += ["--save", ""]
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--daemonize", "no", "--protected-mode", "no",
                "--logfile", str(self.workdir / "redis.log"), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-2000:]}")
            if redis_answers(self.url, 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} not ready: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9 and reap; the port frees at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process still dies, but be sure
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_servers(tmp_path):
    """Start private redis-servers: `redis_servers(*args)`; all are killed at teardown."""
    started: list[RedisServer] = []

    def start(*args: str, port: int | None = None, sentinel_of: int | None = None
              ) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", *args, port=port,
                             sentinel_of=sentinel_of)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("RETSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("shared-redis")).start()
    try:
        yield server.url
    finally:
        server.kill()


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
