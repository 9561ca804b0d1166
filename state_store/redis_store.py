"""redis://, rediss://, redis+sentinel://, redis+cluster:// — the production store.

Layout of a value under key K:
- up to part_size bytes: K = INLINE tag + value (one round trip to read);
- larger: parts "{K}:p:<gen>:<i>" plus K = MANIFEST tag + (gen, num_parts, length), all written in
  one MULTI/EXEC. The braces are a Cluster hash tag, so the parts live in K's slot and the
  transaction stays on one node. <gen> is fresh per write, so parts of two writes never mix, and
  a write cut short (client or server killed before EXEC) leaves nothing: Redis applies a
  transaction whole or not at all, in memory and in the AOF.
A reader fetches K, then the parts named by that manifest; a part missing (overwritten or
expired in between) means "read K again", never "return what we have".
"""

from __future__ import annotations

import asyncio
import os
import struct

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from state_store.base import StateStore
from state_store.breaker import CircuitBreaker
from state_store.errors import ConflictError, StateStoreError

INLINE, MANIFEST = b"\x00", b"\x01"  # first byte of the value under K
_MANIFEST = struct.Struct("<c8sIQ")  # tag, generation, number of parts, total length
DEFAULT_PART_SIZE = 8 * 2**20
# errors that mean "Redis is not answering", as opposed to an error reply
FAILURES = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError, RedisClusterException)
_READ_RETRIES = 3
_WRITE_RETRIES = 5

