"""RetNet causal LM (torchscale and fla variants) with parallel, chunkwise and recurrent forms.

Read next to "Retentive Network: A Successor to Transformer for Large Language Models" (Sun et
al., 2023). Shapes: B batch, T tokens, D hidden, H heads, Dk/Dv per-head key/value dims, L layers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import xxhash
from torch import Tensor, nn

from engine import retention
from engine.config import ModelConfig
from engine.fused_linear import fused_linear
from engine.rotary import inv_frequencies, rotate, rotation
from engine.state import RetentionState


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # retention math and norms never run below fp32
    return torch.float64 if dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(_acc_dtype(x.dtype))
        weight = None if self.weight is None else self.weight.to(xf.dtype)
        return F.rms_norm(xf, (xf.shape[-1],), weight, self.eps)


class HeadNorm(nn.Module):
    """Per-head norm of the retention output: RMSNorm (torchscale, fla) or GroupNorm (paper)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, self.eps = config.head_norm, config.resolved_head_norm_eps
        if self.kind == "rms":
            self.rms = RMSNorm(config.head_v_dim, self.eps, config.head_norm_affine)
        else:  # GroupNorm(num_heads, v_dim): affine over all channels
            self.weight = nn.Parameter(torch.ones(config.v_dim))
            self.bias = nn.Parameter(torch.zeros(config.v_dim))

    def forward(self, o: Tensor) -> Tensor:  # o: [..., H, Dv] -> [..., H * Dv] in fp32
        if self.kind == "rms":
            return self.rms(o).flatten(-2)
        o = o - o.mean(-1, keepdim=True)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps)
        return o.flatten(-2) * self.weight.to(o.dtype) + self.bias.to(o.dtype)


