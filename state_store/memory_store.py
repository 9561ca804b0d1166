"""memory:// — a dict in this process. For tests, development and single-process setups.

Every operation runs without awaiting, so each one is atomic on the event loop.
"""

from __future__ import annotations

import time

from state_store.base import StateStore


class MemoryStore(StateStore):
    backend = "memory"

    def __init__(self, **opts):
        super().__init__(**opts)
        self._data: dict[str, tuple[bytes, float | None]] = {}  # key -> (value, expires_at)

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= time.monotonic():
            del self._data[key]
            return None
        return value

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    async def _get(self, key):
        value = self._live(key)
        if value is not None and self.default_ttl is not None:
            self._data[key] = (value, self._expiry(self.default_ttl))
        return value

    async def _put(self, key, value, ttl):
        self._data[key] = (bytes(value), self._expiry(ttl))

    async def _delete(self, key):
        existed = self._live(key) is not None
        self._data.pop(key, None)
        return existed

    async def _compare_and_set(self, key, expected, new, ttl):
        if self._live(key) != expected:
            return False
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = (bytes(new), self._expiry(ttl))
        return True

    async def _expire(self, key, ttl):
        value = self._live(key)
        if value is not None:
            self._data[key] = (value, self._expiry(ttl))
        return value is not None

    async def _list(self, prefix):
        return [k for k in list(self._data) if k.startswith(prefix) and self._live(k) is not None]

    async def _close(self):
        self._data.clear()
