"""POST /v1/completions: a raw prompt (text or token ids), no chat template, nothing stored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.sampling import TokenLogprob
from server.errors import bad_request
from server.protocol.chat import StreamOptions
from server.protocol.common import OpenAIModel, SamplingFields, UsageInfo
from server.token_text import TokenText


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def prompt_ids(self, tokenizer, vocab_size: int) -> list[int]:
        """The one prompt's token ids (a batch of prompts is refused)."""
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix", "unsupported_parameter")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request("best_of is not supported (use n)", "best_of",
                              "unsupported_parameter")
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise bad_request("one prompt per request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            try:
                ids = tokenizer.encode(prompt)
            except ValueError as e:
                raise bad_request(f"prompt: {e}", "prompt") from e
        else:
            ids = list(prompt)
            if any(not 0 <= t < vocab_size for t in ids):
                raise bad_request(f"prompt: token ids must be in [0, {vocab_size})", "prompt")
        if not ids:
            raise bad_request("the prompt is empty", "prompt")
        return ids


class CompletionLogprobs(OpenAIModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: UsageInfo


def completion_logprobs(logprobs: list[TokenLogprob] | None, token_text: TokenText,
                        offset: int) -> tuple[dict | None, int]:
    """Engine logprobs -> OpenAI's legacy completion logprobs, and the text offset after."""
    if logprobs is None:
        return None, offset
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in logprobs:
        text = token_text.text(lp.token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp.logprob)
        out["top_logprobs"].append({token_text.text(t): v for t, v in lp.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out, offset