class ShortConv(nn.Module):
    """Causal depthwise convolution over time (fla's ShortConvolution), carried across calls.

    The state is the last K-1 inputs per channel, so feeding a sequence in pieces (or one token
    at a time) gives exactly the output of feeding it whole; a new conversation starts from zeros,
    the same as left zero padding.
    """

    def __init__(self, channels: int, kernel_size: int, activation: str):
        super().__init__()
        # nn.Conv1d layout [C, 1, K]; starts as the identity (current token only), so a model
        # given a convolution computes what it computed without one until training moves it
        weight = torch.zeros(channels, 1, kernel_size)
        weight[:, :, -1] = 1.0
        self.weight = nn.Parameter(weight)
        self.activation = activation

    def forward(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: [B, T, C]; state: [B, K-1, C] or None (zeros) -> y [B, T, C], new state.

        A multiply-add per tap over the window, not F.conv1d: oneDNN would build and cache a
        convolution per length T (a server's memory grows with every new prompt length), and
        a one-token step is four fused multiply-adds over [B, C]."""
        kernel = self.weight.shape[-1]
        t = x.shape[1]
        if state is None:
            state = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
        window = torch.cat([state.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
        y = self._taps([window[:, j : j + t] for j in range(kernel)])
        return y, window[:, t:]

    def step_(self, x: Tensor, state: Tensor) -> Tensor:
        """One token per row, x: [B, 1, C]; state [B, K-1, C] shifted in place -> y [B, 1, C].
        The numbers of `forward`, without building the window: a decode step's temporary of
        a window per layer was its slowest op at 64 rows (fresh memory every step)."""
        kernel = self.weight.shape[-1]
        y = self._taps([state[:, j : j + 1].to(x.dtype) for j in range(kernel - 1)] + [x])
        for j in range(kernel - 2):  # oldest input out, the new one in
            state[:, j].copy_(state[:, j + 1])
        state[:, -1:].copy_(x)
        return y

    def _taps(self, inputs: list[Tensor]) -> Tensor:
        """The K inputs each tap sees, oldest first ([B, T, C] each) -> the activated sum."""
        taps = self.weight[:, 0].t().to(inputs[0].dtype).contiguous()  # [K, C]
        y = inputs[0] * taps[0]
        for j in range(1, len(inputs)):
            y = torch.addcmul(y, inputs[j], taps[j])
        return F.silu(y) if self.activation == "silu" else y


@dataclass
class Positions:
    """What every layer of one call shares: the rows' positions and the tables built from
    them (once per call, not per layer)."""

    start: Tensor  # [B] position of the call's first token per row
    rot: Tensor  # [B, T, 2, 1, Dk/2] complex: q's rotation, then k's (with k's 1/sqrt(Dk))
    decay: Tensor | None = None  # recurrent form: [B, H] (retention.recurrent_coefficients)
    inject: Tensor | None = None


class MultiScaleRetention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.qkvg_proj = fused_linear(self, "qkvg_proj", d, {
            "q_proj": config.qk_dim, "k_proj": config.qk_dim, "v_proj": config.v_dim,
            "g_proj": config.v_dim})
        self.o_proj = nn.Linear(config.v_dim, d, bias=False)
        self.head_norm = HeadNorm(config)
        self.qkv_conv = ShortConv(config.conv_channels, config.short_conv,
                                  config.short_conv_activation) if config.short_conv else None

    def _qkvg(self, x: Tensor, pos: Positions, conv: Tensor | None, mode: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """x: [B, T, D] -> q, k: [B, H, T, Dk], v: [B, H, T, Dv] in the accumulation dtype, the
        gate g [B, T, Dv], and the short convolution's new state (None without one; in the
        recurrent form the given one, updated in place)."""
        c = self.config
        b, t, _ = x.shape
        qkv, g = self.qkvg_proj(x).split([2 * c.qk_dim + c.v_dim, c.v_dim], dim=-1)
        if self.qkv_conv is not None:
            if mode == "recurrent" and conv is not None:
                qkv = self.qkv_conv.step_(qkv, conv)
            else:
                qkv, conv = self.qkv_conv(qkv, conv)
        qk = rotate(qkv[..., : 2 * c.qk_dim].unflatten(-1, (2, c.num_heads, c.head_qk_dim)),
                    pos.rot, c.rotary)  # [B, T, 2, H, Dk]
        q, k = qk.permute(2, 0, 3, 1, 4)  # [B, H, T, Dk] each
        v = qkv[..., 2 * c.qk_dim :].unflatten(-1, (c.num_heads, c.head_v_dim))
        return q, k, v.to(qk.dtype).transpose(1, 2), g, conv

    def _output(self, x: Tensor, o: Tensor, g: Tensor) -> Tensor:
        """o: [B, H, T, Dv] -> swish(g) * norm(o) -> o_proj: [B, T, D]."""
        normed = self.head_norm(o.transpose(1, 2)).to(x.dtype)
        return self.o_proj(F.silu(g) * normed)

    def forward(self, x: Tensor, state: Tensor | None, pos: Positions, mode: str,
                conv: Tensor | None = None, log_gamma: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x: [B, T, D]; state: [B, H, Dk, Dv] or None; conv: [B, K-1, C] or None -> output,
        new state, new conv state."""
        c = self.config
        q, k, v, g, conv = self._qkvg(x, pos, conv, mode)
        if mode == "parallel":
            o = retention.parallel_retention(q, k, v, log_gamma, c.state_norm)
            return self._output(x, o, g), None, conv
        if state is None:
            state = q.new_zeros(x.shape[0], c.num_heads, c.head_qk_dim, c.head_v_dim)
        state = state.to(q.dtype)
        if mode == "chunkwise":
            o, state = retention.chunkwise_retention(q, k, v, state, pos.start, log_gamma,
                                                     c.state_norm, c.chunk_size)
        else:  # recurrent: one token per row
            o, state = retention.recurrent_retention(q[:, :, 0], k[:, :, 0], v[:, :, 0], state,
                                                     pos.decay, pos.inject)
            o = o.unsqueeze(2)
        return self._output(x, o, g), state, conv


class FeedForward(nn.Module):
    """GLU: down(act(gate(x)) * up(x)); torchscale fc1/gate/fc2 = our gate/up/down."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = fused_linear(self, "gate_up_proj", config.hidden_size, {
            "gate_proj": config.ffn_dim, "up_proj": config.ffn_dim})
        self.down_proj = nn.Linear(config.ffn_dim, config.hidden_size, bias=False)
        self.act = F.silu if config.ffn_activation == "swish" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class RetNetBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = MultiScaleRetention(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor, state: Tensor | None, pos: Positions, mode: str,
                conv: Tensor | None = None, log_gamma: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        h, state, conv = self.attn(self.attn_norm(x).to(x.dtype), state, pos, mode, conv,
                                   log_gamma)
        x = x + h
        return x + self.ffn(self.ffn_norm(x).to(x.dtype)), state, conv


class RetNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_norm = RMSNorm(config.hidden_size, config.norm_eps) if config.embed_norm \
            else None
        self.layers = nn.ModuleList(RetNetBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else \
            nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._tables: tuple[Tensor, Tensor, Tensor] | None = None

    def _apply(self, fn, recurse=True):
        self._tables = None  # rebuilt for the new device and dtype on first use
        return super()._apply(fn, recurse)

    @property
    def tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """log gamma [H], rotary frequencies [Dk/2] and the q/k scales [2], in the accumulation
        dtype: fixed by the config, built once. Not buffers: `.to(bfloat16)` would round the
        decays, where 1 - 2**-10 is already 1."""
        if self._tables is None:
            c, device, acc = self.config, self.device, _acc_dtype(self.dtype)
            self._tables = (retention.log_decay(c.num_heads, device, acc),
                            inv_frequencies(c.head_qk_dim, c.rotary, c.rope_theta, device, acc),
                            torch.tensor([1.0, c.head_qk_dim**-0.5], device=device, dtype=acc))
        return self._tables

    def positions(self, start: Tensor, num_tokens: int, mode: str) -> Positions:
        """Rows starting at start [B], num_tokens each: the tables every layer shares."""
        c = self.config
        log_gamma, freq, scales = self.tables
        pos = start[:, None]
        if num_tokens > 1:
            pos = pos + torch.arange(num_tokens, device=start.device)[None, :]
        decay = inject = None
        if mode == "recurrent":
            decay, inject = retention.recurrent_coefficients(start, log_gamma, c.state_norm)
        return Positions(start, rotation(pos, freq, scales), decay, inject)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of (config, weights as first asked): a state saved by one model is never fed
        to another. xxh3-128 over the config and every tensor's name, shape and bytes."""
        h = xxhash.xxh3_128()
        h.update(repr(sorted(self.config.to_dict().items())).encode())
        state_dict = self.state_dict()
        for name in sorted(state_dict):
            t = state_dict[name].detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def empty_state(self, batch_size: int) -> RetentionState:
        return RetentionState.empty(self.config, batch_size, self.device, _acc_dtype(self.dtype))

    def _embed(self, input_ids: Tensor) -> Tensor:
        x = self.embed_tokens(input_ids)
        if self.config.scale_embedding:
            x = x * self.config.hidden_size**0.5
        return x if self.embed_norm is None else self.embed_norm(x).to(x.dtype)

    def _logits(self, x: Tensor) -> Tensor:
        x = self.norm(x).to(x.dtype)
        return F.linear(x, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(x)

    def _run(self, input_ids: Tensor, kv: Tensor | None, start: Tensor, mode: str,
             return_logits: bool = True, conv: Tensor | None = None
             ) -> tuple[Tensor | None, list[Tensor | None], list[Tensor | None]]:
        x = self._embed(input_ids)
        pos = self.positions(start, input_ids.shape[1], mode)
        log_gamma = self.tables[0]
        states, convs = [], []
        for i, layer in enumerate(self.layers):
            x, s, cs = layer(x, None if kv is None else kv[i], pos, mode,
                             None if conv is None else conv[i], log_gamma)
            states.append(s)
            convs.append(cs)
        return (self._logits(x) if return_logits else None), states, convs

    def forward_parallel(self, input_ids: Tensor) -> Tensor:
        """input_ids: [B, T] from position 0 -> logits [B, T, V]."""
        start = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        return self._run(input_ids, None, start, "parallel")[0]

    forward = forward_parallel

    def prefill(self, input_ids: Tensor, state: RetentionState | None = None,
                return_logits: bool = True) -> tuple[Tensor | None, RetentionState]:
        """Chunkwise form: input_ids [B, T] continuing `state` (rows may sit at different
        positions) -> logits [B, T, V] (None if not asked for) and the state after the last
        token."""
        state = state or self.empty_state(input_ids.shape[0])
        logits, states, convs = self._run(input_ids, state.kv, state.num_tokens, "chunkwise",
                                          return_logits, state.conv)
        kv = torch.stack(states).to(state.kv.dtype)
        conv = torch.stack(convs).to(state.kv.dtype) if self.config.short_conv else None
        return logits, RetentionState(kv, state.num_tokens + input_ids.shape[1], conv)

    def step(self, input_ids: Tensor, state: RetentionState) -> tuple[Tensor, RetentionState]:
        """Recurrent form: one token per row, input_ids [B] -> logits [B, V], new state."""
        new = state.clone()
        return self.decode_step(input_ids, new.kv, new.num_tokens, new.conv), new

    def decode_step(self, input_ids: Tensor, kv: Tensor, positions: Tensor,
                    conv: Tensor | None = None) -> Tensor:
        """The batched decode kernel: updates kv [L, B, H, Dk, Dv], conv [L, B, K-1, C] (models
        with a short convolution) and positions [B] in place."""
        if (conv is None) != (not self.config.short_conv):
            raise ValueError("decode_step: pass the conv state exactly when the model has a "
                             "short convolution")
        logits, states, convs = self._run(input_ids[:, None], kv, positions, "recurrent",
                                          conv=conv)
        for i, s in enumerate(states):
            if s.data_ptr() != kv[i].data_ptr():  # recurrent_retention works in place
                kv[i].copy_(s)
        if conv is not None:
            for i, cs in enumerate(convs):
                if cs.data_ptr() != conv[i].data_ptr():  # ShortConv.step_ works in place
                    conv[i].copy_(cs)
        positions += 1
        return logits[:, 0]
