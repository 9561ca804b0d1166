"""StateRecord: one conversation's retention state as header fields plus opaque body bytes.

`check_header` is the one schema of those fields. The reader applies it to the JSON it parsed
(a valid checksum proves the bytes did not change, not that their writer was honest), the writer
to the header it is about to write, so every record written can be read back.

Header keys this build does not know are ignored, as for session pointers: a newer build may add
a field older readers can do without. A change older readers must not ignore bumps the codec's
format version instead.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

from state_store.errors import MalformedRecord

# bytes per element; names follow torch's dtype names without the "torch." prefix
DTYPE_SIZES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}

# Far above any real model, low enough that no number read from a header can drive an int64
# overflow or a huge allocation downstream.
MAX_TENSORS = 4096
MAX_DIMS = 8
MAX_ELEMENTS = 2**40  # all tensors of a record together
MAX_TOKENS = 2**40
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z in unix seconds

TensorSpec = tuple[str, tuple[int, ...]]


def expected_body_size(dtype: str, tensors: tuple[TensorSpec, ...]) -> int:
    """Body length implied by dtype x shapes; KeyError on an unknown dtype."""
    itemsize = DTYPE_SIZES[dtype]
    return sum(math.prod(shape) for _, shape in tensors) * itemsize


@dataclass(frozen=True)
class StateRecord:
    model_fingerprint: str
    dtype: str
    tensors: tuple[TensorSpec, ...]  # (name, shape) in body order, packed contiguously
    num_tokens: int
    body: bytes = field(repr=False)
    tenant: str = ""
    created_at: float = 0.0  # unix seconds
    updated_at: float = 0.0

    def __post_init__(self):
        # accept lists from callers; store tuples so records stay hashable and immutable.
        # operator.index, not int: a float or string dimension is a caller's bug, not a size
        tensors = tuple((str(n), tuple(operator.index(d) for d in s)) for n, s in self.tensors)
        object.__setattr__(self, "tensors", tensors)

    @property
    def num_bytes(self) -> int:
        return len(self.body)


def header_fields(rec: StateRecord) -> dict[str, Any]:
    """The header of `rec` as JSON types, in the order the codec writes it."""
    return {
        "model_fingerprint": rec.model_fingerprint,
        "dtype": rec.dtype,
        "tensors": [[name, list(shape)] for name, shape in rec.tensors],
        "num_tokens": rec.num_tokens,
        "tenant": rec.tenant,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


def check_header(fields: Any) -> dict[str, Any]:
    """StateRecord arguments (all but the body) from a parsed header; MalformedRecord otherwise.

    Exact JSON types (a bool is not a count, a string is not a number), nothing coerced: a
    header that passes is the header its record writes back.
    """
    if type(fields) is not dict:
        raise MalformedRecord(f"header is a {type(fields).__name__}, not an object")
    try:
        fingerprint, dtype, tensors = (
            fields["model_fingerprint"], fields["dtype"], fields["tensors"])
        num_tokens = fields["num_tokens"]
    except KeyError as e:
        raise MalformedRecord(f"header has no {e.args[0]!r}") from None
    if not _is_text(fingerprint) or not fingerprint:
        raise MalformedRecord("model_fingerprint must be a non-empty Unicode string")
    if type(dtype) is not str or dtype not in DTYPE_SIZES:
        raise MalformedRecord(f"unknown dtype {_short(dtype)}")
    if type(num_tokens) is not int or not 0 <= num_tokens <= MAX_TOKENS:
        raise MalformedRecord(f"num_tokens must be an integer in [0, 2**40], not "
                              f"{_short(num_tokens)}")
    tenant = fields.get("tenant", "")
    if not _is_text(tenant):
        raise MalformedRecord("tenant must be a Unicode string")
    return {
        "model_fingerprint": fingerprint, "dtype": dtype, "tensors": _check_tensors(tensors),
        "num_tokens": num_tokens, "tenant": tenant,
        "created_at": _check_time(fields, "created_at"),
        "updated_at": _check_time(fields, "updated_at"),
    }


def _check_tensors(tensors: Any) -> tuple[TensorSpec, ...]:
    if type(tensors) is not list or not 1 <= len(tensors) <= MAX_TENSORS:
        raise MalformedRecord(f"tensors must be a list of 1 to {MAX_TENSORS} [name, shape] pairs")
    checked: list[TensorSpec] = []
    names: set[str] = set()
    num_elements = 0
    for i, spec in enumerate(tensors):
        if type(spec) is not list or len(spec) != 2:
            raise MalformedRecord(f"tensors[{i}] must be a [name, shape] pair")
        name, shape = spec
        if not _is_text(name) or not name:
            raise MalformedRecord(f"tensors[{i}] name must be a non-empty Unicode string")
        if name in names:
            raise MalformedRecord(f"tensor name {name!r} appears twice")
        names.add(name)
        if type(shape) is not list or len(shape) > MAX_DIMS:
            raise MalformedRecord(f"tensors[{i}] shape must be a list of at most {MAX_DIMS} dims")
        count = 1
        for d in shape:
            # the bound inside the loop keeps a forged shape from building a huge product
            if type(d) is not int or d < 1 or (count := count * d) > MAX_ELEMENTS:
                raise MalformedRecord(f"tensors[{i}] shape {_short(shape)}: dims must be "
                                      f"positive integers, at most 2**40 elements")
        num_elements += count
        if num_elements > MAX_ELEMENTS:
            raise MalformedRecord("tensors hold more than 2**40 elements")
        checked.append((name, tuple(shape)))
    return tuple(checked)


def _check_time(fields: dict, key: str) -> float:
    value = fields.get(key, 0.0)
    # int or float (JSON writes 5.0 back as 5.0 and 5 as 5); NaN and inf fail the comparison
    if type(value) not in (int, float) or not 0 <= value <= MAX_TIME:
        raise MalformedRecord(f"{key} must be unix seconds in [0, {MAX_TIME}], "
                              f"not {_short(value)}")
    return float(value)


def _is_text(value: Any) -> bool:
    """A str that UTF-8 can write: JSON's "\\ud800" escape parses to a lone surrogate."""
    if type(value) is not str:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
