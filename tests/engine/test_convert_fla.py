"""fla RetNet HF directory -> native: logits match fla's math, round trip, refusals.

The test writes its own fla-layout checkpoint (config.json with fla's field names, safetensors
with fla's keys, a tiny tokenizer): nothing is downloaded. The reference below is fla's math
written out directly from fla/models/retnet + fla/layers/multiscale_retention.py, sharing no
code with engine/: rotate-half RoPE, an explicit recurrence without normalisation and with q
scaled by head_k_dim**-0.5, a per-head RMSNorm with weight, swish gate, SwiGLU mlp; with
use_short_conv, three separate causal depthwise convs (q_conv1d, k_conv1d, v_conv1d: left zero
padding conv_size - 1, SiLU after, fla/modules/convolution.py) on the projections before rotary.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from model_forms import all_forms  # tests/engine is on sys.path (no __init__.py)
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from engine.checkpoint import CheckpointError, build_model, load_model, save_model
from engine.convert_fla import convert_fla
from server.cli import main as cli_main

TOL = 1e-4
BASE = dict(model_type="retnet", architectures=["RetNetForCausalLM"], vocab_size=50,
            hidden_size=32, num_hidden_layers=2, num_heads=2, expand_k=1, expand_v=2,
            hidden_ratio=2, intermediate_size=48, norm_eps=1e-6, hidden_act="swish",
            fuse_norm=True, elementwise_affine=True, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, attn_mode="chunk", torch_dtype="float32",
            transformers_version="4.45.0")


def _ffn_dim(c: dict) -> int:
    if c.get("intermediate_size") is not None:
        return c["intermediate_size"]
    return 256 * ((int(c["hidden_size"] * c["hidden_ratio"] * 2 / 3) + 255) // 256)


def fla_weights(c: dict, old_mlp: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under fla's names; norms around 1 so a swapped norm shows."""
    g = torch.Generator().manual_seed(seed)
    vocab, hid = c["vocab_size"], c["hidden_size"]
    dk, dv = int(hid * c["expand_k"]), int(hid * c["expand_v"])
    f, heads = _ffn_dim(c), c["num_heads"]
    conv_size = c.get("conv_size", 4)

    def rnd(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale or shape[-1] ** -0.5)

    def norm(n):
        return 1 + 0.2 * torch.randn(n, generator=g)

    w = {"model.embeddings.weight": rnd(vocab, hid, scale=1.0), "model.norm.weight": norm(hid)}
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(vocab, hid)
    gate_norm = "g_norm_swish_gate" if c["fuse_norm"] else "g_norm"
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "attn_norm.weight": norm(hid), p + "mlp_norm.weight": norm(hid),
              p + "attn.q_proj.weight": rnd(dk, hid), p + "attn.k_proj.weight": rnd(dk, hid),
              p + "attn.v_proj.weight": rnd(dv, hid), p + "attn.g_proj.weight": rnd(dv, hid),
              p + "attn.o_proj.weight": rnd(hid, dv), p + "mlp.down_proj.weight": rnd(hid, f)}
        if c["elementwise_affine"]:
            w[p + f"attn.{gate_norm}.weight"] = norm(dv // heads)
        if c.get("use_short_conv"):  # taps of size ~0.5 everywhere: every shift shows
            for name, dim in (("q", dk), ("k", dk), ("v", dv)):
                w[p + f"attn.{name}_conv1d.weight"] = rnd(dim, 1, conv_size, scale=0.5)
        if old_mlp:  # older fla RetNetMLP: gate_proj holds [gate; up]
            w[p + "mlp.gate_proj.weight"] = rnd(2 * f, hid)
        else:
            w[p + "mlp.gate_proj.weight"] = rnd(f, hid)
            w[p + "mlp.up_proj.weight"] = rnd(f, hid)
    return w


def write_fla_dir(path, overrides=None, *, old_mlp=False, shards=1, weights=None):
    c = {**BASE, **(overrides or {})}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(c))
    w = fla_weights(c, old_mlp) if weights is None else weights
    names = sorted(w)
    if shards == 1:
        save_file(w, str(path / "model.safetensors"))
    else:  # HF's sharded layout
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: w[n].contiguous() for n in names[s::shards]}
            save_file(part, str(path / fname))
            weight_map |= dict.fromkeys(part, fname)
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>",
                                                            "eos_token": "</s>"}))
    return c, w


