"""Continuous batching: admit waiting sequences into slots, split prompts into prefill pieces,
and put every sequence that feeds one token into the step's single decode batch."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from engine.engine_config import EngineConfig
from engine.errors import EngineOverloaded
from engine.sequence import Sequence, SequenceStatus
from engine.state_pool import StatePool


def prefill_piece_size(config: EngineConfig, chunk_size: int) -> int:
    """Prompt tokens per prefill piece: what the budget leaves beside a full decode batch,
    rounded down to whole chunks of the chunkwise form."""
    size = (config.max_num_batched_tokens - config.max_num_seqs) // chunk_size * chunk_size
    if size < 1:
        raise ValueError(f"max_num_batched_tokens must leave at least one chunk ({chunk_size} "
                         f"tokens) above max_num_seqs for prefill")
    return size


@dataclass
class ScheduledBatch:
    prefill: list[tuple[Sequence, int]]  # (sequence, number of prompt tokens), chunkwise
    decode: list[Sequence]  # one token each, in pool row order
    admitted: list[Sequence]  # newly given a slot this step

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)


class Scheduler:
    """Every step, each running sequence either feeds one token through the batched recurrent
    step or, while more than one prompt token is left, gets a chunkwise prefill piece.

    Pieces have a fixed size (`piece_size`, a multiple of the model's chunk) whatever else is
    running, so a prompt is split the same way alone or in a crowd (same numbers, same tokens),
    and one step never carries more than the token budget (a piece counts at least one chunk:
    many short prompts cost model calls): a long prompt, or a burst of short ones, delays
    running sequences by at most one budget per step.
    """

    def __init__(self, config: EngineConfig, pool: StatePool, chunk_size: int):
        self.config = config
        self.pool = pool
        self.max_num_seqs = min(config.max_num_seqs, pool.num_slots)
        self.chunk_size = chunk_size
        self.piece_size = prefill_piece_size(config, chunk_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order
        self._by_slot: dict[int, Sequence] = {}

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if not seq.is_admitted and len(self.waiting) >= self.config.max_waiting:
            raise EngineOverloaded(f"{len(self.waiting)} requests are waiting already")
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        admitted = self._admit()
        budget = self.config.max_num_batched_tokens - len(self.running)  # 1 per decode row
        prefill = []
        for seq in self.running:
            if seq.is_prefilling:
                num_tokens = min(seq.num_prefill_tokens_left, self.piece_size)
                cost = max(num_tokens, self.chunk_size)  # a model call costs at least a chunk
                if cost <= budget:
                    prefill.append((seq, num_tokens))
                    budget -= cost
        for seq, num_tokens in prefill:  # pieces that end the prompt decode in the same step
            if num_tokens == seq.num_prefill_tokens_left and not seq.is_prefill_only:
                self.pool.start_decoding(seq.slot)
        decode = [self._by_slot[slot] for slot in self.pool.decoding_slots]
        return ScheduledBatch(prefill=prefill, decode=decode, admitted=admitted)

    def _admit(self) -> list[Sequence]:
        admitted = []
        while (self.waiting and len(self.running) < self.max_num_seqs
               and self.pool.can_allocate()):
            seq = self.waiting.popleft()
            seq.slot = self.pool.allocate()
            if seq.initial_state is not None:
                self.pool.load(seq.slot, seq.initial_state)
                seq.initial_state = None
            if not seq.is_prefilling:
                self.pool.start_decoding(seq.slot)
            seq.status = SequenceStatus.RUNNING
            seq.scheduled_time = time.monotonic()
            self.running.append(seq)
            self._by_slot[seq.slot] = seq
            admitted.append(seq)
        return admitted

    def finish(self, seq: Sequence, reason: str) -> None:
        """Ends a sequence (its tail, if any, already fed) and frees its slot."""
        if seq.status is SequenceStatus.RUNNING:
            self.pool.free(seq.slot)
            del self._by_slot[seq.slot]
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.tail = None
        seq.finished_time = time.monotonic()
