"""What callers of an engine read about it, wherever the engine runs (a thread or a process of
its own): the model's shape and identity, the pool's size and dtype, the engine's settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ModelConfig
from engine.engine_config import EngineConfig


@dataclass(frozen=True)
class EngineInfo:
    model_config: ModelConfig
    model_fingerprint: str
    state_dtype: torch.dtype  # of the pool's states, and of the states requests exchange
    num_slots: int
    config: EngineConfig
