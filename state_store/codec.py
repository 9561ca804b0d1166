"""Binary codec of a StateRecord.

Layout (little-endian):
    0  4  magic b"RSST"
    4  2  format version (1)
    6  2  flags (0, reserved)
    8  4  header length H
   12  8  body length B
   20  8  xxh3_64 over bytes [0, 20) + header + body
   28  H  header: compact JSON (fingerprint, dtype, tensors, num_tokens, tenant, timestamps)
 28+H  B  body: the raw tensors, packed in header order

The fixed prefix is checked before anything is parsed; the checksum before the JSON is trusted.
"""

from __future__ import annotations

import json
import struct

import xxhash

from state_store.errors import (
    BadMagic,
    ChecksumMismatch,
    FingerprintMismatch,
    MalformedRecord,
    TruncatedRecord,
    UnknownVersion,
)
from state_store.record import DTYPE_SIZES, StateRecord, expected_body_size

MAGIC = b"RSST"
VERSION = 1
_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, flags, header len, body len
_CHECKSUM = struct.Struct("<Q")
FIXED_SIZE = _PREFIX.size + _CHECKSUM.size  # 28
MAX_HEADER = 1 << 20  # a header is a few hundred bytes; anything near this is garbage


def _checksum(prefix, header, body) -> int:
    h = xxhash.xxh3_64()
    h.update(prefix)
    h.update(header)
    h.update(body)
    return h.intdigest()


def _header_json(rec: StateRecord) -> bytes:
    fields = {
        "model_fingerprint": rec.model_fingerprint,
        "dtype": rec.dtype,
        "tensors": [[name, list(shape)] for name, shape in rec.tensors],
        "num_tokens": rec.num_tokens,
        "tenant": rec.tenant,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def validate(rec: StateRecord) -> None:
    """Refuse to write a record that could never be read back."""
    if not rec.model_fingerprint:
        raise ValueError("model_fingerprint is empty")
    if rec.dtype not in DTYPE_SIZES:
        raise ValueError(f"unknown dtype {rec.dtype!r}")
    if rec.num_tokens < 0 or any(d < 0 for _, s in rec.tensors for d in s):
        raise ValueError("negative num_tokens or dimension")
    want = expected_body_size(rec.dtype, rec.tensors)
    if len(rec.body) != want:
        raise ValueError(f"body is {len(rec.body)} bytes, dtype x shapes say {want}")


def encode_record(rec: StateRecord) -> bytes:
    validate(rec)
    header = _header_json(rec)
    body = memoryview(rec.body).cast("B")
    prefix = _PREFIX.pack(MAGIC, VERSION, 0, len(header), len(body))
    checksum = _CHECKSUM.pack(_checksum(prefix, header, body))
    return b"".join((prefix, checksum, header, body))  # the one copy of the body


def decode_record(data: bytes | memoryview, expected_fingerprint: str | None) -> StateRecord:
    """Parse and verify; raises a RecordError subclass for anything that must not be used."""
    mv = memoryview(data).cast("B")
    if len(mv) < FIXED_SIZE:
        if bytes(mv[:4]) != MAGIC[: len(mv[:4])]:
            raise BadMagic("not a state record")
        raise TruncatedRecord(f"{len(mv)} bytes, shorter than the fixed header")
    magic, version, _flags, header_len, body_len = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise BadMagic("not a state record")
    if version != VERSION:
        raise UnknownVersion(f"format version {version}, this build reads {VERSION}")
    if header_len > MAX_HEADER:
        raise MalformedRecord(f"header length {header_len}")
    end = FIXED_SIZE + header_len + body_len
    if len(mv) < end:
        raise TruncatedRecord(f"{len(mv)} bytes, header promises {end}")
    if len(mv) > end:
        raise MalformedRecord(f"{len(mv) - end} trailing bytes")
    (stored,) = _CHECKSUM.unpack_from(mv, _PREFIX.size)
    header = mv[FIXED_SIZE : FIXED_SIZE + header_len]
    body = mv[FIXED_SIZE + header_len : end]
    if _checksum(mv[: _PREFIX.size], header, body) != stored:
        raise ChecksumMismatch("record bytes changed since they were written")
    try:
        fields = json.loads(bytes(header))
        tensors = tuple((name, tuple(shape)) for name, shape in fields["tensors"])
        fingerprint = fields["model_fingerprint"]
        dtype = fields["dtype"]
    except (ValueError, KeyError, TypeError) as e:
        raise MalformedRecord(f"header does not parse: {e}") from e
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise FingerprintMismatch(f"record for model {fingerprint[:16]}, "
                                  f"expected {expected_fingerprint[:16]}")
    if dtype not in DTYPE_SIZES or expected_body_size(dtype, tensors) != body_len:
        raise MalformedRecord(f"body of {body_len} bytes does not match {dtype} x shapes")
    return StateRecord(
        model_fingerprint=fingerprint,
        dtype=dtype,
        tensors=tensors,
        num_tokens=int(fields["num_tokens"]),
        body=b"".join((body,)),  # = bytes(body), but join drops the GIL for big copies
        tenant=fields.get("tenant", ""),
        created_at=float(fields.get("created_at", 0.0)),
        updated_at=float(fields.get("updated_at", 0.0)),
    )
