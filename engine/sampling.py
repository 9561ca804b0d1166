"""Sampling, vectorised over the decode batch with per-row parameters.

Each row's parameters live in per-slot tables on the device (written once when a sequence is
admitted), so a step gathers them with the batch's slot index instead of rebuilding tensors.
Random rows use counter-based noise keyed by (seed, step): a row's draw depends only on its own
seed and position, never on what else is in the batch (integer hashing: the same bits on any
device). Requests without a seed get a random one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.errors import InvalidRequestError

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # > 1 discourages tokens already generated (logits divided when positive, multiplied when
    # negative, as in CTRL and vLLM); over this request's generated tokens only, so a turn
    # samples the same whether its history came from a stored state or a full prompt
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # a dict is accepted and normalised
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # do not stop on the model's/tokenizer's own stop ids
    logprobs: int | None = None  # alternatives per token (0: only the chosen token's)
    # an llguidance grammar the output must match (engine/constraints.py); None: free text
    grammar: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias.items())))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be >= 1")
        _check_float("temperature", self.temperature, 0.0, 2.0)
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
               "top_k must be None or >= 1")
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        for token, bias in self.logit_bias:
            _check(isinstance(token, int), "logit_bias keys must be token ids")
            _check_float("logit_bias value", bias, -100.0, 100.0)
        _check(self.seed is None or isinstance(self.seed, int), "seed must be an integer")
        _check(all(isinstance(t, int) for t in self.stop_token_ids), "stop_token_ids: integers")
        _check(self.logprobs is None or (isinstance(self.logprobs, int)
                                         and 0 <= self.logprobs <= 20), "logprobs must be 0..20")
        _check(self.grammar is None or (isinstance(self.grammar, str) and self.grammar != ""),
               "grammar must be a non-empty string")
        # the grammar ends the output with an end-of-turn id; ignoring it would run past it
        _check(self.grammar is None or not self.ignore_eos, "ignore_eos cannot take a grammar")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    def token_ids(self) -> list[int]:
        """Every token id the parameters name (checked against the vocabulary by the engine)."""
        return [t for t, _ in self.logit_bias] + list(self.stop_token_ids)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequestError(message)


def _check_float(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
    _check(ok and not (low_open and value == low),
           f"{name} must be in {'(' if low_open else '['}{low}, {high}]")


def seed_key(seed: int | None) -> int:
    """A request seed (any int; None draws one) -> the 32-bit key of its noise (splitmix64)."""
    z = (random.getrandbits(64) if seed is None else seed) + 0x9E3779B97F4A7C15 & _M64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    return (z ^ (z >> 31)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash on int64 tensors holding [0, 2**32): products stay below 2**63."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def exponential_noise(keys: Tensor, steps: Tensor, weyl: Tensor) -> Tensor:
    """Exp(1) noise [B, V] from keys [B] and steps [B] (int64); weyl: arange(V) * odd constant.

    argmax(p / noise) draws from p (the exponential race, i.e. Gumbel-max)."""
    row = _mix32(keys + _mix32(steps & _M32) & _M32)  # [B]
    bits = _mix32(row[:, None] + weyl[None, :] & _M32)  # [B, V]
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * 2.0**-24  # (0, 1)
    return -torch.log(uniform)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # best alternatives, best first


@dataclass
class SamplerOutput:
    token_ids: list[int]  # [B]
    logprobs: list[TokenLogprob | None]  # [B]; None for rows that did not ask


class Sampler:
    """Per-slot parameter tables plus the vectorised sampling of one decode batch."""

    def __init__(self, num_slots: int, vocab_size: int, device: torch.device):
        self.vocab_size = vocab_size
        # rows: temperature (0: greedy), top_p, min_p, presence, frequency, repetition
        self.floats = torch.ones(6, num_slots, device=device)
        # rows: top_k (vocab_size when off), noise key
        self.ints = torch.zeros(2, num_slots, dtype=torch.long, device=device)
        self.counts: Tensor | None = None  # [num_slots, V] generated-token counts, on first use
        self.weyl = torch.arange(vocab_size, device=device) * 0x9E3779B1

    def set_params(self, slot: int, params: SamplingParams) -> None:
        self.floats[:, slot] = torch.tensor([params.temperature, params.top_p, params.min_p,
                                             params.presence_penalty, params.frequency_penalty,
                                             params.repetition_penalty])
        self.ints[:, slot] = torch.tensor([params.top_k or self.vocab_size,
                                           seed_key(params.seed)])
        if params.has_penalties:
            if self.counts is None:
                self.counts = torch.zeros(self.floats.shape[1], self.vocab_size,
                                          device=self.floats.device)
            self.counts[slot].zero_()

    def sample(self, logits: Tensor, slots: Tensor, steps: Tensor,
               params: list[SamplingParams],
               mask: Callable[[Tensor], Tensor] | None = None) -> SamplerOutput:
        """logits [B, V]; slots, steps [B] int64 on the device; params: each row's, on the host.
        `mask`: sets the tokens grammars forbid to -inf (engine/constraints.py), after penalties
        and bias, before any choice; logprobs stay the model's own."""
        logits = logits.float()
        num_logprobs = max((p.logprobs for p in params if p.logprobs is not None), default=None)
        raw_logprobs = torch.log_softmax(logits, -1) if num_logprobs is not None else None

        if any(p.has_penalties for p in params):
            counts = self.counts.index_select(0, slots)  # [B, V]
            presence, frequency, repetition = self.floats[3:6].index_select(1, slots)[..., None]
            seen = counts > 0
            logits = torch.where(seen & (logits > 0), logits / repetition,
                                 torch.where(seen, logits * repetition, logits))
            logits = logits - presence * seen - frequency * counts
        if any(p.logit_bias for p in params):
            rows, tokens, bias = zip(*[(i, t, b) for i, p in enumerate(params)
                                       for t, b in p.logit_bias], strict=True)
            index = torch.tensor([rows, tokens], device=logits.device)
            logits = logits.index_put(tuple(index), torch.tensor(bias, device=logits.device),
                                      accumulate=True)
        if mask is not None:
            logits = mask(logits)

        chosen = logits.argmax(-1)
        if not all(p.is_greedy for p in params):
            chosen = self._sample(logits, chosen, slots, steps, params)
        if self.counts is not None and any(p.has_penalties for p in params):
            self.counts.index_put_((slots, chosen), torch.ones_like(chosen, dtype=torch.float32),
                                   accumulate=True)
        token_ids = chosen.tolist()
        return SamplerOutput(token_ids, self._logprobs(raw_logprobs, chosen, token_ids,
                                                       num_logprobs, params))

    def _sample(self, logits: Tensor, greedy: Tensor, slots: Tensor, steps: Tensor,
                params: list[SamplingParams]) -> Tensor:
        temperature, top_p, min_p = self.floats[:3].index_select(1, slots)[..., None]  # [B, 1]
        is_greedy = temperature == 0.0
        probs = torch.softmax(logits / torch.where(is_greedy, 1.0, temperature), -1)
        use_top_k = any(p.top_k is not None for p in params)
        use_top_p = any(p.top_p < 1.0 for p in params)
        if use_top_k or use_top_p:
            sorted_probs, order = probs.sort(-1, descending=True)
            rank = torch.arange(probs.shape[-1], device=probs.device)
            drop = rank >= self.ints[0].index_select(0, slots)[:, None]
            if use_top_p:  # keep the smallest prefix whose mass reaches top_p
                before = sorted_probs.cumsum(-1) - sorted_probs
                drop |= (before > top_p) & (top_p < 1.0)
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        if any(p.min_p > 0.0 for p in params):
            probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
        noise = exponential_noise(self.ints[1].index_select(0, slots), steps, self.weyl)
        return torch.where(is_greedy[:, 0], greedy, (probs / noise).argmax(-1))

    @staticmethod
    def _logprobs(raw_logprobs: Tensor | None, chosen: Tensor, token_ids: list[int],
                  num_top: int | None, params: list[SamplingParams]) -> list[TokenLogprob | None]:
        if raw_logprobs is None:
            return [None] * len(params)
        chosen_lp = raw_logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        top_lp, top_ids = raw_logprobs.topk(max(num_top, 1), dim=-1)
        top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
        return [None if p.logprobs is None else
                TokenLogprob(token_ids[i], chosen_lp[i], list(zip(top_ids[i][:p.logprobs],
                                                            top_lp[i][:p.logprobs], strict=True)))
                for i, p in enumerate(params)]
