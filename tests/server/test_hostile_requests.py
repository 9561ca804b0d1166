"""Requests no schema generates, over raw sockets: 10 MB bodies, deep JSON, invalid UTF-8, NUL
and control bytes, 10,000 messages or stop strings, 2^63 tokens, n of 10,000, unknown content
parts, a 1 MB Authorization header, slow-loris clients. Each is refused (a 4xx in OpenAI's
shape, or a closed connection) within a bound, and the server serves normally afterwards."""

from __future__ import annotations

import httpx
import pytest

from bench.hostile import BOUND_SECONDS, CASES, HOSTILE_SETTINGS
from tests.server_process import MODEL_NAME

# what each case must get; None: the connection closed without an answer
EXPECTED = {
    "body_10_mb": {413, None}, "body_10_mb_chunked": {413, None},
    "deeply_nested_json": {400}, "deeply_nested_schema": {400}, "invalid_utf8": {400},
    "raw_nul_and_control_bytes": {400}, "nul_in_a_header": {400},
    "ten_thousand_messages": {400}, "max_tokens_2_pow_63": {400}, "n_ten_thousand": {400},
    "unknown_content_part": {400}, "ten_thousand_stop_strings": {400},
    "authorization_1_mb": {431, None}, "slow_loris_headers": {408, None},
    "slow_loris_after_a_request": {408, None},
    "slow_loris_body": {408}, "silent_connection": {None},
}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    from tests.server_process import ServerProcess

    process = ServerProcess(tmp_path_factory.mktemp("hostile"), store_url="memory://",
                            **HOSTILE_SETTINGS).start()
    yield process
    process.kill()


def test_every_case_is_listed():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_request_is_refused_within_the_bound(hostile_server, name):
    outcome = CASES[name](hostile_server.port)
    assert outcome.status in EXPECTED[name], (outcome.status, outcome.body[:300])
    assert outcome.seconds < BOUND_SECONDS
    if outcome.status is not None:
        error = outcome.error()
        assert error is not None and set(error) == {"message", "type", "param", "code"}, \
            outcome.body[:300]
    assert hostile_server.proc.poll() is None


def test_the_server_serves_normally_after_all_of_them(hostile_server):
    assert httpx.get(f"{hostile_server.url}/health").status_code == 200
    reply = hostile_server.client().chat.completions.create(
        model=MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_nul_and_control_characters_escaped_in_json_are_text(hostile_server):
    """Escaped, they are valid JSON and valid text: answered, not refused."""
    content = "a\u0000b\u0001c\u001b[31m\u202e\u200b"
    reply = hostile_server.client().chat.completions.create(
        model=MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.role == "assistant"
