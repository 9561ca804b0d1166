"""StateRecord: one conversation's retention state as header fields plus opaque body bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# bytes per element; names follow torch's dtype names without the "torch." prefix
DTYPE_SIZES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}

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
        # accept lists from callers; store tuples so records stay hashable and immutable
        tensors = tuple((str(n), tuple(int(d) for d in s)) for n, s in self.tensors)
        object.__setattr__(self, "tensors", tensors)

    @property
    def num_bytes(self) -> int:
        return len(self.body)
