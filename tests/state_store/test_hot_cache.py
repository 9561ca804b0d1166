"""HotCache: a byte-bounded LRU."""

from state_store import HotCache


def test_lru_evicts_least_recently_used_within_the_byte_bound(make_record):
    cache = HotCache(max_bytes=3 * (4096 + 512), max_item_bytes=10**6)
    for name in "abc":
        cache.put(name, make_record(4096))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", make_record(4096))
    assert cache.get("b") is None and cache.evictions == 1
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    assert cache.num_bytes <= cache.max_bytes and len(cache) == 3


def test_oversized_records_are_not_cached(make_record):
    cache = HotCache(max_bytes=64 * 1024)  # items up to a quarter of it
    cache.put("big", make_record(32 * 1024))
    cache.put("small", make_record(1024))
    assert cache.get("big") is None and cache.get("small") is not None


def test_replacing_and_discarding_keep_the_byte_count(make_record):
    cache = HotCache(max_bytes=10**6)
    cache.put("k", make_record(4096))
    cache.put("k", make_record(8192))
    assert cache.num_bytes == 8192 + 512
    cache.discard("k")
    cache.discard("k")
    assert cache.num_bytes == 0 and len(cache) == 0
    assert (cache.hits, cache.misses) == (0, 0)
