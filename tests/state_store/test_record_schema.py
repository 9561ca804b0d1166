"""A record whose checksum holds is still checked field by field: a valid xxh3 proves the bytes
did not change, not that their writer was honest. Whatever a stored record holds, decode_record
returns a record that encode_record writes back identically, or raises a RecordError.

Records here are built byte by byte after the layout in codec.py's docstring, so a forged header
carries a correct checksum.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import xxhash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from state_store import (
    MalformedRecord,
    RecordError,
    StateRecord,
    UnknownVersion,
    decode_record,
    encode_record,
)
from state_store.codec import MAX_HEADER
from state_store.record import DTYPE_SIZES, MAX_DIMS, MAX_TENSORS, MAX_TIME, header_fields

FP = "ab" * 16
VALID = {"model_fingerprint": FP, "dtype": "float32", "tensors": [["l0.S", [2, 3]]],
         "num_tokens": 7, "tenant": "acme", "created_at": 1700000000.5, "updated_at": 1700000001}
KNOWN_KEYS = tuple(VALID)
# bounded so the properties run in a few seconds; no example database written next to the code
PROPERTY = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def forge(header: bytes | dict | list, body: bytes = bytes(24), *, version: int = 1,
          flags: int = 0) -> bytes:
    """Record bytes with a correct checksum over whatever header and body are given."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode()
    prefix = struct.pack("<4sHHIQ", b"RSST", version, flags, len(header), len(body))
    digest = xxhash.xxh3_64(prefix + header + body).intdigest()
    return prefix + struct.pack("<Q", digest) + header + body


def with_fields(**overrides) -> dict:
    return {**VALID, **overrides}


def test_a_forged_but_well_formed_header_is_read():
    rec = decode_record(forge(VALID), FP)
    assert rec == StateRecord(FP, "float32", [("l0.S", (2, 3))], 7, bytes(24), tenant="acme",
                              created_at=1700000000.5, updated_at=1700000001.0)


@pytest.mark.parametrize("header", [
    with_fields(num_tokens="abc"),
    with_fields(num_tokens=-1),
    with_fields(num_tokens=1e300),
    with_fields(num_tokens=7.0),
    with_fields(num_tokens=True),  # a bool is not a count
    with_fields(num_tokens=2**41),
    with_fields(num_tokens=None),
    with_fields(tensors=[["l0.S", ["2", "3"]]]),
    with_fields(tensors=[["l0.S", [-2, -3]]]),
    with_fields(tensors=[["l0.S", [2, 0, 3]], ["l0.n", [6]]]),
    with_fields(tensors=[["l0.S", [True, 6]]]),
    with_fields(tensors=[["l0.S", [2.0, 3]]]),
    with_fields(tensors=[["l0.S", [1] * (MAX_DIMS + 1)]]),
    with_fields(tensors=[["l0.S", [2**40, 2**40]]]),  # more elements than any state
    with_fields(tensors=[[name, [2**20, 2**19]] for name in "abc"]),  # in total
    with_fields(tensors={"l0.S": [2, 3]}),
    with_fields(tensors=[]),
    with_fields(tensors="l0.S"),
    with_fields(tensors=[["l0.S", [2, 3], "extra"]]),
    with_fields(tensors=[["l0.S"]]),
    with_fields(tensors=[("l0.S", 6)]),
    with_fields(tensors=[[6, [6]]]),
    with_fields(tensors=[["", [6]]]),
    with_fields(tensors=[["a", [3]], ["a", [3]]]),  # two tensors, one name
    with_fields(tensors=[["s", [1]]] * (MAX_TENSORS + 1)),
    with_fields(tenant={"id": "acme"}),
    with_fields(tenant=["acme"]),
    with_fields(tenant=None),
    with_fields(tenant="\ud800"),  # the JSON escape of a lone surrogate: not writable as UTF-8
    with_fields(model_fingerprint=5),
    with_fields(model_fingerprint=""),
    with_fields(model_fingerprint=[FP]),
    with_fields(dtype=["float32"]),
    with_fields(dtype="complex64"),
    with_fields(dtype=None),
    with_fields(created_at="2024-01-01"),
    with_fields(created_at=-1.0),
    with_fields(updated_at=1e300),
    with_fields(updated_at=False),
    {k: v for k, v in VALID.items() if k != "num_tokens"},
    {k: v for k, v in VALID.items() if k != "tensors"},
    [VALID],
    "header",
    None,
])
def test_a_forged_header_is_a_malformed_record(header):
    with pytest.raises(MalformedRecord):
        decode_record(forge(header), FP)


