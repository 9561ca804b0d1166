"""State store: persists each conversation's retention state between turns (torch-free).

    store = open_store("redis://127.0.0.1:6379/0", default_ttl=86400)
    conversations = ConversationStore(store, model_fingerprint, hot_cache=HotCache())
"""

from state_store.base import StateStore
from state_store.codec import decode_record, encode_record
from state_store.conversation import ConversationStore, SessionInfo
from state_store.errors import (
    BadMagic,
    ChecksumMismatch,
    ConflictError,
    FingerprintMismatch,
    MalformedRecord,
    RecordError,
    StateStoreError,
    StoreUnavailable,
    TenantMismatch,
    TruncatedRecord,
    UnknownVersion,
)
from state_store.factory import open_store
from state_store.hot_cache import HotCache
from state_store.record import StateRecord
from state_store.stats import StoreStats

__all__ = [
    "BadMagic", "ChecksumMismatch", "ConflictError", "ConversationStore", "FingerprintMismatch",
    "HotCache", "MalformedRecord", "RecordError", "SessionInfo", "StateRecord", "StateStore",
    "StateStoreError", "StoreStats", "StoreUnavailable", "TenantMismatch", "TruncatedRecord",
    "UnknownVersion", "decode_record", "encode_record", "open_store",
]
