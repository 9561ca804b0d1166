"""Shared helpers for benchmarks: timing and the model they run on."""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable

import torch

from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.config import ModelConfig
from engine.model import RetNet

# the shipped model's shape (models/retnet-tiny-chat), used with random weights without it
DEFAULT_SHAPE = ModelConfig(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8,
                            qk_dim=256, v_dim=512, ffn_dim=768, tie_embeddings=True,
                            short_conv=4, short_conv_activation="none")


def bench_model(config: ModelConfig | None = None, device="cpu",
                dtype: torch.dtype = torch.float32) -> tuple[RetNet, str]:
    """The shipped model if present (and no config is asked for), else random weights."""
    if config is None and (DEFAULT_MODEL_DIR / "config.json").is_file():
        return load_model(DEFAULT_MODEL_DIR, device, dtype), str(DEFAULT_MODEL_DIR)
    torch.manual_seed(0)
    model = RetNet(config or DEFAULT_SHAPE).to(device=device, dtype=dtype).eval()
    return model.requires_grad_(False), "random weights"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int, device="cpu", warmup: int = 1
              ) -> list[float]:
    """Wall seconds of each of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in (0, 100]: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rss_bytes() -> int:
    """Resident memory of this process (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_stats() -> dict:
    """glibc's heap figures (all arenas): bytes in use, free inside the heaps, mmap'd; {} where
    mallinfo2 is missing (not glibc, or older than 2.33)."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"heap_in_use_bytes": info.uordblks, "heap_free_bytes": info.fordblks,
            "mmap_bytes": info.hblkhd}