@pytest.mark.parametrize("header", [
    b"\xff\xfe{}",  # not UTF-8
    json.dumps(VALID).encode("utf-16"),  # JSON, but not in UTF-8
    b"\xef\xbb\xbf" + json.dumps(VALID).encode(),  # UTF-8 with a byte order mark
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's stack
    json.dumps(VALID)[:-1].encode() + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",  # in extras
    json.dumps(VALID)[:-1].encode() + b',"num_tokens":-1}',  # a key twice: which one counts?
    json.dumps(with_fields(created_at=float("nan"))).encode(),
    json.dumps(with_fields(updated_at=float("inf"))).encode(),
    b'{"num_tokens": ' + b"9" * 5000 + b"}",
    b"",
    b"{",
])
def test_header_bytes_that_do_not_parse_are_a_malformed_record(header):
    with pytest.raises(MalformedRecord):
        decode_record(forge(header), FP)


def test_a_header_longer_than_the_limit_is_refused_before_parsing():
    with pytest.raises(MalformedRecord, match="header length"):
        decode_record(forge(b" " * (MAX_HEADER + 1)), FP)


def test_reserved_flags_are_a_format_this_build_cannot_read():
    with pytest.raises(UnknownVersion, match="flags"):
        decode_record(forge(VALID, flags=1), FP)


def test_a_non_string_fingerprint_of_another_model_is_refused_as_malformed():
    # the mismatch message slices the fingerprint: an int once made that a TypeError
    with pytest.raises(MalformedRecord):
        decode_record(forge(with_fields(model_fingerprint=12345)), "cd" * 16)


def test_optional_fields_default_and_unknown_keys_are_ignored():
    header = {k: VALID[k] for k in ("model_fingerprint", "dtype", "tensors", "num_tokens")}
    header["written_by"] = {"build": "a later one", "extras": [1, None, "x"]}
    rec = decode_record(forge(header), FP)
    assert (rec.tenant, rec.created_at, rec.updated_at) == ("", 0.0, 0.0)
    assert decode_record(encode_record(rec), FP) == rec


def test_scalars_and_integer_times_are_fine():
    header = with_fields(tensors=[["step", []], ["l0.S", [2, 3]]], created_at=0)
    rec = decode_record(forge(header, bytes(28)), FP)
    assert rec.tensors == (("step", ()), ("l0.S", (2, 3)))
    assert type(rec.created_at) is float and rec.created_at == 0.0


def test_non_ascii_text_is_kept_exactly():
    header = with_fields(tenant="ünïcødé 租户 🦀", tensors=[["état", [6]]])
    rec = decode_record(forge(header), FP)
    assert (rec.tenant, rec.tensors[0][0]) == ("ünïcødé 租户 🦀", "état")


# --- the writer refuses what the reader would refuse ------------------------------------------


def good_record(**overrides) -> StateRecord:
    fields = dict(model_fingerprint=FP, dtype="float32", tensors=[("l0.S", (2, 3))],
                  num_tokens=7, body=bytes(24), tenant="acme", created_at=1.0, updated_at=2.0)
    fields.update(overrides)
    return StateRecord(**fields)


@pytest.mark.parametrize("overrides", [
    dict(num_tokens=-1),
    dict(num_tokens=True),
    dict(num_tokens=2**41),
    dict(num_tokens=7.0),
    dict(tensors=[("l0.S", (2, 0, 3))], body=b""),
    dict(tensors=[("a", (3,)), ("a", (3,))]),
    dict(tensors=[], body=b""),
    dict(tensors=[("", (6,))]),
    dict(tenant=None),
    dict(tenant="\udc80"),
    dict(model_fingerprint=""),
    dict(created_at=float("nan")),
    dict(updated_at=float("inf")),
    dict(updated_at=-5.0),
    dict(dtype="complex64"),
    dict(tenant="x" * (MAX_HEADER + 1)),  # a header no reader would parse
])
def test_encode_refuses_what_decode_would_refuse(overrides):
    with pytest.raises(ValueError):
        encode_record(good_record(**overrides))


