"""`nn.Linear` through retserve's own CPU kernel (engine/native_kernels.py): fp32 or bf16
weights, fp32 accumulation, every batch size batch invariant (1 row included), no per-shape
cache (the memory of oneDNN's primitives), faster than oneDNN at every decode batch size."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.native_kernels import NativeKernels


class NativeLinear(nn.Module):
    """Inference-only stand-in for `nn.Linear`: [..., in] -> [..., out] in the input's dtype.
    The packed weight is a plain attribute, out of state_dict() and .to() (as PackedLinear's)."""

    def __init__(self, weight: Tensor, kernels: NativeKernels, bias: Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.kernels = kernels
        self.packed = kernels.pack_weight(weight.detach())
        self.bias = None if bias is None else bias.detach().float().clone()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        out = self.kernels.linear(flat, self.packed, self.out_features)
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}")
