"""The server's engine runs in a process of its own: its memory is exported beside the
server's, and an engine process that dies is reported (503s, never a hang) instead of hidden."""

import os
import re
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=8)


def children(pid: int) -> list[int]:
    """Of every thread of the process (a child belongs to the thread that started it)."""
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


def engine_pid(server) -> int:
    found = children(server.proc.pid)
    assert len(found) == 1, found
    return found[0]


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.M)
    assert match, name
    return float(match.group(1))


def test_the_engine_process_memory_is_exported_and_a_dead_engine_is_reported(start_server):
    server = start_server()
    client = server.client()
    assert client.chat.completions.create(messages=[user(unique("Hi"))], **GREEDY).choices
    metrics = httpx.get(f"{server.url}/metrics").text
    assert gauge(metrics, "retserve_engine_process_resident_memory_bytes") > 50 * 2**20
    assert gauge(metrics, "retserve_process_resident_memory_bytes") > 0

    os.kill(engine_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/health").status_code == 200:
        assert time.monotonic() < deadline, "/health still 200 with the engine gone"
        time.sleep(0.05)
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert httpx.get(f"{server.url}/ready").status_code == 503
    with pytest.raises(openai.APIStatusError) as refused:
        client.with_options(timeout=10).chat.completions.create(
            messages=[user(unique("Hi again"))], **GREEDY)
    assert refused.value.status_code == 503
    assert refused.value.body["message"]


def test_a_server_without_an_engine_process_serves_from_its_own_thread(start_server):
    server = start_server(engine_process=False)
    reply = server.client().chat.completions.create(messages=[user(unique("Hi"))], **GREEDY)
    assert reply.choices[0].message.content
    assert not children(server.proc.pid)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "retserve_engine_process_resident_memory_bytes" not in metrics
