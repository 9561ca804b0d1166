"""Convert a torchscale 0.3.0 RetNet (RetNetConfig kwargs + RetNetDecoder.state_dict()) to ours.

torchscale's decoder is pre-norm RMSNorm blocks, interleaved-pair rotation ("xpos" here), decay
masks normalised by sqrt(sum of decays) ("sqrt_decay_sum"), a non-affine per-head RMSNorm and a
GLU ffn act(fc1 x) * gate x -> fc2. Anything in the config that would change that math and that
we don't implement is refused, never silently dropped.
"""

from __future__ import annotations

import torch

from engine.checkpoint import CheckpointError
from engine.config import ModelConfig

# RetNetConfig.__init__ defaults (torchscale/architecture/config.py, 0.3.0)
DEFAULTS: dict = dict(
    decoder_embed_dim=768, decoder_value_embed_dim=1280, decoder_retention_heads=3,
    decoder_ffn_embed_dim=1280, decoder_layers=12, decoder_normalize_before=True,
    activation_fn="gelu", dropout=0.0, drop_path_rate=0.0, activation_dropout=0.0,
    no_scale_embedding=True, layernorm_embedding=False, moe_freq=0, moe_top1_expert=False,
    moe_expert_count=0, moe_gating_use_fp32=True, moe_eval_capacity_token_fraction=0.25,
    moe_second_expert_policy="random", moe_normalize_gate_prob_before_dropping=False,
    use_xmoe=False, rel_pos_buckets=0, max_rel_pos=0, deepnorm=False, subln=True,
    multiway=False, share_decoder_input_output_embed=False, max_target_positions=1024,
    no_output_layer=False, layernorm_eps=1e-6, chunkwise_recurrent=False,
    recurrent_chunk_size=512, vocab_size=-1, checkpoint_activations=False, fsdp=False,
    ddp_rank=0, xpos_rel_pos=False, xpos_scale_base=512,
)
# Keys RetNetDecoder never reads, or reads only for training / another equivalent form:
# dropout & drop path are identity at inference, checkpointing/fsdp wrap without renaming,
# xpos_* / rel_pos_* / max_* belong to the Transformer decoder, chunkwise_recurrent picks a form
# (ours choose their own), moe_* only matter with moe_freq > 0 (refused below). `subln` is read
# only by RetNetConfig itself, to force decoder_normalize_before=True.
# Every other key (dims, heads, layers, vocab, activation, eps, embedding and output options,
# deepnorm, multiway, moe_freq, use_xmoe, no_output_layer, normalize_before) is checked below.

LAYER_MAP = {  # torchscale name in layers.N -> ours
    "retention.q_proj.weight": "attn.q_proj.weight",
    "retention.k_proj.weight": "attn.k_proj.weight",
    "retention.v_proj.weight": "attn.v_proj.weight",
    "retention.g_proj.weight": "attn.g_proj.weight",
    "retention.out_proj.weight": "attn.o_proj.weight",
    "retention_layer_norm.weight": "attn_norm.weight",
    "ffn.fc1.weight": "ffn.gate_proj.weight",  # the activated branch
    "ffn.gate.weight": "ffn.up_proj.weight",  # the linear branch
    "ffn.fc2.weight": "ffn.down_proj.weight",
    "final_layer_norm.weight": "ffn_norm.weight",
}
REL_POS_BUFFERS = ("retnet_rel_pos.angle", "retnet_rel_pos.decay")  # recomputed, only checked


def resolve_config(config_json: dict) -> dict:
    """RetNetConfig's defaults and post-processing, then refusal of what we can't run."""
    unknown = sorted(set(config_json) - set(DEFAULTS))
    if unknown:
        raise CheckpointError(f"torchscale config: unknown keys {unknown} (not RetNetConfig 0.3.0 "
                              "keyword names; refusing rather than guessing what they change)")
    a = {**DEFAULTS, **config_json}
    if a["deepnorm"]:  # same order as RetNetConfig.__init__
        a["decoder_normalize_before"], a["subln"] = False, False
    if a["subln"]:
        a["decoder_normalize_before"], a["deepnorm"] = True, False
    refusals = {
        "deepnorm": a["deepnorm"],  # residual * alpha, post-norm
        "decoder_normalize_before=False (post-norm blocks)": not a["decoder_normalize_before"],
        "moe_freq > 0 (mixture-of-experts ffn)": a["moe_freq"] != 0,
        "use_xmoe": a["use_xmoe"],
        "multiway": a["multiway"],
        "no_output_layer (no logits)": a["no_output_layer"],
        "vocab_size <= 0 (no output projection)": a["vocab_size"] <= 0,
    }
    bad = [name for name, hit in refusals.items() if hit]
    if bad:
        raise CheckpointError(f"torchscale config uses what retserve does not implement: {bad}")
    if a["activation_fn"] not in ("gelu", "swish"):
        raise CheckpointError(f"torchscale config: activation_fn {a['activation_fn']!r} "
                              "not supported (gelu, swish)")
    return a


