"""The retention state of a batch of conversations: a fixed tensor per layer plus token counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.config import ModelConfig


@dataclass
class RetentionState:
    kv: Tensor  # [L, B, H, Dk, Dv], normalised state S_n (see retention.py)
    num_tokens: Tensor  # [B] int64: tokens folded in so far; the next position per row
    # [L, B, K-1, C]: the short convolution's last inputs (models with short_conv), else None.
    # Records hold it as [C, K-1] per layer (`to_bytes`): the layout it had first.
    conv: Tensor | None = None

    @classmethod
    def empty(cls, config: ModelConfig, batch_size: int, device="cpu",
              dtype: torch.dtype = torch.float32) -> RetentionState:
        kv, conv = (None if shape is None else torch.zeros(shape, device=device, dtype=dtype)
                    for shape in state_shapes(config, batch_size))
        return cls(kv, torch.zeros(batch_size, dtype=torch.long, device=device), conv)

    @property
    def tensors(self) -> list[Tensor]:
        """The per-row tensors (batch on dim 1), in byte order."""
        return [self.kv] if self.conv is None else [self.kv, self.conv]

    def _map(self, fn, num_tokens: Tensor) -> RetentionState:
        return RetentionState(fn(self.kv), num_tokens, None if self.conv is None
                              else fn(self.conv))

    @property
    def batch_size(self) -> int:
        return self.kv.shape[1]

    @property
    def row_nbytes(self) -> int:
        return sum(t[:, 0].numel() * t.element_size() for t in self.tensors)

    def clone(self) -> RetentionState:
        return self._map(Tensor.clone, self.num_tokens.clone())

    def to(self, device=None, dtype: torch.dtype | None = None, copy: bool = False
           ) -> RetentionState:
        return self._map(lambda t: t.to(device=device, dtype=dtype, copy=copy),
                         self.num_tokens.to(device, copy=copy))

    def select(self, rows: Tensor | list[int]) -> RetentionState:
        rows = torch.as_tensor(rows, device=self.kv.device, dtype=torch.long)
        return self._map(lambda t: t.index_select(1, rows), self.num_tokens.index_select(0, rows))

    def split(self) -> list[RetentionState]:
        return [self.select([i]) for i in range(self.batch_size)]

    @classmethod
    def stack(cls, rows: list[RetentionState]) -> RetentionState:
        conv = None if rows[0].conv is None else torch.cat([r.conv for r in rows], dim=1)
        return cls(torch.cat([r.kv for r in rows], dim=1),
                   torch.cat([r.num_tokens for r in rows], dim=0), conv)

    def tensor_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        """Name and shape of each tensor in `to_bytes` (one row), for the store's header."""
        spec = [(f"layers.{i}.kv", tuple(self.kv.shape[2:])) for i in range(self.kv.shape[0])]
        if self.conv is not None:
            spec += [(f"layers.{i}.conv", tuple(self.conv.shape[:1:-1]))
                     for i in range(self.conv.shape[0])]
        return spec

    def to_bytes(self, dtype: torch.dtype | None = None) -> bytes:
        """Raw bytes of a single-row state (kv, then conv as [L, C, K-1]; C order), optionally
        cast (fp16/bf16)."""
        if self.batch_size != 1:
            raise ValueError("to_bytes takes a single-row state; use split() first")
        rows = [self.kv[:, 0]] + ([] if self.conv is None else [self.conv[:, 0].transpose(1, 2)])
        return b"".join(t.to(device="cpu", dtype=dtype or t.dtype).contiguous()
                        .view(torch.uint8).numpy().tobytes() for t in rows)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, config: ModelConfig, num_tokens: int,
                   dtype: torch.dtype = torch.float32, device="cpu",
                   out_dtype: torch.dtype = torch.float32) -> RetentionState:
        kv, conv = unpack_row(data, config, dtype)
        return cls(kv.to(device=device, dtype=out_dtype),
                   torch.tensor([num_tokens], dtype=torch.long, device=device),
                   None if conv is None else conv.to(device=device, dtype=out_dtype))


def state_shapes(config: ModelConfig, batch_size: int = 1
                 ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Shapes of the kv [L, B, H, Dk, Dv] and conv [L, B, K-1, C] tensors of `batch_size` rows
    (conv None without short_conv)."""
    kv = (config.num_layers, batch_size, config.num_heads, config.head_qk_dim, config.head_v_dim)
    conv = (config.num_layers, batch_size, config.conv_state_width, config.conv_channels)
    return kv, conv if config.short_conv else None


def unpack_row(data: bytes | memoryview, config: ModelConfig, dtype: torch.dtype
               ) -> tuple[Tensor, Tensor | None]:
    """`to_bytes` output -> (kv [L, 1, H, Dk, Dv], conv [L, 1, K-1, C] or None), on the CPU."""
    expected = config.state_numel * torch.finfo(dtype).bits // 8
    if len(data) != expected:
        raise ValueError(f"state bytes: expected {expected}, got {len(data)}")
    flat = torch.frombuffer(bytearray(data), dtype=dtype)
    kv_shape, conv_shape = state_shapes(config)
    kv = flat[: config.kv_numel].view(kv_shape)
    if conv_shape is None:
        return kv, None
    return kv, flat[config.kv_numel :].view(conv_shape[:2] + conv_shape[:1:-1]).transpose(2, 3)
