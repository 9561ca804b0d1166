"""sqlite:///path — one WAL-mode file on local disk; the embedded store that survives restarts.

sqlite is blocking, so every statement runs on a thread: one writer thread (sqlite allows one
writer at a time anyway) and a small pool of reader threads, each with its own connection, so
reads proceed while a large record is being written (WAL readers see the last commit).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from state_store.base import StateStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
"""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_UPSERT = ("INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) "
           "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")


def _consume(future) -> None:
    """Retrieve a fire-and-forget result so a failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


class SqliteStore(StateStore):
    backend = "sqlite"

    def __init__(self, path: str | Path, *, read_threads: int = 2, sweep_interval: float = 60.0,
                 busy_timeout: float = 5.0, **opts):
        super().__init__(**opts)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._sweep_interval = sweep_interval
        self._last_sweep = 0.0
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-w")
        self._reader_pool = ThreadPoolExecutor(read_threads, thread_name_prefix="sqlite-r")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # created here, used only on the writer thread afterwards
        self._wconn = self._connect(create=True)

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        if create:
            # big pages make multi-MB blobs far cheaper; only takes effect on a new file
            conn.execute("PRAGMA page_size=65536")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            # after a checkpoint, shrink the WAL back (one 64 MB record would otherwise pin it)
            conn.execute("PRAGMA journal_size_limit=67108864")
        # NORMAL in WAL mode: a committed write survives a process crash (not a power cut)
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def _on(self, pool: ThreadPoolExecutor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # reads

    def _select(self, key: str, now: float):
        return self._reader().execute(
            f"SELECT value, expires_at FROM kv WHERE key = ? AND {_LIVE}", (key, now)).fetchone()

    async def _get(self, key):
        now = time.time()
        row = await self._on(self._reader_pool, self._select, key, now)
        if row is None:
            return None
        value, expires_at = row
        ttl = self.default_ttl
        # refresh the TTL, but skip the write when it would barely move (hot keys read often);
        # not awaited: a read should not queue behind a large write on the writer thread
        if ttl is not None and (expires_at is None or now + ttl - expires_at > 0.05 * ttl):
            touch = asyncio.get_running_loop().run_in_executor(
                self._writer_pool, self._touch, key, now + ttl)
            touch.add_done_callback(_consume)
        return value

    def _touch(self, key: str, expires_at: float) -> None:
        self._wconn.execute("UPDATE kv SET expires_at = ? WHERE key = ?", (expires_at, key))

    def _keys(self, prefix: str, now: float) -> list[str]:
        # every key character sorts below DEL, so [prefix, prefix + DEL) is exactly the prefix
        rows = self._reader().execute(
            f"SELECT key FROM kv WHERE key >= ? AND key < ? AND {_LIVE}",
            (prefix, prefix + "\x7f", now))
        return [k for (k,) in rows]

    async def _list(self, prefix):
        return await self._on(self._reader_pool, self._keys, prefix, time.time())

    # writes (writer thread only)

    def _upsert(self, key: str, value, expires_at: float | None) -> None:
        self._wconn.execute(_UPSERT, (key, value, expires_at))
        now = time.time()
        if now - self._last_sweep > self._sweep_interval:
            self._last_sweep = now
            self._wconn.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))

    async def _put(self, key, value, ttl):
        expires_at = None if ttl is None else time.time() + ttl
        await self._on(self._writer_pool, self._upsert, key, value, expires_at)

    def _remove(self, key: str) -> bool:
        rows = self._wconn.execute("DELETE FROM kv WHERE key = ? RETURNING expires_at",
                                   (key,)).fetchall()
        return bool(rows) and (rows[0][0] is None or rows[0][0] > time.time())

    async def _delete(self, key):
        return await self._on(self._writer_pool, self._remove, key)

    def _set_expiry(self, key: str, expires_at: float) -> bool:
        rows = self._wconn.execute(
            f"UPDATE kv SET expires_at = ? WHERE key = ? AND {_LIVE} RETURNING key",
            (expires_at, key, time.time())).fetchall()
        return bool(rows)

    async def _expire(self, key, ttl):
        return await self._on(self._writer_pool, self._set_expiry, key, time.time() + ttl)

    def _cas(self, key: str, expected, new, ttl) -> bool:
        conn = self._wconn
        # IMMEDIATE takes the write lock first, so other processes on the file cannot interleave
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            row = conn.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}",
                               (key, now)).fetchone()
            swapped = (None if row is None else bytes(row[0])) == expected
            if swapped and new is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            elif swapped:
                conn.execute(_UPSERT, (key, new, None if ttl is None else now + ttl))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return swapped

    async def _compare_and_set(self, key, expected, new, ttl):
        return await self._on(self._writer_pool, self._cas, key, expected, new, ttl)

    async def _close(self):
        # wait for statements in flight without blocking the event loop
        await asyncio.to_thread(self._writer_pool.shutdown, True)
        await asyncio.to_thread(self._reader_pool.shutdown, True)
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
