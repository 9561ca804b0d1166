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

from engine.config import ModelConfig
from engine.state import RetentionState


class StatePool:
    def __init__(self, config: ModelConfig, num_slots: int, num_padding_rows: int = 0,
                 device="cpu", dtype: torch.dtype = torch.float32):
        self.config = config
        self.num_slots = num_slots
        self.num_rows = num_slots + num_padding_rows
        # plain tensors (not inference tensors): callers may update views outside inference mode
        buffers = RetentionState.empty(config, self.num_rows, device, dtype)
        self.kv = buffers.kv  # [L, R, H, Dk, Dv]
        self.conv = buffers.conv  # [L, R, K-1, C] for models with a short convolution, else None
        self.num_tokens = buffers.num_tokens  # [R]
        self._tensors = buffers.tensors  # the per-row tensors: kv (and conv)
        self.free_slots: deque[int] = deque(range(num_slots))
        self._row = [0] * num_slots  # slot -> row, while allocated
        self._decoding: list[int] = []  # slot at row i
        self._parked: list[int] = []  # slot at row R - 1 - i

    @staticmethod
    def row_nbytes(config: ModelConfig, dtype: torch.dtype = torch.float32) -> int:
        return config.state_numel * torch.finfo(dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors) \
            + self.num_tokens.numel() * 8

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
        for t in self._tensors:
            t[:, self._row[slot]].zero_()
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
        last = self._parked[-1]
        if self._row[last] == target != row:
            # every row is taken (a full pool, no padding): the target row holds the parked
            # stack's last slot, so the two trade rows instead of one overwriting the other
            self._swap(row, target)
            self._row[last] = row
            self._parked[self.num_rows - 1 - row] = last
            self._parked.pop()
        else:
            self._move(row, target)
            self._remove(self._parked, slot, self.num_rows - 1 - row)
        self._row[slot] = target
        self._decoding.append(slot)

    def _remove(self, stack: list[int], slot: int, index: int) -> None:
        """Drops stack[index] (== slot), filling the hole with the stack's last slot."""
        last = stack.pop()
        if last != slot:
            stack[index] = last
            new_row = index if stack is self._decoding else self.num_rows - 1 - index
            self._move(self._row[last], new_row)
            self._row[last] = new_row

    def _move(self, src: int, dst: int) -> None:
        for t in self._tensors:
            t[:, dst].copy_(t[:, src])
        self.num_tokens[dst : dst + 1].copy_(self.num_tokens[src : src + 1])

    def _swap(self, a: int, b: int) -> None:
        rows, swapped = [a, b], [b, a]  # the right side is gathered (a copy) before the write
        for t in self._tensors:
            t[:, rows] = t[:, swapped]
        self.num_tokens[rows] = self.num_tokens[swapped]

    def rows(self, begin: int, end: int) -> RetentionState:
        """A view of rows [begin, end): writes to it are writes to the pool."""
        conv = None if self.conv is None else self.conv[:, begin:end]
        return RetentionState(self.kv[:, begin:end], self.num_tokens[begin:end], conv)

    def decode_batch(self, num_rows: int) -> RetentionState:
        """A view of the decode step's rows, updated in place by it: the decoding slots, then
        free padding rows."""
        return self.rows(0, num_rows)

    def state(self, slot: int) -> RetentionState:
        """A one-row view of the slot's state (read it, then `write` the next one)."""
        row = self._row[slot]
        return self.rows(row, row + 1)

    @torch.inference_mode()
    def write(self, slot: int, state: RetentionState) -> None:
        """Copies a one-row state (any dtype or device) into the slot."""
        ours = [tuple(t[:, 0].shape) for t in self._tensors]
        theirs = [tuple(t[:, 0].shape) for t in state.tensors]
        if state.batch_size != 1 or ours != theirs:
            raise ValueError(f"state of shapes {[tuple(t.shape) for t in state.tensors]} does "
                             f"not fit this pool (one row of {ours})")
        row = self._row[slot]
        for mine, given in zip(self._tensors, state.tensors, strict=True):
            mine[:, row].copy_(given[:, 0])
        self.num_tokens[row : row + 1].copy_(state.num_tokens)

    load = write

    def export(self, slot: int, device="cpu") -> RetentionState:
        """A copy of the slot's state (a one-row RetentionState) that outlives the slot."""
        return self.state(slot).to(device, copy=True)
