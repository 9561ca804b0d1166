"""POST /v1/completions: a raw prompt, streaming (SSE) and not. Nothing is stored."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request

from server.auth import tenant_hash
from server.deps import RuntimeDep, TenantDep
from server.errors import APIError
from server.openapi import BODY_ERRORS, error_responses, streamed
from server.protocol.common import new_id, usage
from server.protocol.completions import (
    CompletionRequest,
    CompletionResponse,
    completion_logprobs,
)
from server.routes.models import check_model
from server.runtime import Runtime
from server.streaming import DONE, log_turn, run_until_disconnect, sse_response
from server.turn_stream import TurnStream
from server.unicode_route import UnicodeCheckedRoute

router = APIRouter(route_class=UnicodeCheckedRoute, tags=["completions"])


@router.post("/v1/completions", response_model=CompletionResponse,
             responses={**streamed("The completion, or text_completion events"),
                        **error_responses(*BODY_ERRORS, 404, 429, 504)},
             summary="Text completion (OpenAI-compatible); stream: true answers with SSE")
async def create_completion(body: CompletionRequest, request: Request, runtime: RuntimeDep,
                            tenant: TenantDep):
    model = check_model(runtime, body.model)
    limits = runtime.limits
    ids = body.prompt_ids(runtime.tokenizer, limits.vocab_size)
    params = body.sampling_params(body.max_tokens, limits, body.logprobs)
    n = body.check_n(limits)
    stream = await runtime.service.start_completion(ids, params, n, body.stop_strings(),
                                                    request.state.request_id)
    log = request.state.log_fields
    log["tenant"] = tenant_hash(tenant)
    echo = runtime.tokenizer.decode(ids) if body.echo else ""
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": model,
            "system_fingerprint": runtime.service.model_fingerprint[:16]}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chunks(stream, head, n, echo, include_usage, runtime, log),
                            runtime.settings.keepalive_seconds)
    return await run_until_disconnect(request, _complete(stream, head, n, echo, runtime, log))


async def _complete(stream: TurnStream, head: dict, n: int, echo: str, runtime: Runtime,
                    log: dict) -> dict:
    texts = [[echo] for _ in range(n)]
    logprobs: list[dict | None] = [None] * n
    offsets = [len(echo)] * n
    finish: list[str | None] = [None] * n
    try:
        async for delta in stream:
            i = delta.index
            texts[i].append(delta.text)
            part, offsets[i] = completion_logprobs(delta.logprobs, runtime.token_text,
                                                   offsets[i])
            if part is not None:
                logprobs[i] = part if logprobs[i] is None else {
                    k: logprobs[i][k] + part[k] for k in part}
            finish[i] = delta.finish_reason or finish[i]
    finally:
        await stream.aclose()
        log_turn(log, stream)
    u = stream.usage
    return {**head,
            "choices": [{"index": i, "text": "".join(t), "logprobs": logprobs[i],
                         "finish_reason": finish[i]} for i, t in enumerate(texts)],
            "usage": usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)}


async def _chunks(stream: TurnStream, head: dict, n: int, echo: str, include_usage: bool,
                  runtime: Runtime, log: dict):
    tail = {"usage": None} if include_usage else {}
    offsets = [len(echo)] * n

    def chunk(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs,
                  "finish_reason": finish_reason}
        return json.dumps({**head, "choices": [choice], **tail}, ensure_ascii=False)

    try:
        if echo:
            for i in range(n):
                yield chunk(i, echo, None, None)
        async for delta in stream:
            part, offsets[delta.index] = completion_logprobs(
                delta.logprobs, runtime.token_text, offsets[delta.index])
            yield chunk(delta.index, delta.text, delta.finish_reason, part)
        if include_usage:
            u = stream.usage
            yield json.dumps({**head, "choices": [],
                              "usage": usage(u.prompt_tokens, u.cached_tokens,
                                             u.completion_tokens)})
    except APIError as e:
        yield json.dumps(e.body())
    finally:
        await stream.aclose()
        log_turn(log, stream)
    yield DONE
