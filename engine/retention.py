"""Retention in three equivalent forms: parallel, chunkwise, recurrent.

Notation per head h (decay gamma_h, absolute position n from 0):
  U_n = gamma U_{n-1} + k_n^T v_n              (unnormalised state)
  o_n = q_n U_n / c_n
where c_n = sqrt(sum_{j<=n} gamma^j) for the torchscale normalisation and c_n = 1 for none.
c_n depends only on n, so all three forms share it exactly; the stored state is S_n = U_n / c_n
(bounded for any length, as torchscale's recurrent state). All math runs in fp32 (fp64 when the
inputs are fp64): decays never see bf16, where 1 - 2**-10 already rounds to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def log_decay(num_heads: int, device, dtype) -> Tensor:
    """log gamma_h with gamma_h = 1 - 2**(-5-h) (multi-scale: one decay per head). [H]"""
    h = torch.arange(num_heads, device=device, dtype=dtype)
    return torch.log1p(-torch.exp2(-5.0 - h))


def norm_scale(positions: Tensor, log_gamma: Tensor, state_norm: str) -> Tensor:
    """c_n for positions [...] and heads [H] -> [..., H]; for position -1 (empty state) it is 0."""
    if state_norm == "none":
        return torch.ones(*positions.shape, log_gamma.shape[0], device=positions.device,
                          dtype=log_gamma.dtype)
    n1 = (positions.to(log_gamma.dtype) + 1).unsqueeze(-1)
    # sum_{j<n+1} gamma^j = (1 - gamma^(n+1)) / (1 - gamma), via expm1 for precision near gamma=1
    return (torch.expm1(n1 * log_gamma) / torch.expm1(log_gamma)).clamp_min(0).sqrt()


def _decay_mask(length: int, log_gamma: Tensor) -> Tensor:
    """D[h, i, j] = gamma_h^(i-j) for i >= j else 0. [H, L, L]"""
    idx = torch.arange(length, device=log_gamma.device, dtype=log_gamma.dtype)
    diff = idx[:, None] - idx[None, :]
    mask = torch.exp(diff.clamp_min(0) * log_gamma[:, None, None])
    return mask.masked_fill(diff < 0, 0.0)


def chunk_retention(q: Tensor, k: Tensor, v: Tensor, state: Tensor, start: Tensor,
                    log_gamma: Tensor, state_norm: str) -> tuple[Tensor, Tensor]:
    """One block of L tokens per row, starting at absolute position start[B].

    q, k: [B, H, L, Dk]; v: [B, H, L, Dv]; state: [B, H, Dk, Dv] (S_{start-1}, zeros if start == 0).
    Returns o [B, H, L, Dv] (before the per-head norm) and the new state S_{start+L-1}.
    """
    length = q.shape[2]
    rel = torch.arange(length, device=q.device)
    pos = start[:, None] + rel[None, :]  # [B, L]
    c_prev = norm_scale(start - 1, log_gamma, state_norm)  # [B, H]
    c_pos = norm_scale(pos, log_gamma, state_norm).transpose(1, 2)  # [B, H, L]
    c_last = c_pos[:, :, -1]  # [B, H]
    if state_norm == "none":
        c_prev = torch.ones_like(c_prev)

    inner = (q @ k.transpose(-1, -2)) * _decay_mask(length, log_gamma)  # [B, H, L, L]
    out = inner @ v
    # gamma^(i+1) carries the previous state into row i; c_prev turns S back into U
    q_decay = torch.exp((rel + 1).to(log_gamma.dtype)[None, :] * log_gamma[:, None])  # [H, L]
    cross = (q * q_decay[None, :, :, None]) @ state
    out = (out + cross * c_prev[:, :, None, None]) / c_pos[..., None]

    k_decay = torch.exp((length - 1 - rel).to(log_gamma.dtype)[None, :] * log_gamma[:, None])
    block_kv = (k * k_decay[None, :, :, None]).transpose(-1, -2) @ v  # [B, H, Dk, Dv]
    carry = torch.exp(length * log_gamma)[None, :, None, None] * c_prev[:, :, None, None]
    new_state = (state * carry + block_kv) / c_last[:, :, None, None]
    return out, new_state


def parallel_retention(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor,
                       state_norm: str) -> Tensor:
    """O = (Q K^T ⊙ D) V, rows normalised by c_n: the whole sequence from position 0."""
    batch, heads, _, dk = q.shape
    length = q.shape[2]
    pos = torch.arange(length, device=q.device)
    mask = _decay_mask(length, log_gamma)
    c_pos = norm_scale(pos, log_gamma, state_norm).transpose(0, 1)  # [H, L]
    out = ((q @ k.transpose(-1, -2)) * mask) @ v
    return out / c_pos[None, :, :, None]


def chunkwise_retention(q: Tensor, k: Tensor, v: Tensor, state: Tensor, start: Tensor,
                        log_gamma: Tensor, state_norm: str, chunk_size: int
                        ) -> tuple[Tensor, Tensor]:
    """Parallel inside chunks of chunk_size, state carried across them; any length."""
    outs = []
    for begin in range(0, q.shape[2], chunk_size):
        end = begin + chunk_size
        out, state = chunk_retention(q[:, :, begin:end], k[:, :, begin:end], v[:, :, begin:end],
                                     state, start + begin, log_gamma, state_norm)
        outs.append(out)
    return torch.cat(outs, dim=2), state


def recurrent_coefficients(pos: Tensor, log_gamma: Tensor, state_norm: str
                           ) -> tuple[Tensor, Tensor | None]:
    """A step's S_n = decay * S_{n-1} + k^T (inject * v) for rows at positions pos [B]:
    decay = gamma c_{n-1} / c_n and inject = 1 / c_n, [B, H] (inject None: 1). The same for
    every layer, so built once per step."""
    gamma = torch.exp(log_gamma)[None, :]  # [1, H]
    if state_norm == "none":
        return gamma.expand(pos.shape[0], -1), None
    c_prev = norm_scale(pos - 1, log_gamma, state_norm)
    c_now = norm_scale(pos, log_gamma, state_norm)
    return gamma * c_prev / c_now, 1.0 / c_now


def recurrent_retention(q: Tensor, k: Tensor, v: Tensor, state: Tensor, decay: Tensor,
                        inject: Tensor | None) -> tuple[Tensor, Tensor]:
    """One token per row, each row at its own position (its `recurrent_coefficients`).

    q, k: [B, H, Dk]; v: [B, H, Dv]; state: [B, H, Dk, Dv] (contiguous), updated in place
    -> o [B, H, Dv] and the same state tensor.
    """
    if inject is not None:
        v = v * inject[..., None]
    # in place: S = decay * S + k^T v as two elementwise passes (batched rank-1 matmuls of
    # 1 x Dk by Dk x Dv run at a fraction of the speed), no state-sized temporaries
    state.mul_(decay[..., None, None]).addcmul_(k[..., :, None], v[..., None, :])
    out = (q.unsqueeze(-2) @ state).squeeze(-2)
    return out, state
