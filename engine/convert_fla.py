"""Convert a flash-linear-attention (fla) RetNet HF directory to our native checkpoint.

fla's RetNet (fla/models/retnet, fla/layers/multiscale_retention.py): pre-norm RMSNorm blocks,
rotate-half RoPE (base 10000) on head_k_dim, unnormalised retention with q scaled by
head_k_dim**-0.5 (we scale k: same product), per-head RMSNorm with a weight, swish output gate,
SwiGLU mlp. Options that change that math and that we don't implement are refused.

use_short_conv=True (fla/modules/convolution.py ShortConvolution): three depthwise causal convs
q_conv1d, k_conv1d, v_conv1d (weights [C, 1, conv_size], left zero padding, SiLU after, no bias
unless conv_bias) on the q/k/v projections, before the head split and rotary. Depthwise convs
side by side are one conv over cat([q, k, v]): our attn.qkv_conv, whose weight is the three
weights concatenated along dim 0 (short_conv=conv_size, short_conv_activation="silu").
Refused with it: conv_bias=True, share_conv_kernel=True (older fla: one conv over the hidden
states), and a config that asks for the conv while the weights hold none: fla's own RetNetBlock
passes neither use_short_conv nor conv_size to its MultiScaleRetention, so a stock fla RetNet
never builds the convs whatever config.json says (set use_short_conv to false to convert it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.checkpoint import CheckpointError, check_state_dict
from engine.config import ModelConfig
from engine.model import RetNet

# fla RetNetConfig.__init__ defaults (fla/models/retnet/configuration_retnet.py)
DEFAULTS: dict = dict(
    attn_mode="chunk", hidden_size=2048, expand_k=1.0, expand_v=2.0, hidden_ratio=2,
    intermediate_size=None, num_hidden_layers=24, num_heads=8, num_kv_heads=None,
    feature_map=None, hidden_act="swish", use_short_conv=False, conv_size=4,
    use_output_gate=True, max_position_embeddings=2048, elementwise_affine=True, norm_eps=1e-6,
    attn=None, use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False, initializer_range=0.02, fuse_norm=True, fuse_swiglu=True,
    fuse_cross_entropy=True, fuse_linear_cross_entropy=False, use_l2warp=False, vocab_size=32000,
)
# Keys that never change inference math: kernel choices (attn_mode, fuse_*), training-only
# options, the rotary cache length, the conv options other fla layers take (conv_bias,
# share_conv_kernel: checked in resolve_config when use_short_conv is on; conv_size is used
# only then), and PretrainedConfig bookkeeping.
HARMLESS = {
    "attn_mode", "fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "fuse_linear_cross_entropy",
    "use_l2warp", "initializer_range", "use_cache", "max_position_embeddings", "conv_size",
    "conv_bias", "share_conv_kernel", "pad_token_id",
    "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
    "_name_or_path", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "is_decoder", "is_encoder_decoder", "tokenizer_class", "id2label",
    "label2id", "problem_type", "chunk_size_feed_forward", "pruned_heads", "tie_encoder_decoder",
    "add_cross_attention", "finetuning_task", "prefix", "sep_token_id", "unk_token_id",
    "decoder_start_token_id", "task_specific_params",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


def _intermediate_size(c: dict) -> int:
    """fla GatedMLP: a multiple of 256 near 2/3 * hidden * hidden_ratio unless given."""
    if c["intermediate_size"] is not None:
        return int(c["intermediate_size"])
    ratio = 4 if c["hidden_ratio"] is None else c["hidden_ratio"]
    size = int(c["hidden_size"] * ratio * 2 / 3)
    return 256 * ((size + 256 - 1) // 256)


def resolve_config(config_json: dict) -> dict:
    model_type = config_json.get("model_type")
    if model_type != "retnet":
        raise CheckpointError(f"not an fla RetNet config: model_type={model_type!r}")
    if "decoder_embed_dim" in config_json:
        raise CheckpointError("config.json has torchscale-style keys (decoder_embed_dim): not an "
                              "fla RetNet; use `retserve convert torchscale`")
    unknown = sorted(set(config_json) - set(DEFAULTS) - HARMLESS)
    if unknown:
        raise CheckpointError(f"fla config: unknown keys {unknown} (refusing rather than "
                              "guessing what they change)")
    c = {**DEFAULTS, **config_json}
    kv_heads = c["num_kv_heads"]
    conv = bool(c["use_short_conv"])
    conv_size = c["conv_size"]
    refusals = {
        "conv_bias=True (short conv with a bias)": conv and bool(c.get("conv_bias")),
        "share_conv_kernel=True (one short conv over the hidden states)":
            conv and bool(c.get("share_conv_kernel")),
        f"conv_size={conv_size!r} (short conv kernel must be an integer >= 2)":
            conv and not (isinstance(conv_size, int) and not isinstance(conv_size, bool)
                          and conv_size >= 2),
        "feature_map": c["feature_map"] is not None,
        "num_kv_heads != num_heads (grouped keys/values)": kv_heads not in (None, c["num_heads"]),
        "use_output_gate=False": not c["use_output_gate"],
        "attn (hybrid softmax-attention layers)": c["attn"] is not None,
        # hidden_act is both the output gate's and the mlp's activation in fla
        f"hidden_act={c['hidden_act']!r} (only swish)": c["hidden_act"] not in ("swish", "silu"),
    }
    bad = [name for name, hit in refusals.items() if hit]
    if bad:
        raise CheckpointError(f"fla config uses what retserve does not implement: {bad}")
    return c


def to_model_config(c: dict) -> ModelConfig:
    key_dim, value_dim = c["hidden_size"] * c["expand_k"], c["hidden_size"] * c["expand_v"]
    if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
        raise CheckpointError("fla config: hidden_size * expand_k/expand_v must be integers")
    try:
        return ModelConfig(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
            num_layers=c["num_hidden_layers"], num_heads=c["num_heads"],
            qk_dim=round(key_dim), v_dim=round(value_dim), ffn_dim=_intermediate_size(c),
            ffn_activation="swish", rotary="rope", rope_theta=10000.0, state_norm="none",
            head_norm="rms", head_norm_affine=bool(c["elementwise_affine"]),
            short_conv=c["conv_size"] if c["use_short_conv"] else 0,
            short_conv_activation="silu",
            norm_eps=c["norm_eps"], scale_embedding=False, embed_norm=False,
            tie_embeddings=bool(c["tie_word_embeddings"]),
            bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"],
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"fla config: {e}") from e


def load_weights(src: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    index = src / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(load_file(str(src / shard)))
            return weights
        if (src / "model.safetensors").is_file():
            return load_file(str(src / "model.safetensors"))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{src}: cannot read the weights: {e!r}") from e
    raise CheckpointError(f"{src}: no model.safetensors(.index.json) (pytorch_model.bin is not "
                          "read: convert it to safetensors first)")


def map_weights(c: dict, config: ModelConfig, w: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    w = dict(w)
    out = {"embed_tokens.weight": w.pop("model.embeddings.weight", None),
           "norm.weight": w.pop("model.norm.weight", None)}
    lm_head = w.pop("lm_head.weight", None)
    if config.tie_embeddings:  # HF usually drops the tied copy; if kept it must be the same
        if lm_head is not None and out["embed_tokens.weight"] is not None and not torch.equal(
                lm_head, out["embed_tokens.weight"]):
            raise CheckpointError("tie_word_embeddings=True but lm_head.weight differs from "
                                  "model.embeddings.weight")
    else:
        out["lm_head.weight"] = lm_head
    # fused_norm+swish gate is g_norm_swish_gate; the unfused path is g_norm: same math
    gate_norm = "g_norm_swish_gate" if c["fuse_norm"] else "g_norm"
    if config.short_conv and not any("_conv1d." in k for k in w):
        raise CheckpointError(
            "fla config has use_short_conv=True but the weights hold no q/k/v_conv1d: fla's "
            "RetNetBlock does not pass use_short_conv to its layers, so this model ran without "
            "the convolution; set use_short_conv to false in config.json to convert it")
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        names = {"attn_norm.weight": "attn_norm.weight", "mlp_norm.weight": "ffn_norm.weight",
                 "mlp.down_proj.weight": "ffn.down_proj.weight"}
        names |= {f"attn.{p}_proj.weight": f"attn.{p}_proj.weight" for p in "qkvgo"}
        if config.head_norm_affine:
            names[f"attn.{gate_norm}.weight"] = "attn.head_norm.rms.weight"
        for s, d in names.items():
            out[dst + d] = w.pop(src + s, None)
        gate = w.pop(src + "mlp.gate_proj.weight", None)
        up = w.pop(src + "mlp.up_proj.weight", None)
        if up is None and gate is not None and gate.shape[0] == 2 * config.ffn_dim:
            gate, up = gate.chunk(2, dim=0)  # older fla: one gate_proj, chunk(2) -> gate, up
        out[dst + "ffn.gate_proj.weight"], out[dst + "ffn.up_proj.weight"] = gate, up
        if config.short_conv:
            out[dst + "attn.qkv_conv.weight"] = _qkv_conv(config, w, src + "attn.")
    missing = sorted(k for k, v in out.items() if v is None)
    if missing or w:
        raise CheckpointError(f"fla weights do not fit the config: missing (ours)={missing[:8]} "
                              f"unexpected={sorted(w)[:8]}")
    return out


def _qkv_conv(config: ModelConfig, w: dict[str, torch.Tensor], prefix: str
              ) -> torch.Tensor | None:
    """fla's q/k/v_conv1d weights (popped from w) -> our qkv_conv weight [2*Dqk+Dv, 1, K]:
    depthwise convs side by side are one depthwise conv over cat([q, k, v]). Shapes are checked
    one by one: a wrong split could still add up to the right total."""
    parts = [w.pop(f"{prefix}{p}_conv1d.weight", None) for p in "qkv"]
    if any(t is None for t in parts):
        return None  # reported as missing (ours)
    for p, t, dim in zip("qkv", parts, (config.qk_dim, config.qk_dim, config.v_dim),
                         strict=True):
        if tuple(t.shape) != (dim, 1, config.short_conv):
            raise CheckpointError(f"{prefix}{p}_conv1d.weight: {tuple(t.shape)} != "
                                  f"{(dim, 1, config.short_conv)}")
    return torch.cat(parts, dim=0)


def convert_fla(src_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], list[Path]]:
    """-> our config, our state dict and the tokenizer files in src_dir to copy along."""
    src = Path(src_dir)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json")
    try:
        config_json = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{src / 'config.json'}: {e}") from e
    c = resolve_config(config_json)
    config = to_model_config(c)
    state_dict = map_weights(c, config, load_weights(src))
    with torch.device("meta"):
        check_state_dict(RetNet(config), state_dict)  # shapes, named by our keys
    tokenizer_files = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    return config, state_dict, tokenizer_files