def to_model_config(a: dict) -> ModelConfig:
    try:
        return ModelConfig(
            vocab_size=a["vocab_size"], hidden_size=a["decoder_embed_dim"],
            num_layers=a["decoder_layers"], num_heads=a["decoder_retention_heads"],
            qk_dim=a["decoder_embed_dim"], v_dim=a["decoder_value_embed_dim"],
            ffn_dim=a["decoder_ffn_embed_dim"], ffn_activation=a["activation_fn"],
            rotary="xpos", state_norm="sqrt_decay_sum", head_norm="rms", head_norm_affine=False,
            norm_eps=a["layernorm_eps"], scale_embedding=not a["no_scale_embedding"],
            embed_norm=a["layernorm_embedding"],
            tie_embeddings=a["share_decoder_input_output_embed"],
        )
    except ValueError as e:
        raise CheckpointError(f"torchscale config: {e}") from e


def expected_shapes(a: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor RetNetDecoder(args, embed_tokens=Embedding) has, by torchscale name."""
    d, dv, f, v = (a["decoder_embed_dim"], a["decoder_value_embed_dim"],
                   a["decoder_ffn_embed_dim"], a["vocab_size"])
    layer = {"retention.q_proj.weight": (d, d), "retention.k_proj.weight": (d, d),
             "retention.v_proj.weight": (dv, d), "retention.g_proj.weight": (dv, d),
             "retention.out_proj.weight": (d, dv), "retention_layer_norm.weight": (d,),
             "ffn.fc1.weight": (f, d), "ffn.gate.weight": (f, d), "ffn.fc2.weight": (d, f),
             "final_layer_norm.weight": (d,)}
    shapes = {f"layers.{i}.{k}": s for i in range(a["decoder_layers"]) for k, s in layer.items()}
    shapes |= {"embed_tokens.weight": (v, d), "layer_norm.weight": (d,),
               "output_projection.weight": (v, d)}
    if a["layernorm_embedding"]:
        shapes["layernorm_embedding.weight"] = (d,)
    return shapes


def _check_rel_pos(sd: dict, a: dict) -> None:
    """The stored angle/decay buffers must be what torchscale builds from this config: a cheap
    proof that heads and key dim agree with the weights' author."""
    heads = a["decoder_retention_heads"]
    half = a["decoder_embed_dim"] // heads // 2
    angle = (1.0 / 10000 ** torch.linspace(0, 1, half)).repeat_interleave(2)
    decay = torch.log(1 - 2 ** (-5 - torch.arange(heads, dtype=torch.float)))
    for name, want in zip(REL_POS_BUFFERS, (angle, decay), strict=True):
        got = sd.get(name)
        if got is not None and (got.shape != want.shape
                                or not torch.allclose(got.float(), want, atol=1e-6)):
            raise CheckpointError(f"{name} does not match the config's heads/key dim "
                                  f"(shape {tuple(got.shape)} vs {tuple(want.shape)})")


def convert_torchscale(config_json: dict, state_dict: dict[str, torch.Tensor]
                       ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    a = resolve_config(config_json)
    config = to_model_config(a)
    # a fairseq RetNet LM's state dict is the decoder's under "decoder."
    if state_dict and all(k.startswith("decoder.") for k in state_dict):
        state_dict = {k.removeprefix("decoder."): v for k, v in state_dict.items()}
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"torchscale state dict: not tensors: {not_tensors[:8]}")
    shapes = expected_shapes(a)
    tied = config.tie_embeddings
    optional = {*REL_POS_BUFFERS} | ({"output_projection.weight"} if tied else set())
    missing = sorted(set(shapes) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(shapes) - optional)
    if missing or unexpected:
        raise CheckpointError(f"torchscale state dict does not fit the config: "
                              f"missing={missing[:8]} unexpected={unexpected[:8]}")
    wrong = [f"{k}: {tuple(t.shape)} != {shapes[k]}" for k, t in state_dict.items()
             if k in shapes and tuple(t.shape) != shapes[k]]
    if wrong:
        raise CheckpointError(f"torchscale state dict shape mismatch: {wrong[:8]}")
    _check_rel_pos(state_dict, a)
    if tied and "output_projection.weight" in state_dict and not torch.equal(
            state_dict["output_projection.weight"], state_dict["embed_tokens.weight"]):
        raise CheckpointError("share_decoder_input_output_embed=True but output_projection "
                              "differs from embed_tokens")

    out = {"embed_tokens.weight": state_dict["embed_tokens.weight"],
           "norm.weight": state_dict["layer_norm.weight"]}
    if config.embed_norm:
        out["embed_norm.weight"] = state_dict["layernorm_embedding.weight"]
    if not tied:
        out["lm_head.weight"] = state_dict["output_projection.weight"]
    for i in range(config.num_layers):
        for src, dst in LAYER_MAP.items():
            out[f"layers.{i}.{dst}"] = state_dict[f"layers.{i}.{src}"]
    return config, out

