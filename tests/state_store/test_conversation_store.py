"""ConversationStore: longest-prefix lookup, refused records, session pointers under contention."""

import asyncio

import pytest

from state_store import (
    ChecksumMismatch,
    ConflictError,
    ConversationStore,
    FingerprintMismatch,
    TruncatedRecord,
    encode_record,
)
from state_store.keys import record_key

T = "tenant-a"


@pytest.mark.parametrize("size", [1024, 64 * 1024, 2**20, 9 * 2**20, 64 * 2**20],
                         ids=["1K", "64K", "1M", "9M", "64M"])
async def test_records_round_trip_through_the_backend(store, prefix, make_chat, make_record,
                                                      size):
    rec = make_record(size, num_tokens=4321)
    writer = ConversationStore(store, rec.model_fingerprint, namespace=prefix)  # no hot cache
    content_key = await writer.save(T, make_chat(1)[:3], rec)
    reader = ConversationStore(store, rec.model_fingerprint, namespace=prefix)
    back = await reader.load(T, content_key)
    assert back.body == rec.body
    assert (back.dtype, back.tensors, back.num_tokens, back.tenant) == (
        rec.dtype, rec.tensors, 4321, T)
    assert back.created_at > 0


async def test_lookup_finds_the_longest_saved_prefix(make_chat, conversations, make_record):
    msgs = make_chat(3)  # system, (user, assistant) x 3, user
    await conversations.save(T, msgs[:3], make_record(seed=1))
    await conversations.save(T, msgs[:5], make_record(seed=2))
    found = await conversations.lookup(T, msgs)
    assert found is not None
    num_matched, rec = found
    assert num_matched == 5 and rec.body == make_record(seed=2).body and rec.tenant == T
    assert (await conversations.lookup(T, msgs[:4]))[0] == 3
    assert await conversations.lookup(T, msgs[:2]) is None


async def test_a_conversation_known_by_its_key_extends_without_its_text(
        make_chat, conversations, make_record):
    """A session holds only a content key: saving its next turn under (key, new messages) gives
    the key a client resending the whole history finds."""
    msgs = make_chat(2, last_user=False)
    first_key = await conversations.save(T, msgs[:3], make_record(seed=1))
    second_key = await conversations.save(T, msgs[3:], make_record(seed=2), base_key=first_key)
    assert second_key == conversations.content_keys(T, msgs)[-1]
    num_matched, rec = await conversations.lookup(T, msgs + [{"role": "user", "content": "x"}])
    assert num_matched == 5 and rec.body == make_record(seed=2).body
    with pytest.raises(ValueError):
        conversations.content_keys(T, msgs, base_key="not-a-key")


async def test_expire_cuts_a_parent_to_a_grace_period(make_chat, conversations, make_record):
    msgs = make_chat(2, last_user=False)
    parent = await conversations.save(T, msgs[:3], make_record(seed=1))
    await conversations.save(T, msgs, make_record(seed=2))
    conversations.hot_cache.clear()  # the store's own expiry is under test
    assert await conversations.expire(T, parent, 0.2)
    await asyncio.sleep(0.35)
    assert await conversations.load(T, parent) is None
    assert (await conversations.lookup(T, msgs))[0] == 5


async def test_retire_spares_a_state_a_fork_shares(make_chat, conversations, make_record):
    msgs = make_chat(2, last_user=False)
    shared = await conversations.save(T, msgs[:3], make_record(seed=1))
    alone = await conversations.save(T, msgs, make_record(seed=2))
    await conversations.set_session(T, "a", shared, None)
    await conversations.fork_session(T, "a", "b")
    assert await conversations.retire(T, shared, 0.2) is False  # pinned by the fork
    assert len(conversations.hot_cache) == 2
    assert await conversations.retire(T, alone, 0.2) is True
    assert len(conversations.hot_cache) == 1  # a retired state leaves the cache at once
    conversations.hot_cache.clear()
    await asyncio.sleep(0.35)
    assert await conversations.load(T, shared) is not None
    assert await conversations.load(T, alone) is None


async def test_lookup_considers_only_prefixes_ending_at_an_assistant_reply(
        make_chat, conversations, make_record):
    msgs = make_chat(1, last_user=False)
    with pytest.raises(ValueError):
        await conversations.save(T, msgs[:2], make_record())  # ends with a user message
    await conversations.save(T, msgs, make_record())
    assert (await conversations.lookup(T, msgs))[0] == 3  # the whole list counts too


async def test_an_edited_history_misses(make_chat, conversations, make_record):
    msgs = make_chat(2)
    await conversations.save(T, msgs[:5], make_record())
    edited = [dict(m) for m in msgs]
    edited[1]["content"] = "q0, edited"
    assert await conversations.lookup(T, edited) is None


async def test_null_fields_and_key_order_do_not_change_the_key(make_chat, conversations,
                                                               make_record):
    msgs = make_chat(1)
    await conversations.save(T, msgs[:3], make_record())
    variant = [{"content": m["content"], "role": m["role"], "name": None} for m in msgs]
    assert (await conversations.lookup(T, variant))[0] == 3


async def test_other_model_never_sees_the_state(make_chat, store, conversations, make_record,
                                                prefix):
    msgs = make_chat(1)
    await conversations.save(T, msgs[:3], make_record())
    other = ConversationStore(store, "0" * 64, namespace=prefix)
    assert await other.lookup(T, msgs) is None


async def test_save_refuses_a_record_of_another_model(make_chat, conversations, make_record):
    with pytest.raises(ValueError):
        await conversations.save(T, make_chat(1)[:3], make_record(fingerprint="99" * 8))


