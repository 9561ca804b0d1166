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

The fixed prefix is checked before anything is parsed; the checksum before the JSON is read; the
JSON against record.check_header before any field is used. Whatever a stored record holds, decoding
returns a record or raises a RecordError.
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
from state_store.record import StateRecord, check_header, expected_body_size, header_fields

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
    return json.dumps(header_fields(rec), separators=(",", ":"), ensure_ascii=False).encode()


def validate(rec: StateRecord) -> None:
    """Refuse to write a record that could never be read back: decode's checks, as ValueError."""
    try:
        fields = check_header(header_fields(rec))
    except MalformedRecord as e:
        raise ValueError(str(e)) from None
    want = expected_body_size(fields["dtype"], fields["tensors"])
    if len(rec.body) != want:
        raise ValueError(f"body is {len(rec.body)} bytes, dtype x shapes say {want}")


def encode_record(rec: StateRecord) -> bytes:
    validate(rec)
    header = _header_json(rec)
    if len(header) > MAX_HEADER:
        raise ValueError(f"header of {len(header)} bytes, readers refuse above {MAX_HEADER}")
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
    magic, version, flags, header_len, body_len = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise BadMagic("not a state record")
    if version != VERSION:
        raise UnknownVersion(f"format version {version}, this build reads {VERSION}")
    if flags:  # reserved: a writer that sets one means something this build cannot know
        raise UnknownVersion(f"flags {flags:#06x}, this build knows none")
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
        # UTF-8 only (json.loads would guess UTF-16/32 from bytes); a key given twice refused, so
        # a header cannot mean one thing here and another to a different parser
        parsed = _HEADER_DECODER.decode(str(header, "utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, nesting past the stack
        raise MalformedRecord(f"header does not parse: {e}") from e
    fields = check_header(parsed)
    fingerprint = fields["model_fingerprint"]
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise FingerprintMismatch(f"record for model {fingerprint[:16]}, "
                                  f"expected {expected_fingerprint[:16]}")
    if expected_body_size(fields["dtype"], fields["tensors"]) != body_len:
        raise MalformedRecord(f"body of {body_len} bytes does not match {fields['dtype']} x shapes")
    # = bytes(body), but join drops the GIL for big copies
    return StateRecord(body=b"".join((body,)), **fields)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise ValueError("a key appears twice")
    return fields


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # json.loads would read NaN/Infinity as floats


# built once: json.loads with hooks builds a decoder per call
_HEADER_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
