"""uvicorn's httptools protocol with the two limits on a request head it lacks: the request line
and headers must fit in `max_header_bytes` (else 431) and arrive within `header_timeout` seconds
of the request's first byte, or of the connection opening (else 408, or a plain close when no
byte came). Without them one client trickling a header forever, or sending a megabyte
`Authorization`, holds a connection and its memory for as long as it likes."""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _refusal(status: int, reason: bytes, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason),
                     b"content-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body])


class GuardedHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 65536
    header_timeout = 10.0

    @classmethod
    def with_limits(cls, max_header_bytes: int, header_timeout: float) -> type:
        return type(cls.__name__, (cls,), {"max_header_bytes": max_header_bytes,
                                           "header_timeout": header_timeout})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._is_head_too_large = False
        self._is_reading_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()  # a connection that opens and sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._is_reading_head = True
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._is_reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _count(self, num_bytes: int) -> None:
        self._head_bytes += num_bytes
        if self._head_bytes > self.max_header_bytes:
            self._is_head_too_large = True
            # httptools turns a callback's exception into a parser error: uvicorn then
            # answers through send_400_response, below, and closes
            raise ValueError("request head too large")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused, in OpenAI's error shape."""
        self._cancel_head_timer()
        if self._is_head_too_large:
            answer = _refusal(431, b"Request Header Fields Too Large",
                              f"the request line and headers exceed {self.max_header_bytes} "
                              "bytes", "headers_too_large")
        else:
            answer = _refusal(400, b"Bad Request", f"not a valid HTTP request: {msg}",
                              "invalid_http_request")
        self.transport.write(answer)
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head: its bound counts once this answer ends
            return
        if self._is_reading_head:
            self.transport.write(_refusal(
                408, b"Request Timeout",
                f"the request headers did not arrive within {self.header_timeout:g} s",
                "request_timeout"))
            self.transport.close()
        elif self.cycle is None:  # opened, and not one byte of a request since
            self.transport.close()
