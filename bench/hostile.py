"""Hand-written hostile requests a schema cannot generate: oversized bodies and headers, deep
JSON, invalid UTF-8, control characters, huge lists and numbers, unknown content parts, and
slow-loris clients. Each is sent over a raw socket (so nothing in a client library tidies it up)
and its outcome is what the server did: a status, or `closed` when it shut the connection.

The server under test runs with HOSTILE_SETTINGS: short head and body timeouts so slow clients
are cut within seconds."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.server_process import MODEL_NAME

HOSTILE_SETTINGS = {"header_timeout": 2.0, "body_timeout": 2.0, "max_prompt_tokens": 4096,
                    "max_output_tokens": 16, "default_max_tokens": 4}
# slow clients are cut after 2 s; anything else answers at once
BOUND_SECONDS = 8.0
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int | None  # None: the server closed the connection without an answer
    seconds: float
    body: bytes = b""

    @property
    def is_refused(self) -> bool:
        return self.status is None or 400 <= self.status < 500

    def error(self) -> dict | None:
        try:
            return json.loads(self.body)["error"]
        except (ValueError, KeyError, TypeError):
            return None


def _chat(**fields) -> dict:
    return {"model": MODEL_NAME, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], **fields}


def _request(path: str, body: bytes, headers: dict[str, str] | None = None,
             method: str = "POST") -> bytes:
    head = {"Host": "retserve", "Content-Type": "application/json",
            "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _read_answer(sock: socket.socket) -> tuple[int | None, bytes]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def _exchange(port: int, kind: str, parts: list[bytes], pause: float = 0.0,
              timeout: float = BOUND_SECONDS + 5) -> Outcome:
    """Send `parts` (pausing between them; stopping as soon as the server answers or hangs
    up), then read what it said."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        status, body = _exchange_on(sock, parts, pause)
    return Outcome(kind, status, time.monotonic() - start, body)


def _exchange_on(sock: socket.socket, parts: list[bytes], pause: float
                 ) -> tuple[int | None, bytes]:
    for i, part in enumerate(parts):
        try:
            sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            break  # the server refused before all of it arrived: read what it said
        if pause and i < len(parts) - 1 and select.select([sock], [], [], pause)[0]:
            break
    return _read_answer(sock)


def _send(port: int, kind: str, payload: bytes) -> Outcome:
    # in 1 MiB pieces: a server that answers early may close while the rest is in flight
    pieces = [payload[i:i + 2**20] for i in range(0, len(payload), 2**20)]
    return _exchange(port, kind, pieces)


def body_10_mb(port: int) -> Outcome:
    body = json.dumps(_chat(messages=[{"role": "user", "content": "x" * 10_000_000}]))
    return _send(port, "body_10_mb", _request(CHAT, body.encode()))


def body_10_mb_chunked(port: int) -> Outcome:
    """No Content-Length to refuse on: the size is counted as it arrives."""
    chunk = b"x" * 2**20
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: retserve\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    pieces = [head] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 10 + [b"0\r\n\r\n"]
    return _exchange(port, "body_10_mb_chunked", pieces)


def deeply_nested_json(port: int) -> Outcome:
    body = json.dumps(_chat())[:-1] + ', "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return _send(port, "deeply_nested_json", _request(CHAT, body.encode()))


def deeply_nested_schema(port: int) -> Outcome:
    schema = '{"type": "array", "items": ' * 500 + '{"type": "string"}' + "}" * 500
    body = (json.dumps(_chat())[:-1] + ', "response_format": {"type": "json_schema", '
            '"json_schema": {"name": "x", "schema": ' + schema + "}}}")
    return _send(port, "deeply_nested_schema", _request(CHAT, body.encode()))


def invalid_utf8(port: int) -> Outcome:
    body = json.dumps(_chat()).encode().replace(b'"hi"', b'"h\xff\xfe\xc3i"')
    return _send(port, "invalid_utf8", _request(CHAT, body))


def raw_nul_and_control_bytes(port: int) -> Outcome:
    """Control characters unescaped inside a JSON string are not JSON."""
    body = json.dumps(_chat()).encode().replace(b'"hi"', b'"h\x00i\x01\x1b"')
    return _send(port, "raw_nul_and_control_bytes", _request(CHAT, body))


def nul_in_a_header(port: int) -> Outcome:
    raw = _request(CHAT, json.dumps(_chat()).encode(), {"X-Session-Id": "a\x00b"})
    return _send(port, "nul_in_a_header", raw)


def ten_thousand_messages(port: int) -> Outcome:
    messages = [{"role": "user", "content": "hello there"}] * 10_000
    return _send(port, "ten_thousand_messages",
                 _request(CHAT, json.dumps(_chat(messages=messages)).encode()))


def max_tokens_2_pow_63(port: int) -> Outcome:
    return _send(port, "max_tokens_2_pow_63",
                 _request(CHAT, json.dumps(_chat(max_tokens=2**63)).encode()))


def n_ten_thousand(port: int) -> Outcome:
    return _send(port, "n_ten_thousand", _request(CHAT, json.dumps(_chat(n=10_000)).encode()))


def unknown_content_part(port: int) -> Outcome:
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]
    return _send(port, "unknown_content_part",
                 _request(CHAT, json.dumps(_chat(messages=messages)).encode()))


def ten_thousand_stop_strings(port: int) -> Outcome:
    stop = [f"stop{i}" for i in range(10_000)]
    return _send(port, "ten_thousand_stop_strings",
                 _request(CHAT, json.dumps(_chat(stop=stop)).encode()))


def authorization_1_mb(port: int) -> Outcome:
    raw = _request(CHAT, json.dumps(_chat()).encode(), {"Authorization": "Bearer " + "a" * 2**20})
    return _send(port, "authorization_1_mb", raw)


def slow_loris_headers(port: int) -> Outcome:
    """Headers trickled one line a second, never finished."""
    lines = [f"POST {CHAT} HTTP/1.1\r\n".encode()] + [b"X-Slow-%d: x\r\n" % i for i in range(30)]
    return _exchange(port, "slow_loris_headers", lines, pause=1.0)


def slow_loris_after_a_request(port: int) -> Outcome:
    """A kept-alive connection: one request answered, then the next one's headers trickled."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_SECONDS + 5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: retserve\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            answer += sock.recv(65536)
        outcome = _exchange_on(sock, [f"POST {CHAT} HTTP/1.1\r\n".encode()]
                               + [b"X-Slow-%d: x\r\n" % i for i in range(30)], pause=1.0)
    return Outcome("slow_loris_after_a_request", outcome[0], time.monotonic() - start,
                   outcome[1])


def slow_loris_body(port: int) -> Outcome:
    """Headers whole, the body promised and never finished."""
    body = json.dumps(_chat()).encode()
    raw = _request(CHAT, body)
    return _exchange(port, "slow_loris_body", [raw[:-len(body)], body[:10]])


def silent_connection(port: int) -> Outcome:
    """Connects and sends nothing at all."""
    return _exchange(port, "silent_connection", [b""])


CASES: dict[str, Callable[[int], Outcome]] = {f.__name__: f for f in (
    body_10_mb, body_10_mb_chunked, deeply_nested_json, deeply_nested_schema, invalid_utf8,
    raw_nul_and_control_bytes, nul_in_a_header, ten_thousand_messages, max_tokens_2_pow_63,
    n_ten_thousand, unknown_content_part, ten_thousand_stop_strings, authorization_1_mb,
    slow_loris_headers, slow_loris_after_a_request, slow_loris_body, silent_connection)}