def test_a_shape_of_strings_or_floats_is_refused_when_the_record_is_built():
    for shape in (("2", "3"), (2.0, 3.0)):
        with pytest.raises(TypeError):
            good_record(tensors=[("l0.S", shape)])


# --- properties -------------------------------------------------------------------------------

# surrogates too: JSON's "\ud800" escape makes one
texts = (st.sampled_from(["", "\ud800", "ok\udfff"])
         | st.text(alphabet=st.characters(exclude_categories=()), max_size=12))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12)
# JSON proper (no NaN, no lone surrogates): what a well-formed header's extra keys hold
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
good_tensors = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.lists(st.integers(1, 4), max_size=3)),
    min_size=1, max_size=3, unique_by=lambda t: t[0]).map(lambda ts: [list(t) for t in ts])
good_times = st.floats(0, 1e11) | st.integers(0, 2**33)
# each field: (what an honest writer writes, what a hostile one might)
FIELDS = {
    "model_fingerprint": (st.just(FP) | st.text(min_size=1, max_size=12), texts | json_values),
    "dtype": (st.sampled_from(sorted(DTYPE_SIZES)), texts | json_values),
    "tensors": (good_tensors, st.lists(st.tuples(
        st.sampled_from(["l0.S", "l0.n", ""]) | texts,
        st.lists(st.integers(-1, 4) | st.booleans() | st.floats(0, 4), max_size=MAX_DIMS + 1)
        | json_values).map(list), max_size=4) | json_values),
    "num_tokens": (st.integers(0, 2**40), st.sampled_from([-1, 2**40 + 1, True, 1.0, 1e300])
                   | st.integers() | json_values),
    "tenant": (st.text(max_size=12), texts | json_values),
    "created_at": (good_times, st.sampled_from([-1, -0.0, MAX_TIME, MAX_TIME + 1, 1e300, False])
                   | st.floats() | json_values),
    "updated_at": (good_times, st.floats() | st.integers() | json_values),
}
hostile_extra_keys = st.dictionaries(texts.filter(lambda k: k not in KNOWN_KEYS), json_values,
                                     max_size=3)
plain_extra_keys = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in KNOWN_KEYS),
                                   plain_json, max_size=3)


def body_size(header: dict) -> int | None:
    """What the body must hold if the header's dtype and shapes make sense of it, else None."""
    try:
        size = DTYPE_SIZES[header["dtype"]] * sum(math.prod(s) for _, s in header["tensors"])
    except Exception:  # any garbage: the body is then arbitrary bytes
        return None
    return size if type(size) is int and 0 <= size <= 4096 else None


@st.composite
def forged_records(draw) -> tuple[dict, bytes]:
    header = {}
    for key, (honest, hostile) in FIELDS.items():
        choice = draw(st.integers(0, 15))  # mostly honest, so that some records are read
        if choice < 14:
            header[key] = draw(honest)
        elif choice == 14:
            header[key] = draw(hostile)  # and at 15, no such key
    header.update(draw(hostile_extra_keys if draw(st.integers(0, 3)) == 0 else plain_extra_keys))
    size = body_size(header)
    if size is not None and draw(st.integers(0, 7)) < 7:
        body = draw(st.binary(min_size=size, max_size=size))
    else:
        body = draw(st.binary(max_size=64))
    raw = json.dumps(header, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    flags = [0, 1, 0x8000][max(0, draw(st.integers(0, 15)) - 13)]
    return header, forge(raw, body, flags=flags)


def assert_sound(rec: StateRecord) -> None:
    """What every record read is, restated from the schema's words, not its code."""

    def is_text(value) -> bool:
        return type(value) is str and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)

    assert is_text(rec.model_fingerprint) and rec.model_fingerprint
    assert type(rec.dtype) is str and rec.dtype in DTYPE_SIZES
    assert type(rec.num_tokens) is int and 0 <= rec.num_tokens <= 2**40
    assert is_text(rec.tenant)
    for t in (rec.created_at, rec.updated_at):
        assert type(t) is float and 0 <= t <= MAX_TIME
    names = [name for name, _ in rec.tensors]
    assert 1 <= len(names) <= MAX_TENSORS and len(set(names)) == len(names)
    for name, shape in rec.tensors:
        assert is_text(name) and name and len(shape) <= MAX_DIMS
        assert all(type(d) is int and d >= 1 for d in shape)
    assert len(rec.body) == DTYPE_SIZES[rec.dtype] * sum(math.prod(s) for _, s in rec.tensors)


