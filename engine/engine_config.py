"""Engine settings: one frozen dataclass, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.dtypes import DTYPES

CPU_KERNELS = ("native", "onednn", "torch")  # engine/cpu_linear.py


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 256  # sequences holding a slot at once (decoding + prefilling)
    max_slots: int | None = None  # state slots; None: max_num_seqs, capped by free device memory
    max_num_batched_tokens: int = 2048  # per-step token budget: decode rows + prefill pieces
    max_waiting: int = 4096  # queued requests beyond which add_request raises EngineOverloaded
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # weights; None: bfloat16 on CUDA, float32 on CPU
    cuda_graphs: bool = True  # capture the decode step per bucket (CUDA only)
    # Decode batch sizes to pad to. None: 1, 2, 4, 8, then steps of 8 on CUDA; every size on CPU
    # (no padding). With cpu_kernels "native" or "onednn" every size is batch invariant: a row's
    # numbers do not depend on how many other rows the step has; with "torch" (MKL sgemm) only
    # multiples of 4 are.
    decode_buckets: tuple[int, ...] | None = None
    gpu_memory_utilization: float = 0.9  # share of free device memory the pool may take
    # torch CPU threads of the thread that runs the steps (AsyncEngine's); None: torch's default
    num_threads: int | None = None
    # CPU linears and recurrent step: "native" (retserve's kernels, built on first use; "onednn"
    # without a C compiler), "onednn" (prepacked linears), "torch" (MKL sgemm); engine/cpu_linear.py
    cpu_kernels: str = "native"
    # torch.compile (inductor) of the decode step with torch's kernels (cpu_kernels ignored),
    # one graph for every batch size, weights frozen: ~50 s at start-up. Slower than the
    # native kernels (1.16 vs 0.47 ms per step at 1 session, 13.0 vs 4.1 at 64 on the 2-core
    # AMD EPYC; `retserve bench decode --compile`): off.
    compile_decode: bool = False
    max_logprobs: int = 20
    # How tokens a grammar forces (engine/constraints.py) reach the state: "prefill" feeds them
    # chunkwise before the next decode step, like prompt tokens (one model call per sequence,
    # one step of latency); "decode" feeds one per decode step, riding the batch (no extra call,
    # a step per token). See `retserve bench constraints`.
    forced_tokens: str = "prefill"
    # AsyncEngine: tokens per output a stream receives after its first (always at once): above
    # 1, the serving thread handles one output per that many steps (vLLM's stream_interval)
    stream_interval: int = 1

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_waiting < 0:
            raise ValueError("max_num_seqs must be >= 1 and max_waiting >= 0")
        if self.max_slots is not None and self.max_slots < 1:
            raise ValueError("max_slots must be >= 1")
        if self.max_num_batched_tokens <= self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must exceed max_num_seqs "
                             "(every running sequence decodes one token per step)")
        if self.stream_interval < 1:
            raise ValueError("stream_interval must be >= 1")
        if self.cpu_kernels not in CPU_KERNELS:
            raise ValueError(f"cpu_kernels must be one of {CPU_KERNELS}")
        if self.forced_tokens not in ("prefill", "decode"):
            raise ValueError('forced_tokens must be "prefill" or "decode"')
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.decode_buckets is not None:
            buckets = self.decode_buckets
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError("decode_buckets must be increasing positive sizes")
            if buckets[-1] < self.max_num_seqs:
                raise ValueError("the largest decode bucket must hold max_num_seqs rows")

    @property
    def torch_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32

    @property
    def use_cuda_graphs(self) -> bool:
        return self.cuda_graphs and self.torch_device.type == "cuda"

    def resolved_buckets(self) -> tuple[int, ...]:
        if self.decode_buckets is not None:
            return self.decode_buckets
        if self.torch_device.type != "cuda":
            return tuple(range(1, self.max_num_seqs + 1))
        top = -(-self.max_num_seqs // 8) * 8
        return tuple(b for b in (1, 2, 4) if b < top) + tuple(range(8, top + 1, 8))
