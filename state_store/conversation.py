"""ConversationStore: conversation prefixes -> state records, and session pointers.

What the chat service uses. A record is saved under the content key of the messages up to and
including an assistant reply; a later request finds the longest such prefix of its messages.
Session ids are mutable pointers to content keys, moved only by compare-and-set.
Everything is addressed through (tenant, ...): see keys.py for why that isolates tenants.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace

from state_store import keys
from state_store.base import StateStore
from state_store.errors import ConflictError, MalformedRecord, RecordError
from state_store.hot_cache import HotCache
from state_store.record import StateRecord
from state_store.record_io import read_record, record_bytes

Messages = Sequence[Mapping]
# encoding/decoding a record costs ~1 ms per 20 MB of copying and hashing, all GIL-free: above
# this size it runs on a thread so the event loop keeps streaming tokens meanwhile


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    content_key: str
    num_tokens: int
    num_bytes: int
    updated_at: float  # unix seconds


class ConversationStore:
    def __init__(self, store: StateStore, model_fingerprint: str, *,
                 hot_cache: HotCache | None = None, namespace: str = keys.DEFAULT_NAMESPACE,
                 ttl: float | None = None, max_lookup_probes: int = 32,
                 clock: Callable[[], float] = time.time):
        """`ttl`: expiry of records and pointers (None: the store's default_ttl).
        `max_lookup_probes`: how many assistant turns, newest first, a lookup tries."""
        self.store = store
        self.stats = store.stats
        self.model_fingerprint = model_fingerprint
        self.hot_cache = hot_cache
        self.namespace = namespace
        self.ttl = ttl
        self.max_lookup_probes = max_lookup_probes
        self._clock = clock

    # records

    async def save(self, tenant: str, messages: Messages, record: StateRecord,
                   base_key: str | None = None) -> str:
        """Store the state after `messages` (which end with an assistant reply, and follow the
        conversation named by `base_key` when given); its content key."""
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a state is saved after an assistant reply: last role must be it")
        if record.model_fingerprint != self.model_fingerprint:
            raise ValueError("record is for another model than this store's")
        content_key = self.content_keys(tenant, messages, base_key)[-1]
        now = self._clock()
        record = replace(record, tenant=tenant, created_at=record.created_at or now,
                         updated_at=now)
        key = keys.record_key(self.namespace, tenant, content_key)
        data = await record_bytes(record)
        await self.store.put(key, data, ttl=self.ttl)
        if self.hot_cache is not None:
            self.hot_cache.put(key, record)
        return content_key

    def content_keys(self, tenant: str, messages: Messages, base_key: str | None = None
                     ) -> list[str]:
        """keys.content_keys for this store's model: the key of every prefix of `messages`."""
        return keys.content_keys(tenant, self.model_fingerprint, messages, base_key)

    async def expire(self, tenant: str, content_key: str, ttl: float) -> bool:
        """Set a record's expiry to now + ttl (shorter or longer)."""
        return await self.store.expire(keys.record_key(self.namespace, tenant, content_key), ttl)

    async def retire(self, tenant: str, content_key: str, grace: float) -> bool:
        """A turn extended this state: cut its expiry to `grace` (time to regenerate the last
        reply), so a conversation at rest holds one or two records whatever its length; unless
        a forked session shares it (a pin). True if cut."""
        if await self.store.get(keys.pin_key(self.namespace, tenant, content_key)) is not None:
            return False
        if self.hot_cache is not None:  # nor here: the cache holds what conversations continue
            self.hot_cache.discard(keys.record_key(self.namespace, tenant, content_key))
        return await self.expire(tenant, content_key, grace)

    async def load(self, tenant: str, content_key: str) -> StateRecord | None:
        """The record or None; raises (and counts) a RecordError for one that must not be used."""
        key = keys.record_key(self.namespace, tenant, content_key)
        if self.hot_cache is not None and (rec := self.hot_cache.get(key)) is not None:
            return rec
        data = await self.store.get(key)
        if data is None:
            return None
        rec = await read_record(data, tenant, self.model_fingerprint, self.stats)
        if self.hot_cache is not None:
            self.hot_cache.put(key, rec)
        return rec

    async def lookup(self, tenant: str, messages: Messages,
                     prefix_keys: list[str] | None = None) -> tuple[int, StateRecord] | None:
        """(number of messages covered, record) for the longest stored prefix of `messages`
        that ends at an assistant message; None on a miss. Refused records count as misses.
        `prefix_keys`: the messages' content_keys, when the caller has them already."""
        if prefix_keys is None:
            prefix_keys = keys.content_keys(tenant, self.model_fingerprint, messages)
        ends = itertools.islice((i for i in range(len(messages) - 1, -1, -1)
                                 if messages[i].get("role") == "assistant"),
                                self.max_lookup_probes)  # lazily: the latest few only
        with self.stats.timed(self.store.backend, "lookup") as t:
            t.outcome = "miss"
            for i in ends:
                try:
                    rec = await self.load(tenant, prefix_keys[i])
                except RecordError:
                    continue  # counted in load; a shorter prefix may still be good
                if rec is not None:
                    t.outcome = "hit"
                    return i + 1, rec
            return None

    # session pointers

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo | None:
        raw = await self.store.get(keys.session_key(self.namespace, tenant, session_id))
        return self._parse(raw)

    async def set_session(self, tenant: str, session_id: str, content_key: str,
                          expected_previous: str | None, *,
                          record: StateRecord | None = None) -> SessionInfo:
        """Point the session at `content_key` if it still points at `expected_previous` (None:
        the session must not exist); ConflictError otherwise. `record`, if the caller has it,
        saves reading the record back for its size and token count."""
        key = keys.session_key(self.namespace, tenant, session_id)
        raw = await self.store.get(key)
        current = self._parse(raw)
        if (current.content_key if current else None) != expected_previous:
            raise ConflictError(f"session {session_id!r} moved since it was read")
        if record is None:
            record = await self.load(tenant, content_key)
            if record is None:
                raise LookupError(f"no state stored under content key {content_key}")
        info = SessionInfo(session_id, content_key, record.num_tokens, record.num_bytes,
                           self._clock())
        # the swap compares the exact bytes read above, so any move in between is caught
        if not await self.store.compare_and_set(key, raw, _dump(info), ttl=self.ttl):
            raise ConflictError(f"session {session_id!r} moved since it was read")
        return info

    async def fork_session(self, tenant: str, src_session_id: str,
                           new_session_id: str) -> SessionInfo:
        """A new session pointing at src's state: O(1), records are shared (immutable)."""
        src = await self.get_session(tenant, src_session_id)
        if src is None:
            raise LookupError(f"no session {src_session_id!r}")
        info = replace(src, session_id=new_session_id, updated_at=self._clock())
        key = keys.session_key(self.namespace, tenant, new_session_id)
        if not await self.store.compare_and_set(key, None, _dump(info), ttl=self.ttl):
            raise ConflictError(f"session {new_session_id!r} already exists")
        # both sessions continue from this record: neither may cut it short (see retire)
        pin = keys.pin_key(self.namespace, tenant, src.content_key)
        if not await self.store.compare_and_set(pin, None, b"1", ttl=self.ttl):
            await self.store.expire(pin, self.ttl or self.store.default_ttl or 86400.0)
        return info

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        return await self.store.delete(keys.session_key(self.namespace, tenant, session_id))

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        """The tenant's sessions, most recently updated first."""
        found = await self.store.list(keys.session_prefix(self.namespace, tenant))
        raws = await asyncio.gather(*(self.store.get(k) for k in found))
        infos = [info for raw in raws if (info := self._parse(raw)) is not None]
        return sorted(infos, key=lambda s: s.updated_at, reverse=True)

    def _parse(self, raw: bytes | None) -> SessionInfo | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            # fields a newer build may add are ignored; missing ones make the pointer malformed
            return SessionInfo(**{name: data[name] for name in _SESSION_FIELDS})
        except (ValueError, TypeError, KeyError) as e:
            self.stats.refuse(MalformedRecord.__name__)
            raise MalformedRecord(f"session pointer does not parse: {e}") from e


_SESSION_FIELDS = [f.name for f in fields(SessionInfo)]


def _dump(info: SessionInfo) -> bytes:
    return json.dumps(asdict(info), separators=(",", ":")).encode()
