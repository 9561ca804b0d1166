"""open_store: URL to backend, options, and the embedded store surviving a restart."""

import sqlite3

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from state_store import ConversationStore, open_store
from state_store.memory_store import MemoryStore
from state_store.redis_io import ChunkedWrites
from state_store.redis_store import RedisStore
from state_store.sqlite_store import SqliteStore


async def test_urls_pick_backends(tmp_path):
    stores = [open_store("memory://"), open_store(f"sqlite:///{tmp_path}/a.db"),
              open_store("redis://127.0.0.1:6379/0"),
              open_store("rediss+cluster://user:pw@127.0.0.1:7000,127.0.0.2")]
    try:
        assert [type(s) for s in stores[:4]] == [MemoryStore, SqliteStore, RedisStore, RedisStore]
        # large writes go through the chunked connection class, TLS or not
        pool = stores[2].client.connection_pool
        assert issubclass(pool.connection_class, ChunkedWrites)
        tls = open_store("rediss://127.0.0.1:6390/0")
        stores.append(tls)
        assert issubclass(tls.client.connection_pool.connection_class, SSLConnection)
        assert issubclass(tls.client.connection_pool.connection_class, ChunkedWrites)
        cluster = stores[3].client
        assert isinstance(cluster, RedisCluster)
        assert sorted(cluster.nodes_manager.startup_nodes) == ["127.0.0.1:7000", "127.0.0.2:6379"]
    finally:
        for s in stores:
            await s.close()


def test_bad_urls_and_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scheme"):
        open_store("postgres://db/x")
    with pytest.raises(ValueError, match="sqlite"):
        open_store("sqlite://relative.db")
    with pytest.raises(ValueError, match="service"):
        open_store("redis+sentinel://127.0.0.1:26379")
    with pytest.raises(TypeError):
        open_store("memory://", no_such_option=1)


async def test_options_of_other_backends_are_ignored(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/o.db", part_size=1 << 20, timeout=0.5,
                       default_ttl=30)
    assert store.default_ttl == 30
    await store.close()


async def test_sqlite_file_survives_a_restart(tmp_path, make_record, make_chat):
    url = f"sqlite:///{tmp_path}/nested/dir/state.db"
    store = open_store(url)
    conv = ConversationStore(store, make_record().model_fingerprint)
    msgs = make_chat(1)
    cid = await conv.save("t", msgs[:3], make_record(1 << 20, seed=3))
    await conv.set_session("t", "s", cid, None)
    await store.close()

    with sqlite3.connect(tmp_path / "nested/dir/state.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store = open_store(url)
    conv = ConversationStore(store, make_record().model_fingerprint)
    try:
        num_matched, rec = await conv.lookup("t", msgs)
        assert num_matched == 3 and rec.body == make_record(1 << 20, seed=3).body
        assert (await conv.get_session("t", "s")).content_key == cid
    finally:
        await store.close()


async def test_two_sqlite_stores_on_one_file_share_cas(tmp_path):
    """Two server processes on one file: BEGIN IMMEDIATE keeps their swaps exclusive."""
    url = f"sqlite:///{tmp_path}/shared.db"
    one, two = open_store(url), open_store(url)
    try:
        assert await one.compare_and_set("p", None, b"1")
        assert not await two.compare_and_set("p", None, b"2")
        assert await two.compare_and_set("p", b"1", b"2")
        assert await one.get("p") == b"2"
    finally:
        await one.close()
        await two.close()
