"""HotCache: an in-process LRU of decoded records, bounded by bytes.

Only for immutable, content-keyed records: an entry can never go stale, so there is nothing to
invalidate and any replica may keep its own copy. Keys are full store keys (tenant prefix
included), so one tenant's entries are never another's hits.
"""

from __future__ import annotations

from collections import OrderedDict

from state_store.record import StateRecord

_OVERHEAD = 512  # rough bytes per entry besides the body: header fields, dict slot


class HotCache:
    def __init__(self, max_bytes: int = 256 * 2**20, max_item_bytes: int | None = None):
        self.max_bytes = max_bytes
        # one huge record should not flush everything else
        self.max_item_bytes = max_bytes // 4 if max_item_bytes is None else max_item_bytes
        self._items: OrderedDict[str, StateRecord] = OrderedDict()
        self.num_bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _size(rec: StateRecord) -> int:
        return len(rec.body) + _OVERHEAD

    def get(self, key: str) -> StateRecord | None:
        rec = self._items.get(key)
        if rec is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return rec

    def put(self, key: str, rec: StateRecord) -> None:
        size = self._size(rec)
        self.discard(key)
        if size > self.max_item_bytes:
            return
        self._items[key] = rec
        self.num_bytes += size
        while self.num_bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.num_bytes -= self._size(old)
            self.evictions += 1

    def discard(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.num_bytes -= self._size(old)

    def clear(self) -> None:
        self._items.clear()
        self.num_bytes = 0
