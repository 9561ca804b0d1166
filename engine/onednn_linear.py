"""oneDNN-prepacked linear layers for CPU inference.

torch's dense `F.linear` runs MKL sgemm, which on the AMD EPYC (AVX-512) machines we serve from
takes about twice as long at decode batch sizes (a [64, 256] x [256, 1536] product: 284 us) as
oneDNN with the weight reordered once into its blocked AVX-512 layout (129 us). Results differ
from sgemm's by fp32 rounding only.

Batch invariance: oneDNN's rows come out bitwise the same for every row count M >= 2, at any row
offset, with 1 or 2 threads (checked for all of the served model's shapes, M up to 2048), but a
single fp32 row takes another kernel with other rounding; `PackedLinear` therefore computes a
lone fp32 row as two. With that, a row's numbers never depend on the rest of the batch, for any
decode bucket sizes (MKL sgemm needs multiples of 4).

Memory: oneDNN builds (JIT) and caches a primitive per input shape, ~0.5 MB each, up to 1,024 of
them: fed every prompt length a chat brings, a server's memory grew by hundreds of MB. Rows are
therefore run in blocks of at most `ROW_BLOCK`, each padded up to one of a few sizes
(`row_bucket`): a linear sees at most 18 shapes whatever the traffic, and thanks to the batch
invariance above the padding changes no number.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_DTYPES = (torch.float32, torch.bfloat16)
ROW_BLOCK = 256  # full speed already (~220 GFLOP/s on one core for the served shapes)


def row_bucket(num_rows: int) -> int:
    """Rows a block of `num_rows` (1..ROW_BLOCK) is padded to: 2 (oneDNN's one-row kernel
    rounds differently), powers of 2 to 16 (where time hardly depends on rows), then steps of
    8, 16, 32: under 8 padding rows or a quarter, once the work grows with the rows."""
    if num_rows <= 16:
        return max(2, 1 << (num_rows - 1).bit_length())
    step = 8 if num_rows <= 64 else 16 if num_rows <= 128 else 32
    return -(-num_rows // step) * step


def _linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """Inference-only stand-in for `nn.Linear` (CPU, fp32 or bf16): [..., in] -> [..., out].

    The packed weight is a plain attribute, not a parameter or buffer: an opaque mkldnn tensor
    cannot be saved, moved or trained, and must stay out of state_dict() and .to()."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = weight.detach().contiguous().to_mkldnn()
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        num_rows = x.numel() // self.in_features
        flat = x.reshape(num_rows, self.in_features)
        if num_rows <= ROW_BLOCK:
            out = self._block(flat)
        else:
            out = torch.cat([self._block(flat[i : i + ROW_BLOCK])
                             for i in range(0, num_rows, ROW_BLOCK)])
        return out.reshape(*x.shape[:-1], self.out_features)

    def _block(self, x: Tensor) -> Tensor:  # x: [M <= ROW_BLOCK, in] -> [M, out]
        num_rows = x.shape[0]
        size = row_bucket(num_rows) if num_rows else 0
        if size != num_rows:
            x = torch.cat([x, x.new_zeros(size - num_rows, self.in_features)])
        out = _linear(x, self.packed, self.bias)
        return out if size == num_rows else out[:num_rows]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}")


@functools.cache
def _op_works(dtype: torch.dtype) -> bool:
    # the op is private and build dependent (and bf16 may be unsupported on the CPU): try it
    try:
        weight = torch.linspace(-1, 1, 8 * 16, dtype=dtype).reshape(8, 16)
        x = torch.linspace(-1, 1, 3 * 16, dtype=dtype).reshape(3, 16)
        out = PackedLinear(weight)(x)
        return out.dtype == dtype and torch.allclose(out.float(), F.linear(x, weight).float(),
                                                     atol=5e-2, rtol=5e-2)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def can_pack(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether `PackedLinear` runs for weights of this device and dtype."""
    return (torch.device(device).type == "cpu" and dtype in _DTYPES
            and torch.backends.mkldnn.is_available() and _op_works(dtype))