async def test_hot_cache_serves_repeated_loads(make_chat, conversations, make_record):
    msgs = make_chat(1)
    cid = await conversations.save(T, msgs[:3], make_record())
    gets = conversations.stats.count(op="get")
    for _ in range(3):
        assert (await conversations.load(T, cid)).num_tokens == 7
    assert conversations.stats.count(op="get") == gets  # never went to the backend
    assert conversations.hot_cache.hits == 3


def _damage(kind: str, data: bytes, make_record) -> bytes:
    if kind == "flip":
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 0x10
        return bytes(damaged)
    if kind == "truncate":
        return data[: len(data) - 100]
    return encode_record(make_record(fingerprint="77" * 8))  # a valid record of another model


@pytest.mark.parametrize("kind,error", [("flip", ChecksumMismatch), ("truncate", TruncatedRecord),
                                        ("fingerprint", FingerprintMismatch)])
async def test_damaged_records_are_refused_and_counted(make_chat, store, prefix, conversations,
                                                       make_record, kind, error):
    msgs = make_chat(2)
    cid_short = await conversations.save(T, msgs[:3], make_record(seed=1))
    cid_long = await conversations.save(T, msgs[:5], make_record(64 * 1024 + 8, seed=2))
    key = record_key(prefix, T, cid_long)
    await store.put(key, _damage(kind, await store.get(key), make_record))
    cold = ConversationStore(store, conversations.model_fingerprint, namespace=prefix)
    with pytest.raises(error):
        await cold.load(T, cid_long)
    assert store.stats.refused[error.__name__] == 1
    # lookup never feeds the damaged state: it falls back to the shorter good prefix
    num_matched, rec = await cold.lookup(T, msgs)
    assert num_matched == 3 and rec.body == make_record(seed=1).body
    assert store.stats.refused[error.__name__] == 2
    assert (await cold.load(T, cid_short)) is not None


async def test_session_pointer_lifecycle(make_chat, conversations, make_record):
    msgs = make_chat(2)
    first = await conversations.save(T, msgs[:3], make_record(num_tokens=10))
    second = await conversations.save(T, msgs[:5], make_record(8192, num_tokens=20))
    assert await conversations.get_session(T, "s1") is None
    info = await conversations.set_session(T, "s1", first, None)
    assert (info.content_key, info.num_tokens, info.num_bytes) == (first, 10, 4096)
    with pytest.raises(ConflictError):
        await conversations.set_session(T, "s1", second, None)  # it exists now
    with pytest.raises(ConflictError):
        await conversations.set_session(T, "s1", second, second)  # it points elsewhere
    await conversations.set_session(T, "s1", second, first)
    assert (await conversations.get_session(T, "s1")).content_key == second
    with pytest.raises(LookupError):
        await conversations.set_session(T, "s2", "ab" * 16, None)  # no such state


async def test_fork_shares_the_state_without_copying(make_chat, conversations, make_record):
    cid = await conversations.save(T, make_chat(1)[:3], make_record(num_tokens=5))
    await conversations.set_session(T, "main", cid, None)
    puts = conversations.stats.count(op="put")
    forked = await conversations.fork_session(T, "main", "branch")
    assert conversations.stats.count(op="put") == puts  # only pointers were written (by CAS)
    assert forked.content_key == cid and forked.session_id == "branch"
    with pytest.raises(ConflictError):
        await conversations.fork_session(T, "main", "branch")
    with pytest.raises(LookupError):
        await conversations.fork_session(T, "nope", "other")
    assert await conversations.delete_session(T, "main") is True
    assert await conversations.delete_session(T, "main") is False
    assert (await conversations.get_session(T, "branch")).content_key == cid


async def test_list_sessions_reports_metadata(make_chat, conversations, make_record):
    small = await conversations.save(T, make_chat(1)[:3], make_record(4096, num_tokens=3))
    large = await conversations.save(T, make_chat(2)[:5], make_record(8192, num_tokens=9))
    await conversations.set_session(T, "old", small, None)
    await asyncio.sleep(0.01)
    await conversations.set_session(T, "new", large, None)
    listed = await conversations.list_sessions(T)
    assert [(s.session_id, s.num_tokens, s.num_bytes) for s in listed] == [
        ("new", 9, 8192), ("old", 3, 4096)]
    assert listed[0].updated_at >= listed[1].updated_at > 0


async def test_100_concurrent_writers_lose_no_update(conversations, make_record):
    """Each writer reads the pointer and swaps in its own id, retrying on conflict. CAS means
    every successful swap replaced a distinct value: the swaps form one chain through all 100."""
    rec = make_record()
    replaced: dict[str | None, str] = {}
    num_conflicts = 0

    async def writer(i: int) -> None:
        nonlocal num_conflicts
        mine = f"{i:032x}"
        while True:
            current = await conversations.get_session(T, "shared")
            previous = current.content_key if current else None
            await asyncio.sleep(0)  # let the others read too (the memory store never yields)
            try:
                await conversations.set_session(T, "shared", mine, previous, record=rec)
            except ConflictError:
                num_conflicts += 1
                continue
            assert previous not in replaced, "two writers replaced the same value: lost update"
            replaced[previous] = mine
            return

    await asyncio.gather(*(writer(i) for i in range(100)))
    chain, value = [], None
    while value in replaced:
        value = replaced[value]
        chain.append(value)
    assert sorted(chain) == sorted(f"{i:032x}" for i in range(100))
    final = await conversations.get_session(T, "shared")
    assert final.content_key == chain[-1] and final.num_tokens == rec.num_tokens
    assert num_conflicts > 0  # they really did race
