"""A state record to and from its stored bytes, as the conversation and response stores do it:
large records on a thread (off the event loop), a record read back checked against the tenant
that asked for it, and every refusal counted."""

from __future__ import annotations

import asyncio

from state_store.codec import decode_record, encode_record
from state_store.errors import RecordError, TenantMismatch
from state_store.record import StateRecord
from state_store.stats import StoreStats

OFFLOAD_BYTES = 4 * 2**20  # records above this are encoded/decoded on a thread


async def record_bytes(record: StateRecord) -> bytes:
    if record.num_bytes > OFFLOAD_BYTES:
        return await asyncio.to_thread(encode_record, record)
    return encode_record(record)


async def read_record(data: bytes, tenant: str, model_fingerprint: str, stats: StoreStats
                      ) -> StateRecord:
    """The record in `data`; raises (and counts) a RecordError for one that must not be used."""
    try:
        if len(data) > OFFLOAD_BYTES:
            record = await asyncio.to_thread(decode_record, data, model_fingerprint)
        else:
            record = decode_record(data, model_fingerprint)
        if record.tenant != tenant:
            raise TenantMismatch("record was written for another tenant")
    except RecordError as e:
        stats.refuse(e.reason)
        raise
    return record
