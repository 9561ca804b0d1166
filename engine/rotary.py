"""Position rotation of q and k: torchscale's interleaved theta-shift or fla's rotate-half RoPE."""

from __future__ import annotations

import torch
from torch import Tensor


def inv_frequencies(head_dim: int, kind: str, theta: float, device, dtype) -> Tensor:
    """Per-pair angular frequency, laid out to match `rotate`: [head_dim]."""
    half = head_dim // 2
    if kind == "xpos":
        freq = 1.0 / theta ** torch.linspace(0, 1, half, device=device, dtype=dtype)
        return freq.repeat_interleave(2)  # pairs (0,1), (2,3), ...
    freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    return torch.cat([freq, freq])  # halves (i, i + d/2)


def rotate(x: Tensor, positions: Tensor, freq: Tensor, kind: str) -> Tensor:
    """x: [B, T, H, D], positions: [B, T] absolute -> rotated x (same dtype as freq)."""
    angle = positions.to(freq.dtype)[..., None, None] * freq  # [B, T, 1, D]
    x = x.to(freq.dtype)
    if kind == "xpos":
        turned = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        turned = torch.cat((-x2, x1), dim=-1)
    return x * torch.cos(angle) + turned * torch.sin(angle)
