"""POST /v1/chat/completions, streaming (SSE) and not."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request

from server.auth import tenant_hash
from server.deps import RuntimeDep, SessionHeaderDep, TenantDep
from server.errors import APIError
from server.openapi import BODY_ERRORS, error_responses, streamed
from server.protocol.chat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    logprobs_content,
)
from server.protocol.common import new_id, usage
from server.routes.models import check_model
from server.runtime import Runtime
from server.streaming import DONE, log_turn, run_until_disconnect, sse_response
from server.turn_stream import Choice, TurnStream
from server.unicode_route import UnicodeCheckedRoute

router = APIRouter(route_class=UnicodeCheckedRoute, tags=["chat"])


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses={**streamed("The completion, or chat.completion.chunk events"),
                        **error_responses(*BODY_ERRORS, 404, 409, 429, 504)},
             summary="Chat completion (OpenAI-compatible); stream: true answers with SSE")
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 runtime: RuntimeDep, tenant: TenantDep,
                                 session_header: SessionHeaderDep):
    model = check_model(runtime, body.model)
    turn = body.to_turn(tenant, runtime.limits, session_header, request.state.request_id)
    stream = await runtime.service.start_chat(turn)
    log = request.state.log_fields
    log["tenant"] = tenant_hash(tenant)
    head = {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "system_fingerprint": runtime.service.model_fingerprint[:16]}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chunks(stream, head, turn.n, include_usage, runtime, log),
                            runtime.settings.keepalive_seconds)
    return await run_until_disconnect(request, _complete(stream, head, turn.n, runtime, log))


async def _complete(stream: TurnStream, head: dict, n: int, runtime: Runtime, log: dict
                    ) -> dict:
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list | None] = [None] * n
    finish: list[str | None] = [None] * n
    try:
        async for delta in stream:
            texts[delta.index].append(delta.text)
            content = logprobs_content(delta.logprobs, runtime.token_text)
            if content is not None:
                logprobs[delta.index] = (logprobs[delta.index] or []) + content
            finish[delta.index] = delta.finish_reason or finish[delta.index]
    finally:
        await stream.aclose()
        log_turn(log, stream)
    u = stream.usage
    return {**head,
            "choices": [{"index": i, "message": _message("".join(t), stream.choices[i]),
                         "logprobs": None if logprobs[i] is None else {"content": logprobs[i]},
                         "finish_reason": finish[i]} for i, t in enumerate(texts)],
            "usage": usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)}


class TextChunks:
    """The chunk of a text delta, from the stream's own chunk JSON split around the text: every
    token of every stream is one, and dumping the whole chunk each time cost more than the rest
    of its way out. The same bytes as `chunk(index, {"content": text})`."""

    _MARK = "\ue000retserve\ue001"  # private-use characters: never in a chunk's head

    def __init__(self, chunk):
        self._chunk = chunk
        self._parts: dict[int, tuple[str, str]] = {}

    def __call__(self, index: int, text: str) -> str:
        parts = self._parts.get(index)
        if parts is None:
            before, _, after = self._chunk(index, {"content": self._MARK}).partition(
                json.dumps(self._MARK, ensure_ascii=False))
            parts = self._parts[index] = (before, after)
        return parts[0] + _json_string(text) + parts[1]


_json_string = json.encoder.encode_basestring  # a JSON string as ensure_ascii=False writes it


def _message(content: str, choice: Choice) -> dict:
    calls = choice.tool_calls
    if not calls:
        return {"role": "assistant", "content": content}
    # as OpenAI: content null beside calls unless the model wrote some
    return {"role": "assistant", "content": content or None,
            "tool_calls": [call.message_entry() for call in calls]}


async def _chunks(stream: TurnStream, head: dict, n: int, include_usage: bool,
                  runtime: Runtime, log: dict):
    head = {**head, "object": "chat.completion.chunk"}
    # the same key order as OpenAI's chunks; usage: null on each chunk when usage is asked for
    tail = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish_reason: str | None = None,
              logprobs: list | None = None) -> str:
        choice = {"index": index, "delta": delta,
                  "logprobs": None if logprobs is None else {"content": logprobs},
                  "finish_reason": finish_reason}
        return json.dumps({**head, "choices": [choice], **tail}, ensure_ascii=False)

    text_chunk = TextChunks(chunk)

    calls_only = any(c.tool_parser is not None and c.tool_parser.calls_only
                     for c in stream.choices)
    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": None if calls_only else ""})
        async for delta in stream:
            content = logprobs_content(delta.logprobs, runtime.token_text)
            if delta.text or (content and not delta.tool_calls):
                yield chunk(delta.index, {"content": delta.text}, logprobs=content) \
                    if content else text_chunk(delta.index, delta.text)
            if delta.tool_calls:
                yield chunk(delta.index, {"tool_calls": [c.chunk_entry()
                                                         for c in delta.tool_calls]},
                            logprobs=content)
            if delta.finish_reason is not None:
                yield chunk(delta.index, {}, delta.finish_reason)
        if include_usage:
            u = stream.usage
            yield json.dumps({**head, "choices": [],
                              "usage": usage(u.prompt_tokens, u.cached_tokens,
                                             u.completion_tokens)})
    except APIError as e:  # after the stream started: the error travels as a data event
        yield json.dumps(e.body())
    finally:
        await stream.aclose()
        log_turn(log, stream)
    yield DONE
