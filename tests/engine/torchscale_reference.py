"""An independent reference of torchscale 0.3.0's RetNetDecoder inference math (parallel and
recurrent paths), written for these tests; parameter names match torchscale's state_dict so
converted checkpoints can be compared.

Why not the package itself: it imports timm (-> torchvision, which won't install beside our
torch) and fairscale, only for training-time wrappers. Scope: eval mode (dropout and drop path
are identities), pre-norm blocks; deepnorm, post-norm, MoE, multiway, the chunkwise form and a
missing output layer raise. Weights are created in the same order torchscale creates them, so a
seeded build starts from the same values. Notation: b batch, h heads, t tokens, dk = d / h key
width per head, dv value width per head.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

# RetNetConfig's keyword defaults are facts about torchscale's API; one copy serves both.
from engine.convert_torchscale import DEFAULTS as RETNET_CONFIG_DEFAULTS  # noqa: E402

ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu, "relu": F.relu}


def RetNetConfig(**overrides) -> SimpleNamespace:
    """Defaults + overrides, then the config's norm rules: deepnorm switches pre-norm and subln
    off, subln (on by default) forces pre-norm and switches deepnorm off."""
    cfg = SimpleNamespace(**{**RETNET_CONFIG_DEFAULTS, **overrides})
    if cfg.deepnorm:
        cfg.decoder_normalize_before, cfg.subln = False, False
    if cfg.subln:
        cfg.decoder_normalize_before, cfg.deepnorm = True, False
    return cfg


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) over the last dim, in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_normalize(x, self.eps) * self.weight


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[2i], x[2i+1]) of the last dim by the angle whose cos/sin
    sit (twice) at positions 2i, 2i+1 of `cos` / `sin`."""
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 0::2]
    return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)


class RelativePosition(nn.Module):
    """Holds the two buffers torchscale stores: per-pair rotation frequencies (each repeated for
    both members of a pair, length dk) and per-head log decay log(1 - 2^(-5-h))."""

    def __init__(self, cfg):
        super().__init__()
        heads = cfg.decoder_retention_heads
        freqs = 1.0 / 10000 ** torch.linspace(0, 1, cfg.decoder_embed_dim // heads // 2)
        self.register_buffer("angle", freqs.repeat_interleave(2))
        self.register_buffer("decay", torch.log(1 - 2 ** (-5 - torch.arange(heads).float())))

    def parallel(self, t: int):
        """cos, sin (t, dk) and the decay matrix D (h, t, t): D[n, m] = gamma^(n-m) for m <= n,
        else 0, each row then divided by the square root of its sum."""
        pos = torch.arange(t).to(self.decay)
        phase = pos[:, None] * self.angle[None, :]
        d = torch.exp((pos[:, None] - pos[None, :]) * self.decay[:, None, None]).tril()
        return phase.cos(), phase.sin(), d / d.sum(-1, keepdim=True).sqrt()

    def step(self, n: int):
        """cos, sin (dk,) at position n, and the per-head decay gamma (h,)."""
        phase = self.angle * n
        return phase.cos(), phase.sin(), self.decay.exp()


def parallel_retention(q, k, v, d):
    """(q k^T ⊙ D), rows divided by max(1, |row sum|), times v. q, k: (b,h,t,dk); v: (b,h,t,dv)."""
    scores = (q @ k.transpose(-1, -2)) * d
    scores = scores / scores.sum(-1, keepdim=True).abs().clamp(min=1)
    return scores @ v


def recurrent_retention(q, k, v, gamma, state: dict):
    """One token. q, k: (b,h,dk); v: (b,h,dv). The state holds S = sum of decayed v k^T, stored
    (b,h,dv,dk), and a per-head running scale c: c' = c*gamma + 1,
    S' = S*sqrt(c)*gamma/sqrt(c') + v k^T/sqrt(c'). Output: S q, (b,h,dv)."""
    kv = v.unsqueeze(-1) * k.unsqueeze(-2)
    if state:
        c = state["scale"]
        c_new = c * gamma + 1
        kv = (state["kv"] * (c.sqrt() * gamma / c_new.sqrt())[:, None, None]
              + kv / c_new.sqrt()[:, None, None])
    else:
        c_new = torch.ones_like(gamma)
    state.update(kv=kv, scale=c_new)
    return (kv * q.unsqueeze(-2)).sum(-1)


class Retention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, v = cfg.decoder_embed_dim, cfg.decoder_value_embed_dim
        self.heads, self.eps = cfg.decoder_retention_heads, cfg.layernorm_eps
        self.k_scale = (d // self.heads) ** -0.5
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.v_proj, self.g_proj = nn.Linear(d, v, bias=False), nn.Linear(d, v, bias=False)
        self.out_proj = nn.Linear(v, d, bias=False)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj):
            gain = 1.0 if proj is self.out_proj else 2**-2.5
            nn.init.xavier_uniform_(proj.weight, gain=gain)

    def forward(self, x, rel, state):
        b, t, _ = x.shape
        cos, sin, mix = rel

        def heads(y):  # (b, t, h*w) -> (b, h, t, w)
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        q = rotate_pairs(heads(self.q_proj(x)), cos, sin)
        k = rotate_pairs(heads(self.k_proj(x) * self.k_scale), cos, sin)
        v = heads(self.v_proj(x))
        if state is None:
            out = parallel_retention(q, k, v, mix)
        else:
            out = recurrent_retention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mix, state)[:, :, None]
        out = rms_normalize(out, self.eps).transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(F.silu(self.g_proj(x)) * out)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim
        self.act = ACTIVATIONS[cfg.activation_fn]
        self.retention = Retention(cfg)
        self.retention_layer_norm = RMSNorm(d, cfg.layernorm_eps)
        self.ffn = nn.ModuleDict(dict(fc1=nn.Linear(d, f, bias=False),
                                      fc2=nn.Linear(f, d, bias=False),
                                      gate=nn.Linear(d, f, bias=False)))
        self.final_layer_norm = RMSNorm(d, cfg.layernorm_eps)

    def forward(self, x, rel, state):
        x = x + self.retention(self.retention_layer_norm(x), rel, state)
        y = self.final_layer_norm(x)
        hidden = self.ffn["fc1"](y)
        hidden = self.act(hidden.float()).type_as(hidden) * self.ffn["gate"](y)
        return x + self.ffn["fc2"](hidden)


