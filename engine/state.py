"""The retention state of a batch of conversations: a fixed tensor per layer plus token counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.config import ModelConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64,
           "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unsupported state dtype {name!r}")
    return _DTYPES[name]


@dataclass
class RetentionState:
    kv: Tensor  # [L, B, H, Dk, Dv], normalised state S_n (see retention.py)
    num_tokens: Tensor  # [B] int64: tokens folded in so far; the next position per row

    @classmethod
    def empty(cls, config: ModelConfig, batch_size: int, device="cpu",
              dtype: torch.dtype = torch.float32) -> RetentionState:
        kv = torch.zeros(config.num_layers, batch_size, config.num_heads, config.head_qk_dim,
                         config.head_v_dim, device=device, dtype=dtype)
        return cls(kv, torch.zeros(batch_size, dtype=torch.long, device=device))

    @property
    def batch_size(self) -> int:
        return self.kv.shape[1]

    @property
    def row_nbytes(self) -> int:
        return self.kv[:, 0].numel() * self.kv.element_size()

    def clone(self) -> RetentionState:
        return RetentionState(self.kv.clone(), self.num_tokens.clone())

    def to(self, device=None, dtype: torch.dtype | None = None) -> RetentionState:
        return RetentionState(self.kv.to(device=device, dtype=dtype), self.num_tokens.to(device))

    def select(self, rows: Tensor | list[int]) -> RetentionState:
        rows = torch.as_tensor(rows, device=self.kv.device, dtype=torch.long)
        return RetentionState(self.kv.index_select(1, rows), self.num_tokens.index_select(0, rows))

    def split(self) -> list[RetentionState]:
        return [self.select([i]) for i in range(self.batch_size)]

    @classmethod
    def stack(cls, rows: list[RetentionState]) -> RetentionState:
        return cls(torch.cat([r.kv for r in rows], dim=1),
                   torch.cat([r.num_tokens for r in rows], dim=0))

    def tensor_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        """Name and shape of each tensor in `to_bytes` (one row), for the store's header."""
        _, _, heads, dk, dv = self.kv.shape
        return [(f"layers.{i}.kv", (heads, dk, dv)) for i in range(self.kv.shape[0])]

    def to_bytes(self, dtype: torch.dtype | None = None) -> bytes:
        """Raw bytes of a single-row state (layer-major, C order), optionally cast (fp16/bf16)."""
        if self.batch_size != 1:
            raise ValueError("to_bytes takes a single-row state; use split() first")
        kv = self.kv[:, 0].to(device="cpu", dtype=dtype or self.kv.dtype).contiguous()
        return kv.view(torch.uint8).numpy().tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, config: ModelConfig, num_tokens: int,
                   dtype: torch.dtype = torch.float32, device="cpu",
                   out_dtype: torch.dtype = torch.float32) -> RetentionState:
        shape = (config.num_layers, 1, config.num_heads, config.head_qk_dim, config.head_v_dim)
        expected = config.state_numel * torch.finfo(dtype).bits // 8
        if len(data) != expected:
            raise ValueError(f"state bytes: expected {expected}, got {len(data)}")
        kv = torch.frombuffer(bytearray(data), dtype=dtype).view(shape)
        return cls(kv.to(device=device, dtype=out_dtype),
                   torch.tensor([num_tokens], dtype=torch.long, device=device))
