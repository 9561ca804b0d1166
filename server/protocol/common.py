"""Pieces every OpenAI endpoint shares: the base model, usage, logprobs, sampling fields."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.sampling import SamplingParams
from server.errors import bad_request

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
INT64 = 2**63


class OpenAIModel(BaseModel):
    # unknown fields are accepted and ignored, as OpenAI-compatible servers do
    model_config = ConfigDict(extra="ignore", protected_namespaces=())



class PromptTokensDetails(OpenAIModel):
    cached_tokens: int = 0


class UsageInfo(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class Limits(BaseModel):
    """What this server allows a request to ask for (from its settings)."""

    max_output_tokens: int
    default_max_tokens: int
    max_n: int
    vocab_size: int


class SamplingFields(OpenAIModel):
    """Sampling parameters shared by chat and completions, with OpenAI's ranges."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off (vLLM)")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise bad_request(f"stop: at most {MAX_STOP_STRINGS} strings", "stop")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise bad_request(f"stop: strings of at most {MAX_STOP_LENGTH} characters", "stop")
        return tuple(s for s in stops if s)

    def check_n(self, limits: Limits) -> int:
        if self.n > limits.max_n:
            raise bad_request(f"n must be <= {limits.max_n}", "n")
        return self.n

    def sampling_params(self, max_tokens: int | None, limits: Limits,
                        num_logprobs: int | None) -> SamplingParams:
        if max_tokens is not None and max_tokens > limits.max_output_tokens:
            raise bad_request(f"max_tokens must be <= {limits.max_output_tokens}",
                              "max_tokens")
        return SamplingParams(
            max_tokens=max_tokens or limits.default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k if self.top_k and self.top_k > 0 else None,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=self._logit_bias(limits.vocab_size),
            seed=self.seed,
            ignore_eos=self.ignore_eos,
            logprobs=num_logprobs)

    def _logit_bias(self, vocab_size: int) -> dict[int, float]:
        bias = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                token = -1
            if not 0 <= token < vocab_size:
                raise bad_request(f"logit_bias: {key!r} is not a token id of this model "
                                  f"(0..{vocab_size - 1})", "logit_bias")
            if not -100.0 <= value <= 100.0:
                raise bad_request("logit_bias values must be in [-100, 100]", "logit_bias")
            bias[token] = value
        return bias


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}
