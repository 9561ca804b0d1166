"""The record codec: what goes in comes out, and anything damaged is refused with its own error."""

import struct

import pytest

from state_store import (
    BadMagic,
    ChecksumMismatch,
    FingerprintMismatch,
    MalformedRecord,
    StateRecord,
    TruncatedRecord,
    UnknownVersion,
    decode_record,
    encode_record,
)
from state_store.codec import FIXED_SIZE

FP = "ab" * 16


def record(**overrides) -> StateRecord:
    fields = dict(model_fingerprint=FP, dtype="bfloat16",
                  tensors=[("l0.S", (2, 4, 8)), ("l0.scale", (2,))], num_tokens=123,
                  body=bytes(range(256))[: (64 + 2) * 2] * 1, tenant="acme",
                  created_at=1700000000.5, updated_at=1700000001.25)
    fields.update(overrides)
    return StateRecord(**fields)


def test_round_trip_keeps_every_field():
    rec = record()
    back = decode_record(encode_record(rec), FP)
    assert back == rec
    assert back.tensors == (("l0.S", (2, 4, 8)), ("l0.scale", (2,)))


def test_decode_accepts_a_memoryview_and_no_expected_fingerprint():
    rec = record()
    assert decode_record(memoryview(encode_record(rec)), None) == rec


@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("float16", 2), ("bfloat16", 2),
                                            ("int8", 1), ("float64", 8)])
def test_body_length_must_match_dtype_times_shapes(dtype, itemsize):
    ok = record(dtype=dtype, tensors=[("s", (3, 5))], body=bytes(15 * itemsize))
    assert decode_record(encode_record(ok), FP).dtype == dtype
    with pytest.raises(ValueError, match="dtype x shapes"):
        encode_record(record(dtype=dtype, tensors=[("s", (3, 5))], body=bytes(15 * itemsize + 1)))


def test_unknown_dtype_and_empty_fingerprint_are_not_written():
    with pytest.raises(ValueError, match="dtype"):
        encode_record(record(dtype="complex64"))
    with pytest.raises(ValueError, match="fingerprint"):
        encode_record(record(model_fingerprint=""))


def test_every_single_flipped_byte_is_refused():
    data = encode_record(record())
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x01
        with pytest.raises((BadMagic, UnknownVersion, ChecksumMismatch, TruncatedRecord,
                            MalformedRecord)):
            decode_record(bytes(damaged), FP)


def test_flipped_body_byte_is_a_checksum_mismatch():
    data = bytearray(encode_record(record()))
    data[-1] ^= 0x80
    with pytest.raises(ChecksumMismatch):
        decode_record(bytes(data), FP)


def test_flipped_header_byte_is_a_checksum_mismatch():
    data = bytearray(encode_record(record()))
    data[FIXED_SIZE + 5] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        decode_record(bytes(data), FP)


@pytest.mark.parametrize("keep", [0, 3, FIXED_SIZE - 1, FIXED_SIZE + 10, -1])
def test_truncated_record_is_refused(keep):
    data = encode_record(record())
    with pytest.raises(TruncatedRecord):
        decode_record(data[:keep], FP)


def test_trailing_bytes_are_refused():
    with pytest.raises(MalformedRecord):
        decode_record(encode_record(record()) + b"\0", FP)


def test_wrong_fingerprint_is_refused():
    with pytest.raises(FingerprintMismatch):
        decode_record(encode_record(record()), "cd" * 16)


def test_not_a_record_is_bad_magic():
    with pytest.raises(BadMagic):
        decode_record(b"GIF89a" + bytes(100), FP)


def test_newer_format_version_is_unknown():
    data = bytearray(encode_record(record()))
    struct.pack_into("<H", data, 4, 2)
    with pytest.raises(UnknownVersion):
        decode_record(bytes(data), FP)


def test_record_is_immutable_and_hashable():
    rec = record()
    with pytest.raises(AttributeError):
        rec.num_tokens = 1  # type: ignore[misc]
    assert hash(rec) == hash(record())
