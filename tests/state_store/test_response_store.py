"""ResponseStore over every backend: a stored response is its state record plus its object,
in its tenant's namespace only; it expires at its deadline even when reads slide the store's
expiry; a tenant never holds more than its cap (the oldest go), also under concurrent saves."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from state_store import FingerprintMismatch, HotCache, encode_record
from state_store.keys import response_key
from state_store.responses import ResponseStore
from tests.state_store.conftest import FINGERPRINT

ALICE, BOB = "alice", "bob"


def responses(store, prefix, **opts) -> ResponseStore:
    opts = {"ttl": 3600.0, "max_per_tenant": 100, **opts}
    return ResponseStore(store, FINGERPRINT, namespace=prefix, **opts)


def response_object(response_id: str, text: str = "hi") -> dict:
    return {"id": response_id, "object": "response", "output": [{"type": "message",
            "content": [{"type": "output_text", "text": text}]}]}


async def save(rs: ResponseStore, tenant: str, response_id: str, record, text: str = "hi"):
    items = [{"id": f"msg_{response_id}", "type": "function_call_output", "call_id": "c1",
              "output": "42"}]
    return await rs.save(tenant, response_id, response_object(response_id, text), items, record)


async def test_a_response_round_trips_with_its_state_and_items(store, prefix, make_record):
    rs = responses(store, prefix)
    record = make_record(64 * 1024, num_tokens=321)
    await save(rs, ALICE, "resp_1", record, "hello")
    reader = responses(store, prefix)  # another replica: nothing cached
    stored = await reader.get(ALICE, "resp_1")
    assert stored.response == response_object("resp_1", "hello")
    assert stored.input_items[0]["type"] == "function_call_output"
    assert stored.expires_at == pytest.approx(stored.created_at + 3600.0)
    state = await reader.load_state(ALICE, stored)
    assert state.body == record.body and state.num_tokens == 321 and state.tenant == ALICE


async def test_another_tenant_cannot_read_or_delete_a_response(store, prefix, make_record):
    rs = responses(store, prefix)
    stored = await save(rs, ALICE, "resp_1", make_record())
    assert await rs.get(BOB, "resp_1") is None
    assert await rs.load_state(BOB, stored) is None
    assert await rs.delete(BOB, "resp_1") is False
    assert await rs.get(ALICE, "resp_1") is not None


async def test_delete_removes_the_object_and_the_state(store, prefix, make_record):
    rs = responses(store, prefix, hot_cache=HotCache(2**20))
    stored = await save(rs, ALICE, "resp_1", make_record())
    assert await rs.delete(ALICE, "resp_1") is True
    assert await rs.get(ALICE, "resp_1") is None
    assert await rs.load_state(ALICE, stored) is None  # not from the hot cache either
    assert await rs.delete(ALICE, "resp_1") is False
    assert not [k for k in await store.list(prefix) if ":r:" in k or ":o:" in k]


async def test_a_tenant_keeps_at_most_its_cap_and_loses_the_oldest_first(store, prefix,
                                                                        make_record):
    rs = responses(store, prefix, max_per_tenant=3)
    for i in range(7):
        await save(rs, ALICE, f"resp_{i}", make_record(seed=i))
    await save(rs, BOB, "resp_bob", make_record())  # another tenant's ring
    kept = [i for i in range(7) if await rs.get(ALICE, f"resp_{i}") is not None]
    assert kept == [4, 5, 6]
    assert await rs.get(BOB, "resp_bob") is not None
    records = [k for k in await store.list(prefix) if ":r:" in k]
    assert len(records) == 4  # alice's three and bob's one: evicted states are gone too


async def test_concurrent_saves_never_exceed_the_cap(store, prefix, make_record):
    rs = responses(store, prefix, max_per_tenant=5)
    await asyncio.gather(*(save(rs, ALICE, f"resp_{i}", make_record(seed=i))
                           for i in range(20)))
    kept = [i for i in range(20) if await rs.get(ALICE, f"resp_{i}") is not None]
    assert len(kept) == 5
    assert len([k for k in await store.list(prefix) if ":r:" in k]) == 5


async def test_a_response_expires_at_its_deadline_whatever_reads_do(backend, open_backend,
                                                                   prefix, make_record):
    # the store slides expiries to a day on every read; the response still ends at 1.5 s
    store = open_backend(backend, default_ttl=86400.0)
    rs = responses(store, prefix, ttl=1.5)
    stored = await save(rs, ALICE, "resp_1", make_record())
    assert await rs.get(ALICE, "resp_1") is not None
    assert await rs.load_state(ALICE, stored) is not None
    time.sleep(1.7)
    assert await rs.get(ALICE, "resp_1") is None
    # the bytes are gone too, not only hidden: the reads above put the expiry back
    assert await store.get(response_key(prefix, ALICE, "resp_1", "state")) is None
    assert await store.get(response_key(prefix, ALICE, "resp_1", "object")) is None


async def test_reads_hold_redis_keys_to_the_deadline(open_backend, prefix, make_record,
                                                     redis_url):
    store = open_backend("redis", default_ttl=86400.0)
    rs = responses(store, prefix, ttl=600.0)
    stored = await save(rs, ALICE, "resp_1", make_record())
    await rs.get(ALICE, "resp_1")
    await rs.load_state(ALICE, stored)
    with redis.Redis.from_url(redis_url) as client:
        for part in ("state", "object"):
            ttl = client.pttl(response_key(prefix, ALICE, "resp_1", part)) / 1000
            assert 590 < ttl <= 600, (part, ttl)


async def test_unreadable_objects_and_refused_states_are_misses(store, prefix, make_record):
    rs = responses(store, prefix)
    await store.put(response_key(prefix, ALICE, "resp_x", "object"), b"{not json")
    assert await rs.get(ALICE, "resp_x") is None
    stored = await save(rs, ALICE, "resp_1", make_record())
    other_model = make_record(fingerprint="0" * 48)
    await store.put(response_key(prefix, ALICE, "resp_1", "state"),
                    encode_record(other_model))
    with pytest.raises(FingerprintMismatch):
        await responses(store, prefix).load_state(ALICE, stored)
    assert store.stats.refused["FingerprintMismatch"] == 1
