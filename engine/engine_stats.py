"""What the engine has done so far: a snapshot for metrics and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_slots_used: int
    num_slots_total: int
    pool_bytes: int
    num_steps: int
    num_prefill_tokens: int  # fed chunkwise
    num_decode_tokens: int  # fed through the batched recurrent step
    last_batch_size: int  # decode rows in the last step
    last_step_seconds: float
    total_step_seconds: float
    # decode steps by batch size: decode_batch_sizes[b] steps ran b rows (b = 0: prefill only)
    decode_batch_sizes: tuple[int, ...] = ()
    num_forced_tokens: int = 0  # emitted because a grammar forced them (not sampled)
