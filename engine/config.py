"""Model configuration: one frozen dataclass covering the torchscale and fla RetNet variants."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    qk_dim: int = 256  # all heads together (torchscale: hidden_size; fla: hidden_size * expand_k)
    v_dim: int = 512  # all heads together (torchscale: decoder_value_embed_dim; fla: * expand_v)
    ffn_dim: int = 512
    ffn_activation: Literal["swish", "gelu"] = "swish"
    # torchscale rotates interleaved pairs with angle 1/10000**linspace(0,1,d/2) ("xpos");
    # fla uses rotate-half RoPE with 1/theta**(2i/d) ("rope").
    rotary: Literal["xpos", "rope"] = "xpos"
    rope_theta: float = 10000.0
    # torchscale divides the decay mask by sqrt(row sum), i.e. the state by sqrt(sum_j gamma^j);
    # fla does not normalise. Either way all three forms use the same one.
    state_norm: Literal["sqrt_decay_sum", "none"] = "sqrt_decay_sum"
    head_norm: Literal["rms", "group"] = "rms"  # per-head norm of the retention output
    head_norm_affine: bool = False  # torchscale: no weight; fla: weight [head_v_dim]
    norm_eps: float = 1e-6
    head_norm_eps: float | None = None  # defaults to norm_eps
    scale_embedding: bool = False  # multiply embeddings by sqrt(hidden_size)
    embed_norm: bool = False  # RMSNorm right after the embedding
    tie_embeddings: bool = False
    chunk_size: int = 64  # chunkwise prefill block
    # Causal depthwise convolution of this kernel size over the q/k/v projections (fla's
    # use_short_conv); 0 = none. It lets a key see the tokens just before it, which is how a
    # linear-attention model copies text it has seen once (induction). Its state is the last
    # kernel - 1 projected inputs per layer: fixed size, like the retention state.
    short_conv: int = 0
    short_conv_activation: Literal["silu", "none"] = "silu"  # fla applies SiLU after the conv
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.qk_dim % self.num_heads or self.v_dim % self.num_heads:
            raise ValueError("qk_dim and v_dim must be divisible by num_heads")
        if self.head_qk_dim % 2:
            raise ValueError("per-head key dim must be even for the rotation")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.short_conv == 1 or self.short_conv < 0:
            raise ValueError("short_conv must be 0 (none) or a kernel size >= 2")

    @property
    def head_qk_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def head_v_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def resolved_head_norm_eps(self) -> float:
        return self.norm_eps if self.head_norm_eps is None else self.head_norm_eps

    @property
    def conv_channels(self) -> int:
        """Channels of the short convolution: q, k and v projections side by side."""
        return 2 * self.qk_dim + self.v_dim

    @property
    def conv_state_width(self) -> int:
        return max(self.short_conv - 1, 0)

    @property
    def kv_numel(self) -> int:
        return self.num_layers * self.num_heads * self.head_qk_dim * self.head_v_dim

    @property
    def conv_numel(self) -> int:
        return self.num_layers * self.conv_channels * self.conv_state_width

    @property
    def state_numel(self) -> int:
        """Elements of one conversation's state: fixed by the config, never by its length."""
        return self.kv_numel + self.conv_numel

    def to_dict(self) -> dict:
        return {"model_type": "retserve-retnet", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = {k: v for k, v in data.items() if k != "model_type"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, ModelConfig] = {
    # shape of fla's RetNet 1.3B (hidden 2048, 24 layers, 8 heads, expand_k 1, expand_v 2)
    "1.3b": ModelConfig(
        vocab_size=32000, hidden_size=2048, num_layers=24, num_heads=8, qk_dim=2048, v_dim=4096,
        ffn_dim=3584, rotary="rope", state_norm="none", head_norm_affine=True, norm_eps=1e-6,
    ),
}
