"""A line-by-line transcription of torchscale 0.3.0's RetNet decoder (inference paths only).

Reproduces the PyPI release torchscale==0.3.0 (microsoft/torchscale; wheel
torchscale-0.3.0-py3-none-any.whl,
sha256 b3bf4950cece4b84c5c20a8ce782ff52cf4234c10539a2638524dc087d389a73), files:
  torchscale/architecture/config.py        RetNetConfig (defaults and their post-processing)
  torchscale/architecture/retnet.py        RetNetRelPos, DecoderLayer, RetNetDecoder
  torchscale/component/multiscale_retention.py   MultiScaleRetention (parallel + recurrent)
  torchscale/component/gate_linear_unit.py GLU
  torchscale/component/rms_norm.py         RMSNorm
  torchscale/component/feedforward_network.py    get_activation_fn
Copyright (c) 2022 Microsoft, MIT License.

Why a transcription: importing the real package needs timm (-> PIL, torchvision) and fairscale
only for DropPath / checkpoint_wrapper, which do nothing at inference, and torchvision does not
install beside our torch. Left out: dropout/drop path (identity in eval), MoE, multiway,
fairscale wrappers, chunkwise_recurrent (our converter maps weights, not forms). Module and
attribute names are upstream's, so state_dict keys are exactly torchscale's. The arithmetic of
the kept paths is unchanged, including the parallel form's extra row normalisation.
Checked once against the real package (timm stubbed): identical outputs, identical keys.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

# torchscale/architecture/config.py RetNetConfig.__init__ defaults
RETNET_CONFIG_DEFAULTS = dict(
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


def RetNetConfig(**kwargs) -> SimpleNamespace:
    args = SimpleNamespace(**{**RETNET_CONFIG_DEFAULTS, **kwargs})
    if args.deepnorm:
        args.decoder_normalize_before = False
        args.subln = False
    if args.subln:
        args.decoder_normalize_before = True
        args.deepnorm = False
    return args


def get_activation_fn(activation):
    if activation == "relu":
        return F.relu
    elif activation == "gelu":
        return F.gelu
    elif activation == "swish":
        return F.silu
    else:
        raise NotImplementedError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine=True):
        super().__init__()
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float()).type_as(x)
        if self.weight is not None:
            output = output * self.weight
        return output


class GLU(nn.Module):
    def __init__(self, embed_dim, ffn_dim, activation_fn, dropout, activation_dropout):
        super().__init__()
        self.embed_dim = embed_dim
        self.activation_fn = get_activation_fn(activation=str(activation_fn))
        self.fc1 = nn.Linear(self.embed_dim, ffn_dim, bias=False)
        self.fc2 = nn.Linear(ffn_dim, self.embed_dim, bias=False)
        self.gate = nn.Linear(self.embed_dim, ffn_dim, bias=False)

    def forward(self, x):
        x_shape = x.shape
        x = x.reshape(-1, x.size(-1))
        g = self.gate(x)
        x = self.fc1(x)
        x = self.activation_fn(x.float()).type_as(x) * g
        x = self.fc2(x)
        x = x.view(x_shape)
        return x


def rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def theta_shift(x, sin, cos):
    return (x * cos) + (rotate_every_two(x) * sin)


class MultiScaleRetention(nn.Module):
    def __init__(self, args, embed_dim, value_dim, num_heads, gate_fn="swish"):
        super().__init__()
        self.args = args
        self.embed_dim = embed_dim
        self.value_dim = value_dim
        self.num_heads = num_heads
        self.head_dim = self.value_dim // num_heads
        self.key_dim = self.embed_dim // num_heads
        self.scaling = self.key_dim**-0.5

        self.gate_fn = get_activation_fn(activation=str(gate_fn))

        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, value_dim, bias=False)
        self.g_proj = nn.Linear(embed_dim, value_dim, bias=False)

        self.out_proj = nn.Linear(value_dim, embed_dim, bias=False)

        self.group_norm = RMSNorm(self.head_dim, eps=args.layernorm_eps, elementwise_affine=False)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.q_proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.k_proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.v_proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.g_proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight)

    def parallel_forward(self, qr, kr, v, mask):
        bsz, tgt_len, embed_dim = v.size()

        vr = v.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)

        qk_mat = qr @ kr.transpose(-1, -2)  # bsz * m * tgt_len * tgt_len
        qk_mat = qk_mat * mask
        # invariant after normalization
        qk_mat = qk_mat / qk_mat.detach().sum(dim=-1, keepdim=True).abs().clamp(min=1)
        output = torch.matmul(qk_mat, vr)
        output = output.transpose(1, 2)
        return output

    def recurrent_forward(self, qr, kr, v, decay, incremental_state):
        bsz = v.size(0)

        v = v.view(bsz, self.num_heads, self.head_dim, 1)
        kv = kr * v
        if "prev_key_value" in incremental_state:
            prev_kv = incremental_state["prev_key_value"]
            prev_scale = incremental_state["scale"]
            scale = prev_scale * decay + 1
            kv = prev_kv * (prev_scale.sqrt() * decay / scale.sqrt()).view(
                self.num_heads, 1, 1
            ) + kv / scale.sqrt().view(self.num_heads, 1, 1)
        else:
            scale = torch.ones_like(decay)

        incremental_state["prev_key_value"] = kv
        incremental_state["scale"] = scale

        output = torch.sum(qr * kv, dim=3)
        return output

    def forward(self, x, rel_pos, chunkwise_recurrent=False, incremental_state=None):
        bsz, tgt_len, _ = x.size()
        (sin, cos), inner_mask = rel_pos

        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        g = self.g_proj(x)

        k *= self.scaling
        q = q.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)
        k = k.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)

        qr = theta_shift(q, sin, cos)
        kr = theta_shift(k, sin, cos)

        if incremental_state is not None:
            output = self.recurrent_forward(qr, kr, v, inner_mask, incremental_state)
        elif chunkwise_recurrent:
            raise NotImplementedError("chunkwise form not transcribed")
        else:
            output = self.parallel_forward(qr, kr, v, inner_mask)

        output = self.group_norm(output).reshape(bsz, tgt_len, self.head_dim * self.num_heads)

        output = self.gate_fn(g) * output

        output = self.out_proj(output)

        return output


class RetNetRelPos(nn.Module):
    def __init__(self, args):
        super().__init__()
        angle = 1.0 / (10000 ** torch.linspace(
            0, 1, args.decoder_embed_dim // args.decoder_retention_heads // 2))
        angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
        decay = torch.log(
            1 - 2 ** (-5 - torch.arange(args.decoder_retention_heads, dtype=torch.float))
        )
        self.register_buffer("angle", angle)
        self.register_buffer("decay", decay)
        self.recurrent_chunk_size = args.recurrent_chunk_size

    def forward(self, slen, activate_recurrent=False, chunkwise_recurrent=False):
        if activate_recurrent:
            sin = torch.sin(self.angle * (slen - 1))
            cos = torch.cos(self.angle * (slen - 1))
            retention_rel_pos = ((sin, cos), self.decay.exp())
        elif chunkwise_recurrent:
            raise NotImplementedError("chunkwise form not transcribed")
        else:
            index = torch.arange(slen).to(self.decay)
            sin = torch.sin(index[:, None] * self.angle[None, :])
            cos = torch.cos(index[:, None] * self.angle[None, :])
            mask = torch.tril(torch.ones(slen, slen).to(self.decay))
            mask = torch.masked_fill(
                index[:, None] - index[None, :], ~mask.bool(), float("inf")
            )
            mask = torch.exp(mask * self.decay[:, None, None])
            mask = torch.nan_to_num(mask)
            mask = mask / mask.sum(dim=-1, keepdim=True).sqrt()
            retention_rel_pos = ((sin, cos), mask)

        return retention_rel_pos


class DecoderLayer(nn.Module):
    def __init__(self, args, depth, is_moe_layer=False):
        super().__init__()
        assert not is_moe_layer, "MoE not transcribed"
        self.args = args
        self.embed_dim = args.decoder_embed_dim
        self.retention = self.build_retention(self.embed_dim, args)
        self.normalize_before = args.decoder_normalize_before
        self.retention_layer_norm = RMSNorm(self.embed_dim, eps=args.layernorm_eps)
        self.ffn_dim = args.decoder_ffn_embed_dim
        self.ffn = self.build_ffn(self.embed_dim, self.args)
        self.final_layer_norm = RMSNorm(self.embed_dim, eps=args.layernorm_eps)

        if args.deepnorm:
            self.alpha = math.pow(2.0 * args.decoder_layers, 0.25)
        else:
            self.alpha = 1.0

    def build_ffn(self, embed_dim, args):
        return GLU(embed_dim, self.ffn_dim, args.activation_fn, args.dropout,
                   args.activation_dropout)

    def build_retention(self, embed_dim, args):
        return MultiScaleRetention(args, embed_dim, args.decoder_value_embed_dim,
                                   args.decoder_retention_heads)

    def residual_connection(self, x, residual):
        return residual * self.alpha + x

    def forward(self, x, incremental_state=None, chunkwise_recurrent=False,
                retention_rel_pos=None):
        residual = x
        if self.normalize_before:
            x = self.retention_layer_norm(x)

        x = self.retention(x, incremental_state=incremental_state, rel_pos=retention_rel_pos,
                           chunkwise_recurrent=chunkwise_recurrent)

        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.retention_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.ffn(x)
        l_aux = None

        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.final_layer_norm(x)

        return x, l_aux


class RetNetDecoder(nn.Module):
    def __init__(self, args, embed_tokens=None, output_projection=None, **kwargs):
        super().__init__(**kwargs)
        assert args.moe_freq == 0 and not args.multiway, "MoE / multiway not transcribed"
        self.args = args
        embed_dim = args.decoder_embed_dim
        self.embed_dim = embed_dim
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(embed_dim)

        self.embed_tokens = embed_tokens

        if output_projection is None and not args.no_output_layer and args.vocab_size > 0:
            self.output_projection = self.build_output_projection(args)
        else:
            self.output_projection = output_projection

        if args.layernorm_embedding:
            self.layernorm_embedding = RMSNorm(embed_dim, eps=args.layernorm_eps)
        else:
            self.layernorm_embedding = None

        self.layers = nn.ModuleList([])
        for i in range(args.decoder_layers):
            self.layers.append(DecoderLayer(args, depth=i))

        self.num_layers = len(self.layers)

        if args.decoder_normalize_before:
            self.layer_norm = RMSNorm(embed_dim, eps=args.layernorm_eps)
        else:
            self.layer_norm = None

        self.retnet_rel_pos = RetNetRelPos(args)
        self.chunkwise_recurrent = args.chunkwise_recurrent
        self.recurrent_chunk_size = args.recurrent_chunk_size

        if args.deepnorm:
            init_scale = math.pow(8.0 * args.decoder_layers, 0.25)
            for name, p in self.named_parameters():
                if "fc1" in name or "fc2" in name or "out_proj" in name or "v_proj" in name:
                    p.data.div_(init_scale)

    def build_output_projection(self, args):
        if args.share_decoder_input_output_embed:
            output_projection = torch.nn.Linear(
                self.embed_tokens.weight.shape[1], self.embed_tokens.weight.shape[0], bias=False
            )
            output_projection.weight = self.embed_tokens.weight
        else:
            output_projection = torch.nn.Linear(args.decoder_embed_dim, args.vocab_size,
                                                bias=False)
            torch.nn.init.normal_(output_projection.weight, mean=0,
                                  std=args.decoder_embed_dim**-0.5)
        return output_projection

    def forward_embedding(self, tokens, token_embedding=None, incremental_state=None):
        if incremental_state is not None and not self.is_first_step(incremental_state):
            tokens = tokens[:, -1:]

        if token_embedding is None:
            token_embedding = self.embed_tokens(tokens)

        x = embed = self.embed_scale * token_embedding

        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)

        return x, embed

    def is_first_step(self, incremental_state):
        if incremental_state is None:
            return False
        return incremental_state.get("is_first_step", False)

    def forward(self, prev_output_tokens, incremental_state=None, features_only=False,
                return_all_hiddens=False, token_embeddings=None, **kwargs):
        x, _ = self.forward_embedding(prev_output_tokens, token_embeddings, incremental_state)
        is_first_step = self.is_first_step(incremental_state)

        if self.chunkwise_recurrent:
            raise NotImplementedError("chunkwise form not transcribed")
        slen = prev_output_tokens.size(1)
        # relative position
        retention_rel_pos = self.retnet_rel_pos(
            slen, incremental_state is not None and not is_first_step,
            chunkwise_recurrent=self.chunkwise_recurrent,
        )
        inner_states = [x]

        for idx, layer in enumerate(self.layers):
            if incremental_state is None or is_first_step:
                if is_first_step and incremental_state is not None:
                    if idx not in incremental_state:
                        incremental_state[idx] = {}
            else:
                if idx not in incremental_state:
                    incremental_state[idx] = {}

            x, _ = layer(
                x,
                incremental_state[idx] if incremental_state is not None else None,
                retention_rel_pos=retention_rel_pos,
                chunkwise_recurrent=self.chunkwise_recurrent,
            )
            inner_states.append(x)

        if self.layer_norm is not None:
            x = self.layer_norm(x)

        if not features_only:
            x = self.output_layer(x)

        return x, {"inner_states": inner_states, "attn": None}

    def output_layer(self, features):
        return self.output_projection(features)
