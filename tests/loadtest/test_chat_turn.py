"""The load test's turn client against a real server: vLLM's latencies from a real SSE stream,
the usage the summary relies on, and a stream cut short is a failed turn, not a short one."""

from __future__ import annotations

import time

import httpx
import pytest

from loadtest.chat_turn import TurnFailed, chat_body, read_stream
from loadtest.conversation import Conversation
from tests.server_process import MODEL_NAME


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.server_process import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("turns")).start()
    yield server
    server.kill()


def stream_lines(server, conv: Conversation, max_tokens: int = 16) -> tuple[list[bytes], float]:
    body = chat_body(MODEL_NAME, conv.messages, max_tokens, seed=1)
    sent_at = time.perf_counter()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        assert response.status_code == 200
        return list(response.iter_lines()), sent_at


def test_a_turn_reports_latencies_and_usage(server):
    conv = Conversation(0)
    conv.ask()
    body = chat_body(MODEL_NAME, conv.messages, 16, seed=1)
    sent_at = time.perf_counter()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        result = read_stream(response.iter_lines(), sent_at)
    assert result.finish_reason in ("stop", "length")
    assert 0 < result.ttft <= result.e2el
    assert 1 <= result.completion_tokens <= 16 and result.prompt_tokens > 0
    assert result.cached_tokens == 0  # a first turn
    assert all(gap >= 0 for gap in result.itl)
    if result.completion_tokens >= 2:
        expected = (result.e2el - result.ttft) / (result.completion_tokens - 1)
        assert result.tpot == pytest.approx(expected)
    # the next turn resends the history: the stored state covers all of it
    conv.answered(result.text, result.total_tokens)
    conv.ask()
    lines, sent_at = stream_lines(server, conv)
    second = read_stream(lines, sent_at)
    assert second.cached_tokens >= result.total_tokens


def test_a_stream_cut_short_is_a_failed_turn(server):
    conv = Conversation(1)
    conv.ask()
    lines, sent_at = stream_lines(server, conv)
    done = [i for i, line in enumerate(lines) if line.strip() == "data: [DONE]"]
    assert done
    with pytest.raises(TurnFailed, match="DONE"):
        read_stream(lines[:done[0]], sent_at)
    usage_at = max(i for i, line in enumerate(lines) if '"usage": {' in line
                   or '"usage":{' in line)
    with pytest.raises(TurnFailed, match="usage"):
        read_stream(lines[:usage_at] + lines[done[0]:], sent_at)


def test_an_error_event_fails_the_turn():
    lines = ['data: {"error": {"message": "the state store cannot answer", "type": "x"}}',
             "data: [DONE]"]
    with pytest.raises(TurnFailed, match="state store"):
        read_stream(lines, time.perf_counter())


def test_conversations_are_seeded_and_grow_one_exchange_per_turn():
    a, b = Conversation(3, seed=7), Conversation(3, seed=7)
    for turn in range(1, 6):
        assert a.ask() == b.ask()
        a.answered("ok", 10 * turn)
        assert a.num_turns == turn and len(a.messages) == 2 * turn
    a.ask()
    a.forget_question()
    assert len(a.messages) == 10