def same_json(sent, written) -> bool:
    """The header value read equals the one written back, type included (True is not 1)."""
    return json.dumps(sent, sort_keys=True) == json.dumps(written, sort_keys=True)


@PROPERTY
@given(forged_records(), st.sampled_from([None, FP]))
def test_decode_refuses_or_reads_what_the_writer_writes_back(forged, expected):
    header, data = forged
    try:
        rec = decode_record(data, expected)
    except RecordError as e:
        event(f"refused: {e.reason}")
        return
    event("read")
    assert_sound(rec)
    assert decode_record(encode_record(rec), expected) == rec
    written = header_fields(rec)
    for key in KNOWN_KEYS:
        if key not in header:
            continue
        if key in ("created_at", "updated_at"):  # ints are times too; read as floats
            assert type(header[key]) in (int, float) and header[key] == written[key]
        else:
            assert same_json(header[key], written[key]), key


@PROPERTY
@given(st.binary(max_size=200), st.binary(max_size=64))
def test_arbitrary_header_bytes_never_raise_anything_but_a_record_error(header, body):
    try:
        rec = decode_record(forge(header, body), None)
    except RecordError:
        return
    assert_sound(rec)
    assert decode_record(encode_record(rec), None) == rec


@st.composite
def valid_headers(draw) -> tuple[dict, bytes]:
    header = {key: draw(honest) for key, (honest, _) in FIELDS.items()}
    header["model_fingerprint"] = FP
    header.update(draw(plain_extra_keys))
    size = body_size(header)
    return header, forge(json.dumps(header).encode(), draw(st.binary(min_size=size,
                                                                      max_size=size)))


@PROPERTY
@given(valid_headers())
def test_every_well_formed_header_is_read_whatever_extra_keys_it_carries(forged):
    header, data = forged
    rec = decode_record(data, FP)
    assert rec.tensors == tuple((name, tuple(shape)) for name, shape in header["tensors"])
    assert (rec.num_tokens, rec.tenant, rec.created_at) == (
        header["num_tokens"], header["tenant"], header["created_at"])
    assert decode_record(encode_record(rec), FP) == rec


@st.composite
def record_fields(draw) -> dict:
    """StateRecord arguments, each honest or (one time in four) hostile."""
    fields = {key: draw(hostile if draw(st.integers(0, 3)) == 0 else honest)
              for key, (honest, hostile) in FIELDS.items() if key != "tensors"}
    fields["tensors"] = draw(good_tensors if draw(st.integers(0, 3)) else st.lists(st.tuples(
        st.sampled_from(["l0.S", "l0.n", ""]) | texts, st.lists(st.integers(-1, 4), max_size=3)),
        max_size=3))
    size = body_size(fields)
    fields["body"] = draw(st.binary(max_size=64) if size is None or not draw(st.integers(0, 4))
                          else st.binary(min_size=size, max_size=size))
    return fields


@PROPERTY
@given(record_fields())
def test_encode_either_refuses_or_writes_what_decode_reads_back(fields):
    try:
        rec = StateRecord(**fields)
        encoded = encode_record(rec)
    except (TypeError, ValueError):  # refused at construction or by validate
        event("refused")
        return
    event("written")
    back = decode_record(encoded, None)
    assert back == rec
    assert_sound(back)