def causal_conv_silu(x, weight):
    """fla ShortConvolution, written out: x [B, T, C], weight [C, 1, K] -> silu(causal conv)."""
    k = weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), weight, groups=x.shape[-1])
    return F.silu(y.transpose(1, 2))


def rms(x, weight, eps):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if weight is None else x * weight


@torch.no_grad()
def fla_reference_logits(c: dict, w: dict, tokens: torch.Tensor, old_mlp=False) -> torch.Tensor:
    eps, heads = c["norm_eps"], c["num_heads"]
    hidden = c["hidden_size"]
    dk, dv = int(hidden * c["expand_k"]) // heads, int(hidden * c["expand_v"]) // heads
    gate_norm = "g_norm_swish_gate" if c["fuse_norm"] else "g_norm"
    b, t = tokens.shape
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dk, 2, dtype=torch.float32) / dk)
    angle = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq  # [T, Dk/2]
    cos, sin = torch.cat([angle.cos()] * 2, -1)[:, None], torch.cat([angle.sin()] * 2, -1)[:, None]

    def rope(x):  # [B, T, H, Dk], GPT-NeoX halves
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    gamma = 1 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float32))
    x = w["model.embeddings.weight"][tokens]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "attn_norm.weight"], eps)
        q, k, v = (h @ w[p + f"attn.{n}_proj.weight"].T for n in "qkv")
        if c.get("use_short_conv"):
            q, k, v = (causal_conv_silu(y, w[p + f"attn.{n}_conv1d.weight"])
                       for n, y in zip("qkv", (q, k, v), strict=True))
        q = rope(q.view(b, t, heads, dk)) * dk**-0.5
        k = rope(k.view(b, t, heads, dk))
        v = v.view(b, t, heads, dv)
        state, outs = torch.zeros(b, heads, dk, dv), []
        for s in range(t):  # S_t = gamma S_{t-1} + k_t^T v_t ; o_t = q_t S_t
            state = gamma[None, :, None, None] * state + k[:, s, :, :, None] * v[:, s, :, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, s], state))
        o = rms(torch.stack(outs, 1), w.get(p + f"attn.{gate_norm}.weight"), eps).flatten(-2)
        x = x + (o * F.silu(h @ w[p + "attn.g_proj.weight"].T)) @ w[p + "attn.o_proj.weight"].T
        h = rms(x, w[p + "mlp_norm.weight"], eps)
        if old_mlp:
            gate, up = (h @ w[p + "mlp.gate_proj.weight"].T).chunk(2, -1)
        else:
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w["model.embeddings.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


CASES = {
    "default": ({}, {}),
    "tied-unfused-expand_k-half": (dict(tie_word_embeddings=True, fuse_norm=False, expand_k=0.5,
                                        num_heads=4, norm_eps=1e-5), {}),
    "old-mlp-no-affine-3layers": (dict(elementwise_affine=False, num_hidden_layers=3),
                                  dict(old_mlp=True)),
    "rounded-intermediate-sharded": (dict(intermediate_size=None, hidden_ratio=2),
                                     dict(shards=3)),
    "short-conv-default-size": (dict(use_short_conv=True), {}),
    "short-conv-k2-tied-unfused-sharded": (dict(use_short_conv=True, conv_size=2,
                                                tie_word_embeddings=True, fuse_norm=False,
                                                expand_k=0.5, num_heads=4), dict(shards=2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_fla_math(tmp_path, name):
    overrides, layout = CASES[name]
    c, w = write_fla_dir(tmp_path / "fla", overrides, **layout)
    config, sd, tok_files = convert_fla(tmp_path / "fla")
    assert {f.name for f in tok_files} == {"tokenizer.json", "tokenizer_config.json"}
    assert (config.rotary, config.state_norm, config.bos_token_id) == ("rope", "none", 1)
    if c["intermediate_size"] is None:
        assert config.ffn_dim == 256  # int(32 * 2 * 2/3) = 42, rounded up to 256 as fla does
    model = build_model(config, sd)
    tokens = torch.randint(0, c["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(3))
    ref = fla_reference_logits(c, w, tokens, old_mlp=layout.get("old_mlp", False))
    assert ref.abs().max() > 0.5
    for ours in all_forms(model, tokens):
        assert (ours - ref).abs().max().item() <= TOL
    if c.get("use_short_conv"):
        assert (config.short_conv, config.short_conv_activation) == (c.get("conv_size", 4),
                                                                      "silu")
        without = fla_reference_logits({**c, "use_short_conv": False}, w, tokens)
        assert (without - ref).abs().max() > 0.1  # the conv is visible in the logits


def test_short_conv_weights_and_forms(tmp_path):
    c, w = write_fla_dir(tmp_path / "fla", dict(use_short_conv=True, conv_size=3))
    config, sd, _ = convert_fla(tmp_path / "fla")
    assert config.conv_channels == 32 + 32 + 64
    for i in range(2):
        p = f"model.layers.{i}.attn."
        assert torch.equal(sd[f"layers.{i}.attn.qkv_conv.weight"], torch.cat(
            [w[p + "q_conv1d.weight"], w[p + "k_conv1d.weight"], w[p + "v_conv1d.weight"]]))
    model = build_model(config, sd)
    tokens = torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(5))
    parallel, steps, prefill = all_forms(model, tokens)
    assert (parallel - steps).abs().max().item() <= TOL
    assert (parallel - prefill).abs().max().item() <= TOL
    with torch.no_grad():  # prefill in pieces carries the conv state across calls
        first, state = model.prefill(tokens[:, :2])  # shorter than the kernel
        rest, _ = model.prefill(tokens[:, 2:], state)
    assert (torch.cat([first, rest], 1) - parallel).abs().max().item() <= TOL
    assert (parallel - fla_reference_logits(c, w, tokens)).abs().max().item() <= TOL


def test_round_trip_identical_logits(tmp_path):
    write_fla_dir(tmp_path / "fla")
    config, sd, _ = convert_fla(tmp_path / "fla")
    model = build_model(config, sd)
    save_model(model, tmp_path / "native")
    loaded = load_model(tmp_path / "native")
    assert loaded.config == config and loaded.fingerprint == model.fingerprint
    tokens = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded.forward_parallel(tokens), model.forward_parallel(tokens))


def _refuse(tmp_path, overrides=None, weights_edit=None, message=""):
    c = {**BASE, **(overrides or {})}
    w = fla_weights({**BASE, "use_short_conv": False, "num_kv_heads": None, **c})
    if weights_edit:
        weights_edit(w)
    write_fla_dir(tmp_path / "fla", overrides, weights=w)
    with pytest.raises(CheckpointError, match=message):
        convert_fla(tmp_path / "fla")


@pytest.mark.parametrize("overrides, message", [
    (dict(use_short_conv=True, conv_bias=True), "conv_bias"),
    (dict(use_short_conv=True, share_conv_kernel=True), "share_conv_kernel"),
    (dict(use_short_conv=True, conv_size=1), "conv_size"),
    (dict(feature_map="relu"), "feature_map"),
    (dict(num_kv_heads=1), "num_kv_heads"),
    (dict(use_output_gate=False), "use_output_gate"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attn={"layers": [1], "num_heads": 2}), "hybrid"),
    (dict(rope_theta=500000.0), "unknown keys"),
    (dict(model_type="llama"), "model_type"),
    (dict(decoder_embed_dim=32), "torchscale"),
])
def test_refuses_config(tmp_path, overrides, message):
    _refuse(tmp_path, overrides, message=message)


def test_conv_options_harmless_without_short_conv(tmp_path):
    write_fla_dir(tmp_path / "fla", dict(conv_bias=True, share_conv_kernel=True, conv_size=1))
    assert convert_fla(tmp_path / "fla")[0].short_conv == 0


def test_refuses_bad_conv_weights(tmp_path):
    conv = dict(use_short_conv=True)
    # stock fla: RetNetBlock drops use_short_conv, so the checkpoint has no convs
    _refuse(tmp_path / "a", conv, weights_edit=lambda w: [w.pop(k) for k in list(w)
                                                          if "_conv1d." in k],
            message="RetNetBlock does not pass use_short_conv")
    _refuse(tmp_path / "b", conv,
            weights_edit=lambda w: w.pop("model.layers.1.attn.v_conv1d.weight"),
            message=r"missing \(ours\)=\['layers.1.attn.qkv_conv.weight'\]")
    _refuse(tmp_path / "c", conv,  # q and v swapped: the total still adds up
            weights_edit=lambda w: w.update({
                "model.layers.0.attn.q_conv1d.weight": w["model.layers.0.attn.v_conv1d.weight"],
                "model.layers.0.attn.v_conv1d.weight": w["model.layers.0.attn.q_conv1d.weight"]}),
            message=r"q_conv1d.weight: \(64, 1, 4\) != \(32, 1, 4\)")
    _refuse(tmp_path / "d", conv,
            weights_edit=lambda w: w.update({"model.layers.0.attn.q_conv1d.bias": torch.zeros(32)}),
            message=r"unexpected=\['model.layers.0.attn.q_conv1d.bias'\]")
    _refuse(tmp_path / "e",  # conv weights while the config says no conv
            weights_edit=lambda w: w.update({"model.layers.0.attn.q_conv1d.weight":
                                             torch.zeros(32, 1, 4)}),
            message=r"unexpected=\['model.layers.0.attn.q_conv1d.weight'\]")


def test_refuses_bad_weights(tmp_path):
    _refuse(tmp_path / "a", weights_edit=lambda w: w.pop("model.layers.1.attn.k_proj.weight"),
            message=r"missing \(ours\)=\['layers.1.attn.k_proj.weight'\]")
    _refuse(tmp_path / "b", weights_edit=lambda w: w.update({"model.extra": torch.zeros(1)}),
            message=r"unexpected=\['model.extra'\]")
    _refuse(tmp_path / "c",
            weights_edit=lambda w: w.update({"model.layers.0.attn.v_proj.weight":
                                             torch.zeros(60, 32)}),
            message=r"layers.0.attn.v_proj.weight: \(60, 32\) != \(64, 32\)")
    _refuse(tmp_path / "d", dict(tie_word_embeddings=True),
            weights_edit=lambda w: w.update({"lm_head.weight": torch.zeros(50, 32)}),
            message="differs")


def test_cli(tmp_path, capsys):
    write_fla_dir(tmp_path / "fla")
    out = tmp_path / "native"
    assert cli_main(["convert", "fla", "--src", str(tmp_path / "fla"), "--out", str(out),
                     "--dtype", "bfloat16"]) == 0
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "fla/tokenizer.json").read_bytes()
    assert load_model(out).config.vocab_size == 50
    assert "bfloat16" in capsys.readouterr().out

    write_fla_dir(tmp_path / "bad", dict(feature_map="relu"))
    assert cli_main(["convert", "fla", "--src", str(tmp_path / "bad"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retserve convert: refused:") and "feature_map" in err
    assert len(err.splitlines()) == 1
