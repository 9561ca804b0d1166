"""StateStore: the one async interface every backend implements.

Values are opaque bytes under string keys. Two kinds of value share the keyspace:
- records (any size, written by put, read whole or not at all),
- pointers (small, moved only by compare-and-set).
TTL: `put`/`compare_and_set` take a ttl in seconds (None = the store's default_ttl, which may be
None = no expiry); every successful `get` pushes the expiry back to now + default_ttl.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from state_store.stats import StoreStats

# keys become Redis keys, sqlite text and log lines: keep them printable, brace-free (braces are
# Redis Cluster hash tags; the Redis backend uses them for its own part keys) and bounded
_KEY_RE = re.compile(r"[A-Za-z0-9_.:/=+\-]{1,512}")
MAX_POINTER_BYTES = 64 * 1024


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid store key {key!r}")
    return key


class StateStore(ABC):
    backend: str = "abstract"  # label for stats: "redis", "sqlite", "memory"

    def __init__(self, *, default_ttl: float | None = None, stats: StoreStats | None = None):
        if default_ttl is not None and default_ttl <= 0:
            raise ValueError("default_ttl must be positive or None")
        self.default_ttl = default_ttl
        self.stats = stats or StoreStats()

    def _ttl(self, ttl: float | None) -> float | None:
        return self.default_ttl if ttl is None else ttl

    # public API: validation and stats around the backend's primitives

    async def get(self, key: str) -> bytes | None:
        """The whole value, or None if absent or expired; refreshes the TTL."""
        with self.stats.timed(self.backend, "get") as t:
            value = await self._get(check_key(key))
            t.outcome = "miss" if value is None else "hit"
            return value

    async def put(self, key: str, value: bytes | memoryview, *, ttl: float | None = None) -> None:
        """Store `value` atomically (readers see the old value, the new one, or nothing)."""
        with self.stats.timed(self.backend, "put"):
            await self._put(check_key(key), value, self._ttl(ttl))

    async def delete(self, key: str) -> bool:
        with self.stats.timed(self.backend, "delete") as t:
            existed = await self._delete(check_key(key))
            t.outcome = "ok" if existed else "miss"
            return existed

    async def compare_and_set(self, key: str, expected: bytes | None, new: bytes | None, *,
                              ttl: float | None = None) -> bool:
        """Set `key` to `new` (None deletes) only if it currently holds `expected` (None: absent).

        True if the swap happened. Meant for small pointer values, not records.
        """
        if new is not None and len(new) > MAX_POINTER_BYTES:
            raise ValueError(f"pointer value of {len(new)} bytes; use put for records")
        with self.stats.timed(self.backend, "cas") as t:
            swapped = await self._compare_and_set(check_key(key), expected, new, self._ttl(ttl))
            t.outcome = "ok" if swapped else "conflict"
            return swapped

    async def expire(self, key: str, ttl: float) -> bool:
        """Set the key's expiry to now + ttl seconds (shorter or longer); False if absent."""
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        with self.stats.timed(self.backend, "expire") as t:
            existed = await self._expire(check_key(key), ttl)
            t.outcome = "ok" if existed else "miss"
            return existed

    async def list(self, prefix: str) -> list[str]:
        """Live keys starting with `prefix`, sorted."""
        if prefix:
            check_key(prefix)
        with self.stats.timed(self.backend, "list"):
            return sorted(await self._list(prefix))

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # backend primitives: keys are already validated, ttl already resolved

    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _put(self, key: str, value: bytes | memoryview, ttl: float | None) -> None: ...

    @abstractmethod
    async def _delete(self, key: str) -> bool: ...

    @abstractmethod
    async def _compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                               ttl: float | None) -> bool: ...

    @abstractmethod
    async def _expire(self, key: str, ttl: float) -> bool: ...

    @abstractmethod
    async def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    async def _close(self) -> None: ...
