"""Shared helpers for benchmarks: timing and the model they run on."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.config import ModelConfig
from engine.model import RetNet

# the shipped model's shape, used with random weights when no checkpoint is around
DEFAULT_SHAPE = ModelConfig(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4,
                            qk_dim=256, v_dim=512, ffn_dim=768)


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
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
