"""Position rotation of q and k: torchscale's interleaved theta-shift or fla's rotate-half RoPE.

A rotation is a complex number per (position, pair of dims): e^(i * position * frequency), built
once per call for all layers (`rotation`) and applied as one complex product (`rotate`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def inv_frequencies(head_dim: int, kind: str, theta: float, device, dtype) -> Tensor:
    """Angular frequency of each pair of dims: [head_dim // 2]. Pairs are (2i, 2i+1) for xpos,
    (i, i + d/2) for rope."""
    half = head_dim // 2
    if kind == "xpos":
        return 1.0 / theta ** torch.linspace(0, 1, half, device=device, dtype=dtype)
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)


def rotation(positions: Tensor, freq: Tensor, scale: Tensor) -> Tensor:
    """positions [B, T], freq [D/2], scale [S] -> e^(i angle) * scale: [B, T, S, 1, D/2]
    complex (S: q and k side by side, each with its own scale)."""
    angle = positions.to(freq.dtype)[..., None, None, None] * freq  # [B, T, 1, 1, D/2]
    return torch.polar(scale[:, None, None], angle)


def rotate(x: Tensor, rot: Tensor, kind: str) -> Tensor:
    """x: [B, T, S, H, D] real, rot: [B, T, S, 1, D/2] complex -> rotated x in rot's real dtype."""
    x = x.to(rot.real.dtype)
    if kind == "xpos":  # interleaved pairs are complex numbers as they lie in memory
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * rot).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = rot.real, rot.imag
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
