"""Serving a turn over HTTP: SSE for streams (sse-starlette; keep-alive comments on idle
streams, `data: [DONE]` at the end), and a disconnect watch for non-streaming requests so a
client that goes away stops its generation too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from sse_starlette.sse import AppStatus, EventSourceResponse

from server.turn_stream import TurnStream

DONE = "[DONE]"

# sse-starlette would cancel every stream the moment SIGTERM arrives; retserve drains instead
# (server/serving.py) and lets in-flight streams finish
AppStatus.disable_automatic_graceful_drain()


class SSEResponse(EventSourceResponse):
    async def _send_with_timeout(self, send, message) -> None:
        # sse-starlette opens an anyio cancel scope around every send even with no timeout set:
        # a quarter of the serving thread's time at 32 streams sent token by token
        if self.send_timeout is not None:
            return await super()._send_with_timeout(send, message)
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise


def sse_response(events: AsyncIterator[str], keepalive_seconds: float,
                 headers: dict[str, str] | None = None) -> EventSourceResponse:
    """`data: ...` events; a `: ping` comment whenever the stream is idle for a while."""
    return SSEResponse(events, ping=keepalive_seconds, sep="\n", headers=headers)


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def run_until_disconnect(request: Request, work: Awaitable):
    """Runs `work`; cancels it (ClientDisconnected) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected()


def log_turn(log: dict, stream: TurnStream) -> None:
    """A turn's figures on its request's log line."""
    u = stream.usage
    log.update(tokens_in=u.prompt_tokens - u.cached_tokens, tokens_cached=u.cached_tokens,
               tokens_out=u.completion_tokens,
               finish=",".join(r or "-" for r in stream.finish_reasons))
    if stream.first_token_time is not None:
        log["ttft_ms"] = round((stream.first_token_time - stream.arrival) * 1000, 1)
    if stream.error:
        log["error"] = stream.error
