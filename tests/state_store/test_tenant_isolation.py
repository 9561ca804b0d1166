"""Tenant A can neither read, list, fork, overwrite nor time-probe tenant B's states."""

import statistics
import time

import pytest

from state_store import ConversationStore, HotCache, StateStore
from state_store.keys import tenant_prefix

A, B = "tenant-a", "tenant-b"


class RecordingStore(StateStore):
    """A real store with a log of (op, key, outcome) of every call that reached it."""

    def __init__(self, inner: StateStore):
        super().__init__(stats=inner.stats)
        self.inner, self.backend, self.log = inner, inner.backend, []

    async def _get(self, key):
        value = await self.inner.get(key)
        self.log.append(("get", key, value is not None))
        return value

    async def _put(self, key, value, ttl):
        self.log.append(("put", key, True))
        await self.inner.put(key, value, ttl=ttl)

    async def _delete(self, key):
        existed = await self.inner.delete(key)
        self.log.append(("delete", key, existed))
        return existed

    async def _compare_and_set(self, key, expected, new, ttl):
        swapped = await self.inner.compare_and_set(key, expected, new, ttl=ttl)
        self.log.append(("cas", key, swapped))
        return swapped

    async def _expire(self, key, ttl):
        existed = await self.inner.expire(key, ttl)
        self.log.append(("expire", key, existed))
        return existed

    async def _list(self, prefix):
        keys = await self.inner.list(prefix)
        self.log.append(("list", prefix, bool(keys)))
        return keys

    async def _close(self):
        pass


@pytest.fixture
def shared(store, prefix):
    """One ConversationStore (one hot cache) serving both tenants, as a server replica does."""
    recording = RecordingStore(store)
    return recording, ConversationStore(recording, "fp" * 16, hot_cache=HotCache(),
                                         namespace=prefix)


async def _b_has_a_conversation(conv, make_record, make_chat):
    msgs = make_chat(2)
    cid = await conv.save(B, msgs[:5], make_record(fingerprint="fp" * 16))
    await conv.set_session(B, "s1", cid, None)
    return msgs, cid


async def test_a_cannot_read_list_fork_or_move_b_states(shared, make_record, make_chat):
    recording, conv = shared
    msgs, cid = await _b_has_a_conversation(conv, make_record, make_chat)
    assert await conv.lookup(A, msgs) is None
    assert await conv.load(A, cid) is None
    assert await conv.get_session(A, "s1") is None
    assert await conv.list_sessions(A) == []
    with pytest.raises(LookupError):
        await conv.fork_session(A, "s1", "mine")
    with pytest.raises(LookupError):
        await conv.set_session(A, "s1", cid, None)  # B's content key means nothing under A
    assert await conv.delete_session(A, "s1") is False
    # and B is untouched
    assert (await conv.get_session(B, "s1")).content_key == cid
    assert (await conv.lookup(B, msgs))[0] == 5


async def test_every_key_a_touches_is_under_a_prefix(shared, make_record, make_chat):
    recording, conv = shared
    msgs, cid = await _b_has_a_conversation(conv, make_record, make_chat)
    recording.log.clear()
    await conv.lookup(A, msgs)
    await conv.load(A, cid)
    await conv.get_session(A, "s1")
    await conv.list_sessions(A)
    await conv.delete_session(A, "s1")
    with pytest.raises(LookupError):
        await conv.fork_session(A, "s1", "mine")
    a_prefix, b_prefix = tenant_prefix(conv.namespace, A), tenant_prefix(conv.namespace, B)
    assert recording.log and all(key.startswith(a_prefix) for _, key, _ in recording.log)
    assert not a_prefix.startswith(b_prefix) and not b_prefix.startswith(a_prefix)


async def test_probing_b_content_looks_exactly_like_probing_nothing(backend, shared,
                                                                    make_record, make_chat):
    recording, conv = shared
    msgs, _ = await _b_has_a_conversation(conv, make_record, make_chat)  # now hot in the cache
    never_stored = make_chat(2)
    never_stored[1]["content"] = "something nobody said"

    async def probe(messages):
        recording.log.clear()
        t0 = time.perf_counter()
        assert await conv.lookup(A, messages) is None
        return time.perf_counter() - t0, [(op, hit) for op, _, hit in recording.log]

    _, trace_b = await probe(msgs)
    _, trace_none = await probe(never_stored)
    # same backend operations with the same outcomes: nothing depends on B's data
    assert trace_b == trace_none == [("get", False), ("get", False)]
    if backend == "sqlite":
        return  # thread hand-offs make sqlite timings too noisy to compare in a unit test
    times_b, times_none = [], []
    for _ in range(100):  # interleaved, so drift hits both alike
        times_b.append((await probe(msgs))[0])
        times_none.append((await probe(never_stored))[0])
    ratio = statistics.median(times_b) / statistics.median(times_none)
    assert 0.5 < ratio < 2.0, ratio


def test_tenant_prefixes_do_not_collide_on_separators():
    names = ["a", "a:", "a:b", "b", "a\0", "ä", "A"]
    prefixes = {tenant_prefix("rs", n) for n in names}
    assert len(prefixes) == len(names)
    with pytest.raises(ValueError):
        tenant_prefix("rs", "")
