"""A request body is read whole, within a size and a time bound, before any route sees it:
more than `max_bytes` is a 413 (answered on the Content-Length alone when it says so), a body
that has not finished arriving after `timeout` seconds is a 408 (a client that sends its
headers and then trickles or withholds the body would otherwise hold a connection and its
buffer for as long as it likes). Both close the connection. The route then reads the body
from memory; later receives (a disconnect) go to the client as before."""

from __future__ import annotations

import asyncio
import json

from server.errors import APIError


def _declared_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _has_body(scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return value != b"0"
        if key == b"transfer-encoding":
            return True
    return False


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client left before its body was whole: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._refuse(send, self._too_large())
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(send, APIError(
                408, f"the request body did not arrive within {self.timeout:g} s",
                "invalid_request_error", None, "request_timeout"))
            return
        body = b"".join(chunks)
        is_replayed = False

        async def replay():
            nonlocal is_replayed
            if is_replayed:
                return await receive()
            is_replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_bytes} bytes",
                        "invalid_request_error", None, "request_too_large")

    @staticmethod
    async def _refuse(send, error: APIError) -> None:
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
