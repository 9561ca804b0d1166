"""`RetNet.decode_step` through retserve's CPU kernels: a layer's whole step in one native call
(engine/native/decode_kernels.c), so a step is ~10 torch ops and one call per layer instead
of ~70 ops per layer. Numbers match torch's step to fp32 rounding; batch invariant."""

from __future__ import annotations

import torch
from torch import Tensor

from engine import retention
from engine.model import RetNet
from engine.native_kernels import Layer, NativeKernels, data_ptr_or_none
from engine.native_linear import NativeLinear
from engine.rotary import rotation


class NativeDecoder:
    """Callable with `RetNet.decode_step`'s signature, for a model whose linears are
    `NativeLinear`s; holds the fp32 copies of the small per-layer tensors it points the C
    kernel at (norm weights, convolution taps)."""

    def __init__(self, model: RetNet, kernels: NativeKernels):
        self.model, self.kernels = model, kernels
        c = model.config
        self._keep: list[Tensor] = []  # what the Layer structs point at stays alive here
        self.layers = [self._layer(block) for block in model.layers]
        self.scratch_per_row = max(kernels.layer_scratch(layer) for layer in self.layers)
        self.fallback = type(model).decode_step.__get__(model)
        self.conv = c.short_conv > 0

    def _f32(self, t: Tensor | None) -> int | None:
        if t is None:
            return None
        t = t.detach().float().contiguous()
        self._keep.append(t)
        return t.data_ptr()

    def _layer(self, block) -> Layer:
        c, attn, ffn = self.model.config, block.attn, block.ffn
        linears = (attn.qkvg_proj, attn.o_proj, ffn.gate_up_proj, ffn.down_proj)
        if not all(isinstance(linear, NativeLinear) for linear in linears):
            raise TypeError("NativeDecoder needs the model's linears as NativeLinear")
        head = attn.head_norm
        head_w, head_b = (head.rms.weight, None) if head.kind == "rms" else \
            (head.weight, head.bias)
        conv_w = None if attn.qkv_conv is None else attn.qkv_conv.weight[:, 0].t()
        return Layer(
            hidden=c.hidden_size, heads=c.num_heads, head_qk=c.head_qk_dim,
            head_v=c.head_v_dim, ffn=c.ffn_dim, conv_kernel=c.short_conv,
            rope=c.rotary == "rope", group_norm=head.kind != "rms",
            gelu=c.ffn_activation == "gelu", conv_silu=c.short_conv_activation == "silu",
            bf16=linears[0].packed.dtype == torch.bfloat16, norm_eps=block.attn_norm.eps,
            head_eps=c.resolved_head_norm_eps,
            attn_norm=self._f32(block.attn_norm.weight), ffn_norm=self._f32(block.ffn_norm.weight),
            qkvg=data_ptr_or_none(linears[0].packed), o_proj=data_ptr_or_none(linears[1].packed),
            gate_up=data_ptr_or_none(linears[2].packed), down=data_ptr_or_none(linears[3].packed),
            conv_w=self._f32(conv_w), head_w=self._f32(head_w), head_b=self._f32(head_b))

    def _can_run(self, kv: Tensor, conv: Tensor | None) -> bool:
        ok = kv.dtype == torch.float32 and all(kv[i].is_contiguous() for i in range(len(kv)))
        if conv is not None:
            ok = ok and conv.dtype == torch.float32 and \
                all(conv[i].is_contiguous() for i in range(len(conv)))
        return ok

    def __call__(self, input_ids: Tensor, kv: Tensor, positions: Tensor,
                 conv: Tensor | None = None) -> Tensor:
        if (conv is None) == self.conv or not self._can_run(kv, conv):
            return self.fallback(input_ids, kv, positions, conv)  # checks and raises as ever
        model, c = self.model, self.model.config
        x = model._embed(input_ids).float().contiguous()  # [B, D], the residual stream
        log_gamma, freq, scales = model.tables
        rot = torch.view_as_real(rotation(positions[:, None], freq, scales)).contiguous()
        decay, inject = retention.recurrent_coefficients(positions, log_gamma, c.state_norm)
        decay = decay.contiguous()
        scratch = torch.empty(x.shape[0] * self.scratch_per_row)
        for i, layer in enumerate(self.layers):
            self.kernels.decode_layer(layer, x, kv[i], None if conv is None else conv[i], rot,
                                      decay, inject, scratch)
        positions += 1
        return model._logits(x.to(model.dtype))
