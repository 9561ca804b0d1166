"""ResponseStore: stored responses (`/v1/responses` with `store: true`). Each is one immutable
state record under its response id (the state after the response, end of turn fed) with the
response object beside it, in the tenant's namespace; `previous_response_id` continues from
that state, so a follow-up feeds only its new input.

Memory stays bounded two ways:
- expiry: a response lives `ttl` seconds from its creation. The object carries its deadline and
  a read past it is a miss, because the stores slide a key's expiry on every read; after a read
  the keys' expiry is set back to the deadline, so they never outlive it by more than that.
- a per-tenant cap: saving a response claims the next slot of the tenant's ring of
  `max_per_tenant` slots (a counter and one pointer per slot, moved by compare-and-set) and
  deletes the response that held the slot, the tenant's oldest. O(1) store calls per save,
  whatever the number of stored responses. Lowering the cap leaves responses in slots past the
  new size until they expire.

The object is written after the state, so a response that can be read can be continued; a
delete removes the object first. The object is read from the store on every use (never cached),
so a delete on one replica is seen by all; the state may come from the hot cache (immutable).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from state_store import keys
from state_store.base import StateStore
from state_store.errors import ConflictError, MalformedRecord
from state_store.hot_cache import HotCache
from state_store.record import StateRecord
from state_store.record_io import read_record, record_bytes

MAX_CAS_TRIES = 64  # saves of one tenant finishing at the same moment retry the ring's counter


@dataclass(frozen=True)
class StoredResponse:
    response_id: str
    response: dict  # the response object, as GET /v1/responses/{id} returns it
    input_items: list[dict]  # the items of its request's input, with their ids
    created_at: float  # unix seconds
    expires_at: float


class ResponseStore:
    def __init__(self, store: StateStore, model_fingerprint: str, *, ttl: float,
                 max_per_tenant: int, namespace: str = keys.DEFAULT_NAMESPACE,
                 hot_cache: HotCache | None = None, clock: Callable[[], float] = time.time):
        if not ttl > 0 or max_per_tenant < 1:
            raise ValueError("ttl must be positive and max_per_tenant at least 1")
        self.store = store
        self.stats = store.stats
        self.model_fingerprint = model_fingerprint
        self.ttl = ttl
        self.max_per_tenant = max_per_tenant
        self.namespace = namespace
        self.hot_cache = hot_cache
        self._clock = clock

    def _key(self, tenant: str, response_id: str, part: str) -> str:
        return keys.response_key(self.namespace, tenant, response_id, part)

    # writing ---------------------------------------------------------------------------------

    async def save(self, tenant: str, response_id: str, response: Mapping,
                   input_items: list[Mapping], record: StateRecord) -> StoredResponse:
        """Store a response: its state, then its object, then its slot in the tenant's ring
        (deleting the response the slot held)."""
        if record.model_fingerprint != self.model_fingerprint:
            raise ValueError("record is for another model than this store's")
        now = self._clock()
        stored = StoredResponse(response_id, dict(response), [dict(i) for i in input_items],
                                now, now + self.ttl)
        record = replace(record, tenant=tenant, created_at=record.created_at or now,
                         updated_at=now)
        state_key = self._key(tenant, response_id, "state")
        data = await record_bytes(record)
        await self.store.put(state_key, data, ttl=self.ttl)
        await self.store.put(self._key(tenant, response_id, "object"), _dump(stored),
                             ttl=self.ttl)
        if self.hot_cache is not None:
            self.hot_cache.put(state_key, record)
        await self._claim_slot(tenant, response_id)
        return stored

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Remove a response; False if there was none (unknown, expired or deleted)."""
        existed = await self.get(tenant, response_id) is not None
        await self._remove(tenant, response_id)
        return existed

    async def _remove(self, tenant: str, response_id: str) -> None:
        state_key = self._key(tenant, response_id, "state")
        if self.hot_cache is not None:
            self.hot_cache.discard(state_key)
        await self.store.delete(self._key(tenant, response_id, "object"))
        await self.store.delete(state_key)

    async def _claim_slot(self, tenant: str, response_id: str) -> None:
        counter = keys.response_slot_key(self.namespace, tenant, None)
        number = await self._swap(counter, lambda raw: str(_count(raw) + 1).encode())
        slot = keys.response_slot_key(self.namespace, tenant,
                                      _count(number) % self.max_per_tenant)
        previous = await self._swap(slot, lambda _: response_id.encode())
        if previous is not None and previous.decode(errors="replace") != response_id:
            try:
                await self._remove(tenant, previous.decode())
            except (UnicodeDecodeError, ValueError):
                pass  # not an id this store wrote: nothing to remove

    async def _swap(self, key: str, new: Callable[[bytes | None], bytes]) -> bytes | None:
        """Compare-and-set `key` from its value to new(value); the value it replaced."""
        for _ in range(MAX_CAS_TRIES):
            raw = await self.store.get(key)
            if await self.store.compare_and_set(key, raw, new(raw), ttl=self.ttl):
                return raw
        raise ConflictError(f"{key} kept moving: {MAX_CAS_TRIES} compare-and-set tries lost")

    # reading ---------------------------------------------------------------------------------

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None when unknown, expired, deleted or unreadable."""
        key = self._key(tenant, response_id, "object")
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            stored = _parse(raw, response_id)
        except MalformedRecord as e:
            self.stats.refuse(e.reason)
            return None
        await self._hold_to(key, stored.expires_at)
        return stored if stored.expires_at > self._clock() else None

    async def load_state(self, tenant: str, stored: StoredResponse) -> StateRecord | None:
        """The state record of a stored response (from `get`); None if it is gone. Raises
        (and counts) a RecordError for a record that must not be used."""
        key = self._key(tenant, stored.response_id, "state")
        if self.hot_cache is not None and (record := self.hot_cache.get(key)) is not None:
            return record
        data = await self.store.get(key)
        if data is None:
            return None
        record = await read_record(data, tenant, self.model_fingerprint, self.stats)
        await self._hold_to(key, stored.expires_at)
        if self.hot_cache is not None:
            self.hot_cache.put(key, record)
        return record

    async def _hold_to(self, key: str, expires_at: float) -> None:
        """A read slid the key's expiry to the store's default: put it back to the deadline."""
        if self.store.default_ttl is None:
            return  # reads do not touch expiries
        remaining = expires_at - self._clock()
        if remaining > 0:
            await self.store.expire(key, remaining)
        else:
            await self.store.delete(key)


def _count(raw: bytes | None) -> int:
    try:
        return max(0, int(raw)) if raw else 0
    except ValueError:
        return 0  # a counter that does not parse restarts the ring


def _dump(stored: StoredResponse) -> bytes:
    return json.dumps({"id": stored.response_id, "response": stored.response,
                       "input_items": stored.input_items, "created_at": stored.created_at,
                       "expires_at": stored.expires_at},
                      separators=(",", ":"), ensure_ascii=False).encode()


def _parse(raw: bytes, response_id: str) -> StoredResponse:
    try:
        data = json.loads(raw)
        stored = StoredResponse(data["id"], data["response"], data["input_items"],
                                float(data["created_at"]), float(data["expires_at"]))
    except (ValueError, TypeError, KeyError) as e:
        raise MalformedRecord(f"stored response does not parse: {e}") from e
    if (stored.response_id != response_id or not isinstance(stored.response, dict)
            or not isinstance(stored.input_items, list)
            or not all(math.isfinite(t) for t in (stored.created_at, stored.expires_at))):
        raise MalformedRecord("stored response is not the one asked for")
    return stored