# compare-and-set in one atomic step; ARGV: has_expected, expected, has_new, new, ttl_ms (0=none)
_CAS_LUA = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[5] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"""


def part_key(key: str, gen: bytes, index: int) -> str:
    return f"{{{key}}}:p:{gen.hex()}:{index}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore(StateStore):
    backend = "redis"

    def __init__(self, client, *, part_size: int = DEFAULT_PART_SIZE, timeout: float = 1.0,
                 min_bandwidth: float = 100e6, breaker: CircuitBreaker | None = None,
                 on_close=(), **opts):
        """`client`: a redis.asyncio Redis or RedisCluster (bytes replies). `timeout` bounds every
        call, plus len/min_bandwidth seconds for large values."""
        super().__init__(**opts)
        if part_size < 1024:
            raise ValueError("part_size below 1 KiB")
        self.client = client
        self.part_size = part_size
        self.timeout = timeout
        self.min_bandwidth = min_bandwidth
        self.breaker = breaker or CircuitBreaker()
        self._on_close = list(on_close)  # extra clients to close (e.g. sentinel connections)
        self._cas_script = client.register_script(_CAS_LUA)

    def _px(self, ttl: float | None) -> int | None:
        return None if ttl is None else max(1, int(ttl * 1000))

    async def _call(self, fn, *args, nbytes: int = 0):
        """One guarded, time-bounded round of backend work."""
        with self.breaker.guard(FAILURES):
            try:
                async with asyncio.timeout(self.timeout + nbytes / self.min_bandwidth):
                    return await fn(*args)
            except RedisError as e:
                if isinstance(e, FAILURES):
                    raise
                # an error reply (OOM, a bad script, ...): Redis is up, the call still failed
                raise StateStoreError(f"redis: {type(e).__name__}: {e}") from e

    # reads

    async def _get(self, key):
        px = self._px(self.default_ttl)
        for _ in range(_READ_RETRIES):
            head = await self._call(self._getex, key, px, nbytes=self.part_size)
            if head is None:
                return None
            if head[:1] == INLINE:
                return head[1:]
            if head[:1] != MANIFEST or len(head) != _MANIFEST.size:
                raise StateStoreError(f"value at {key!r} was not written by this store")
            _, gen, num_parts, length = _MANIFEST.unpack(head)
            parts = await self._call(self._get_parts, key, gen, num_parts, px, nbytes=length)
            if all(p is not None for p in parts) and sum(map(len, parts)) == length:
                # join copies tens of MB without the GIL: on a thread, the event loop goes on
                return await asyncio.to_thread(b"".join, parts)
        return None  # the parts keep vanishing (evicted or expired): the record is gone

    async def _getex(self, key: str, px: int | None):
        return await (self.client.getex(key, px=px) if px else self.client.get(key))

    async def _get_parts(self, key: str, gen: bytes, num_parts: int, px: int | None):
        async with self.client.pipeline(transaction=False) as pipe:
            for i in range(num_parts):
                if px:
                    pipe.getex(part_key(key, gen, i), px=px)
                else:
                    pipe.get(part_key(key, gen, i))
            return await pipe.execute()

    async def _list(self, prefix):
        return await self._call(self._scan, prefix)

    async def _scan(self, prefix: str) -> list[str]:
        keys = set()
        async for k in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            k = k.decode()
            if not k.startswith("{"):  # part keys are not values of their own
                keys.add(k)
        return list(keys)

    # writes

    async def _put(self, key, value, ttl):
        mv = memoryview(value).cast("B")
        if len(mv) <= self.part_size:
            head, parts = b"".join((INLINE, mv)), []
            gen = b""
        else:
            gen = os.urandom(8)
            num_parts = -(-len(mv) // self.part_size)
            head = _MANIFEST.pack(MANIFEST, gen, num_parts, len(mv))
            # memoryview slices: redis-py sends them as they are, without copying
            parts = [mv[i * self.part_size : (i + 1) * self.part_size] for i in range(num_parts)]
        await self._call(self._replace, key, head, gen, parts, self._px(ttl), nbytes=len(mv))

    async def _delete(self, key):
        return await self._call(self._replace, key, None, b"", [], None)

    async def _replace(self, key: str, head: bytes | None, gen: bytes, parts: list,
                       px: int | None) -> bool:
        """Atomically set K (None deletes it) and its new parts, dropping the old parts.

        WATCH K so the old manifest we read is still K's when EXEC runs; True if K existed.
        """
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WRITE_RETRIES):
                try:
                    await pipe.watch(key)
                    old = await pipe.getrange(key, 0, _MANIFEST.size - 1)
                    pipe.multi()
                    for i, part in enumerate(parts):
                        pipe.set(part_key(key, gen, i), part, px=px)
                    if head is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, head, px=px)
                    if old[:1] == MANIFEST and len(old) == _MANIFEST.size:
                        _, old_gen, n, _ = _MANIFEST.unpack(old)
                        pipe.delete(*(part_key(key, old_gen, i) for i in range(n)))
                    await pipe.execute()
                    return bool(old)
                except WatchError:
                    continue  # another writer moved K between WATCH and EXEC: read it again
        raise ConflictError(f"{_WRITE_RETRIES} concurrent writes to one key in a row")

    async def _expire(self, key, ttl):
        return await self._call(self._pexpire, key, self._px(ttl))

    async def _pexpire(self, key: str, px: int) -> bool:
        """K and the parts its manifest names; a concurrent rewrite brings its own expiry."""
        head = await self.client.getrange(key, 0, _MANIFEST.size - 1)
        if not head:
            return False
        async with self.client.pipeline(transaction=False) as pipe:
            if head[:1] == MANIFEST and len(head) == _MANIFEST.size:
                _, gen, num_parts, _ = _MANIFEST.unpack(head)
                for i in range(num_parts):
                    pipe.pexpire(part_key(key, gen, i), px)
            pipe.pexpire(key, px)
            return bool((await pipe.execute())[-1])

    async def _compare_and_set(self, key, expected, new, ttl):
        # pointers are stored like inline values, so get() reads them too
        args = ["0" if expected is None else "1", b"" if expected is None else INLINE + expected,
                "0" if new is None else "1", b"" if new is None else INLINE + new,
                str(self._px(ttl) or 0)]
        return bool(await self._call(self._cas_script, [key], args))

    async def _close(self):
        for client in (self.client, *self._on_close):
            await client.aclose()

