"""open_store(url): pick and build a backend from a URL.

    memory://                                            in-process dict
    sqlite:///relative/path.db  sqlite:////abs/path.db   embedded file (SQLAlchemy's slashes)
    redis://[user:pass@]host:port/db   rediss://...      one Redis (TLS with rediss)
    redis+sentinel://[user:pass@]h1:p1,h2:p2/service[/db]    master found through Sentinel
    redis+cluster://[user:pass@]h1:p1,h2:p2              Redis Cluster (rediss+cluster: TLS)

Options common to all: default_ttl (seconds), stats. Redis only: part_size, timeout,
connect_timeout, min_bandwidth, max_connections, failure_threshold, reset_timeout,
sentinel_password. sqlite only: read_threads, sweep_interval, busy_timeout.
Options of another backend are ignored (one settings object serves every URL); unknown ones
raise TypeError.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff

from state_store.base import StateStore
from state_store.breaker import CircuitBreaker
from state_store.memory_store import MemoryStore
from state_store.redis_io import chunked
from state_store.redis_store import RedisStore
from state_store.sqlite_store import SqliteStore

_READ_SIZE = 1 << 20  # bigger socket reads: fewer event-loop turns per multi-MB reply


_OPTIONS = {
    "redis": {"part_size", "timeout", "connect_timeout", "min_bandwidth", "max_connections",
              "failure_threshold", "reset_timeout", "sentinel_password"},
    "sqlite": {"read_threads", "sweep_interval", "busy_timeout"},
    "memory": set(),
}


def _only(backend: str, opts: dict) -> dict:
    foreign = set().union(*(v for k, v in _OPTIONS.items() if k != backend)) - _OPTIONS[backend]
    return {k: v for k, v in opts.items() if k not in foreign}


def open_store(url: str, **opts) -> StateStore:
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryStore(**_only("memory", opts))
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError("sqlite URL must look like sqlite:///path/to/file.db")
        return SqliteStore(url[len("sqlite:///"):], **_only("sqlite", opts))
    if scheme in ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster",
                  "rediss+cluster"):
        return _open_redis(url, scheme, **_only("redis", opts))
    raise ValueError(f"unknown state store URL scheme {scheme!r}")


def _open_redis(url: str, scheme: str, *, timeout: float = 1.0,
                connect_timeout: float | None = None, max_connections: int = 64,
                failure_threshold: int = 1, reset_timeout: float = 1.0,
                sentinel_password: str | None = None, **opts) -> RedisStore:
    conn = dict(
        # a backstop only: RedisStore bounds every call by `timeout` plus time for its bytes,
        # while redis-py would apply this to a whole multi-MB send or reply
        socket_timeout=max(30.0, timeout),
        socket_connect_timeout=connect_timeout or timeout,
        socket_read_size=_READ_SIZE,
        socket_keepalive=True,
    )
    breaker = CircuitBreaker(failure_threshold=failure_threshold, reset_timeout=reset_timeout)
    on_close = []
    if scheme in ("redis", "rediss"):
        # redis-py retries failed calls by default; we bound time ourselves, the breaker decides
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, retry=Retry(NoBackoff(), 0),
            **conn)
        pool.connection_class = chunked(pool.connection_class)  # set by the URL: TLS or not
        client = aioredis.Redis.from_pool(pool)
    else:
        parts = urlsplit(url)
        auth = dict(username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None)
        tls = scheme.startswith("rediss")
        hosts = _hosts(parts.netloc.rpartition("@")[2],
                       26379 if scheme.endswith("+sentinel") else 6379)
        path = [p for p in parts.path.split("/") if p]
        if scheme.endswith("+sentinel"):
            if not path:
                raise ValueError("sentinel URL needs the service name: .../service_name[/db]")
            sentinel_kwargs = dict(conn, socket_timeout=timeout, password=sentinel_password)
            sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs,
                                retry=Retry(NoBackoff(), 0), ssl=tls, **auth, **conn)
            connection_class = SentinelManagedSSLConnection if tls else SentinelManagedConnection
            client = sentinel.master_for(path[0], db=int(path[1]) if len(path) > 1 else 0,
                                         max_connections=max_connections,
                                         connection_class=chunked(connection_class))
            on_close = sentinel.sentinels
        else:  # (Cluster builds its own connections: no chunked writes there)
            client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts],
                                  max_connections=max_connections, ssl=tls, **auth, **conn)
    return RedisStore(client, timeout=timeout, breaker=breaker, on_close=on_close, **opts)


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item.rpartition("]")[2] else (item, "", "")
        hosts.append((host.strip("[]") or "localhost", int(port or default_port)))
    return hosts
