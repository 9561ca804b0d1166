"""The state slot pool: every admitted conversation's retention state in one preallocated buffer.

Slots are handles from a free list. Rows are where a slot's state sits, and the pool keeps them
in two dense stacks so that the batched decode step runs in place on a view, with no gather or
scatter of states:

    rows [0, n)              slots that are decoding, in batch order
    rows [n, n + padding)    always free: a decode batch padded to its bucket runs here
    rows [R - p, R)          slots that are not decoding (prefilling, just loaded), top down

A slot that starts decoding, or leaves, costs at most two row copies. The buffer is sized once
(`num_slots` + `num_padding_rows` rows) and never grows.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from engine.config import ModelConfig
from engine.state import RetentionState


class StatePool:
    def __init__(self, config: ModelConfig, num_slots: int, num_padding_rows: int = 0,
                 device="cpu", dtype: torch.dtype = torch.float32):
        self.config = config
        self.num_slots = num_slots
        self.num_rows = num_slots + num_padding_rows
        shape = (config.num_layers, self.num_rows, config.num_heads, config.head_qk_dim,
                 config.head_v_dim)
        # plain tensors (not inference tensors): callers may update views outside inference mode
        self.kv = torch.zeros(shape, device=device, dtype=dtype)  # [L, R, H, Dk, Dv]
        self.num_tokens = torch.zeros(self.num_rows, dtype=torch.long, device=device)
        self.free_slots: deque[int] = deque(range(num_slots))
        self._row = [0] * num_slots  # slot -> row, while allocated
        self._decoding: list[int] = []  # slot at row i
        self._parked: list[int] = []  # slot at row R - 1 - i

    @staticmethod
    def row_nbytes(config: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
        return config.state_numel * torch.finfo(dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() + self.num_tokens.numel() * 8

    @property
    def num_free(self) -> int:
        return len(self.free_slots)

    @property
    def num_decoding(self) -> int:
        return len(self._decoding)

    @property
    def decoding_slots(self) -> list[int]:
        """Slots of the decode batch in row order."""
        return self._decoding

    def row(self, slot: int) -> int:
        return self._row[slot]

    def can_allocate(self, num_slots: int = 1) -> bool:
        return len(self.free_slots) >= num_slots

    @torch.inference_mode()
    def allocate(self) -> int:
        """A slot holding the empty state (position 0), not decoding."""
        slot = self.free_slots.popleft()
        self._row[slot] = self.num_rows - 1 - len(self._parked)
        self._parked.append(slot)
        self.kv[:, self._row[slot]].zero_()
        self.num_tokens[self._row[slot]] = 0
        return slot

    @torch.inference_mode()
    def free(self, slot: int) -> None:
        row = self._row[slot]
        if row < len(self._decoding):
            self._remove(self._decoding, slot, row)
        else:
            self._remove(self._parked, slot, self.num_rows - 1 - row)
        self.free_slots.append(slot)

    @torch.inference_mode()
    def start_decoding(self, slot: int) -> None:
        """Moves a parked slot to the end of the decode batch."""
        row = self._row[slot]
        if row < len(self._decoding):
            return
        target = len(self._decoding)
        self._move(row, target)
        self._row[slot] = target
        self._decoding.append(slot)
        self._remove(self._parked, slot, self.num_rows - 1 - row)

    def _remove(self, stack: list[int], slot: int, index: int) -> None:
        """Drops stack[index] (== slot), filling the hole with the stack's last slot."""
        last = stack.pop()
        if last != slot:
            stack[index] = last
            new_row = index if stack is self._decoding else self.num_rows - 1 - index
            self._move(self._row[last], new_row)
            self._row[last] = new_row

    def _move(self, src: int, dst: int) -> None:
        self.kv[:, dst].copy_(self.kv[:, src])
        self.num_tokens[dst : dst + 1].copy_(self.num_tokens[src : src + 1])

    def decode_batch(self, num_rows: int) -> tuple[Tensor, Tensor]:
        """Views kv [L, num_rows, H, Dk, Dv] and positions [num_rows] for the decode step:
        the decoding slots, then free padding rows."""
        return self.kv[:, :num_rows], self.num_tokens[:num_rows]

    def state(self, slot: int) -> RetentionState:
        """A one-row view of the slot's state (read it, then `write` the next one)."""
        row = self._row[slot]
        return RetentionState(self.kv[:, row : row + 1], self.num_tokens[row : row + 1])

    @torch.inference_mode()
    def write(self, slot: int, state: RetentionState) -> None:
        """Copies a one-row state (any dtype or device) into the slot."""
        if state.batch_size != 1 or state.kv[:, 0].shape != self.kv[:, 0].shape:
            raise ValueError(f"state of shape {tuple(state.kv.shape)} does not fit this pool "
                             f"(one row of {tuple(self.kv[:, 0].shape)})")
        row = self._row[slot]
        self.kv[:, row].copy_(state.kv[:, 0])
        self.num_tokens[row : row + 1].copy_(state.num_tokens)

    load = write

    @torch.inference_mode()
    def load_bytes(self, slot: int, data: bytes | memoryview, num_tokens: int,
                   dtype: torch.dtype = torch.float32) -> None:
        """Fills the slot from `RetentionState.to_bytes` output."""
        row_shape = self.kv[:, 0].shape
        expected = self.config.state_numel * torch.finfo(dtype).bits // 8
        if len(data) != expected:
            raise ValueError(f"state bytes: expected {expected}, got {len(data)}")
        row = self._row[slot]
        self.kv[:, row].copy_(torch.frombuffer(bytearray(data), dtype=dtype).view(row_shape))
        self.num_tokens[row] = num_tokens

    def export(self, slot: int, device="cpu") -> RetentionState:
        """A copy of the slot's state (a one-row RetentionState) that outlives the slot."""
        row = self._row[slot]
        return RetentionState(self.kv[:, row : row + 1].to(device, copy=True),
                              self.num_tokens[row : row + 1].to(device, copy=True))
