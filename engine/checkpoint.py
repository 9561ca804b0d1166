"""Native checkpoints: a directory with config.json, model.safetensors and tokenizer files."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig
from engine.model import RetNet

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "retnet-tiny-chat"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: named tensors or config keys say why."""


def check_state_dict(model: RetNet, state_dict: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint tensors do not fit the config: missing={missing[:8]} "
                              f"unexpected={unexpected[:8]}")
    wrong = [f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if state_dict[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"shape mismatch: {wrong[:8]}")


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor], device="cpu",
                dtype: torch.dtype = torch.float32) -> RetNet:
    """A model with exactly these weights (refused if they don't match the config)."""
    with torch.device("meta"):
        model = RetNet(config)
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_model(path: str | Path | None = None, device="cpu",
               dtype: torch.dtype = torch.float32) -> RetNet:
    path = Path(path) if path else DEFAULT_MODEL_DIR
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path} is not a retserve checkpoint "
                              f"(needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = ModelConfig.load(path / CONFIG_FILE)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from e
    return build_model(config, load_file(str(path / WEIGHTS_FILE)), device, dtype)


def save_model(model: RetNet, path: str | Path) -> None:
    """Writes config.json and model.safetensors (tied weights stored once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / CONFIG_FILE)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
