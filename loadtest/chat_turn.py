"""One streamed chat turn, as an OpenAI client sends and reads it, with vLLM's benchmark
latencies (benchmarks/serve.py): TTFT (request sent -> first content), ITL (gaps between
content chunks), TPOT ((E2EL - TTFT) / (output tokens - 1)), E2EL (request sent -> stream end).
Locust-free, so the same code is tested against a real server without a load generator."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


class TurnFailed(Exception):
    """The server answered, but not with a whole turn (an error event, no [DONE], no usage)."""


@dataclass
class TurnResult:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None  # seconds
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        """Tokens of the conversation the server now holds a state for (this reply included)."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.completion_tokens - 1)


def chat_body(model: str, messages: list[dict], max_tokens: int, seed: int,
              session_id: str | None = None) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.8, "seed": seed}
    if session_id is not None:
        body["session_id"] = session_id
    return body


def read_stream(lines: Iterable[bytes | str], sent_at: float,
                clock: Callable[[], float] = time.perf_counter) -> TurnResult:
    """Reads an SSE chat completion stream to its end; `sent_at` is clock() when the request
    left. Raises TurnFailed on an error event or a stream cut short."""
    result, parts = TurnResult(), []
    last_content_at, done = None, False
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue  # blank separators, comments (keep-alive pings)
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            raise TurnFailed(f"error event: {event['error'].get('message', event['error'])}")
        now = clock()
        for choice in event.get("choices", []):
            content = (choice.get("delta") or {}).get("content")
            if content:
                if last_content_at is None:
                    result.ttft = now - sent_at
                else:
                    result.itl.append(now - last_content_at)
                last_content_at = now
                parts.append(content)
            result.finish_reason = choice.get("finish_reason") or result.finish_reason
        usage = event.get("usage")
        if usage:
            result.prompt_tokens = usage["prompt_tokens"]
            result.completion_tokens = usage["completion_tokens"]
            details = usage.get("prompt_tokens_details") or {}
            result.cached_tokens = details.get("cached_tokens") or 0
    result.e2el = clock() - sent_at
    result.text = "".join(parts)
    if not done:
        raise TurnFailed("the stream ended before data: [DONE]")
    if result.finish_reason is None or not result.prompt_tokens:
        raise TurnFailed("the stream carried no finish_reason or no usage")
    return result