class RetNetDecoder(nn.Module):
    def __init__(self, cfg, embed_tokens: nn.Embedding):
        super().__init__()
        refused = dict(deepnorm=cfg.deepnorm, post_norm=not cfg.decoder_normalize_before,
                       moe=cfg.moe_freq > 0, multiway=cfg.multiway,
                       chunkwise=cfg.chunkwise_recurrent,
                       no_output_layer=cfg.no_output_layer or cfg.vocab_size <= 0)
        if any(refused.values()):
            names = [name for name, hit in refused.items() if hit]
            raise NotImplementedError(f"outside this reference: {names}")
        d = cfg.decoder_embed_dim
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(d)
        self.embed_tokens = embed_tokens
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=d**-0.5)
        if cfg.layernorm_embedding:
            self.layernorm_embedding = RMSNorm(d, cfg.layernorm_eps)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = RMSNorm(d, cfg.layernorm_eps)
        self.retnet_rel_pos = RelativePosition(cfg)

    def forward(self, tokens, incremental_state: dict | None = None):
        """Parallel form: logits (b, t, vocab) for every token. With `incremental_state` (a dict,
        empty before the first token) it is fairseq-style incremental decoding: `tokens` is the
        prefix so far, only its last token is run, at position t-1, through the recurrent form,
        and (b, 1, vocab) comes back. Returns (logits, {"inner_states": [...]})."""
        if incremental_state is None:
            rel, states = self.retnet_rel_pos.parallel(tokens.shape[1]), [None] * len(self.layers)
        else:
            rel = self.retnet_rel_pos.step(tokens.shape[1] - 1)
            states = [incremental_state.setdefault(i, {}) for i in range(len(self.layers))]
            tokens = tokens[:, -1:]
        x = self.embed_tokens(tokens) * self.embed_scale
        if hasattr(self, "layernorm_embedding"):
            x = self.layernorm_embedding(x)
        hidden = [x]
        for layer, state in zip(self.layers, states, strict=True):
            x = layer(x, rel, state)
            hidden.append(x)
        return self.output_projection(self.layer_norm(x)), {"inner_states": hidden}
