"""Backpressure and cancellation: a full queue answers 429 with Retry-After; clients that leave
mid-stream free their slots, and nothing is left behind."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.server.conftest import user
from tests.server_process import MODEL_NAME

LONG = dict(model=MODEL_NAME, max_tokens=400, ignore_eos=True, temperature=1.0)


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf'^retserve_{name}{{model_name="{MODEL_NAME}"}} (\S+)$', metrics, re.M)
    return float(match.group(1))


def test_two_hundred_streams_cancelled_mid_stream_leave_every_slot_free(start_server):
    server = start_server(store_url="memory://", max_num_seqs=32, max_waiting=256)

    async def cancel_after_two_chunks(client: httpx.AsyncClient, i: int) -> int:
        body = {**LONG, "stream": True, "messages": [user(f"Story number {i}, please.")]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 3:  # the role chunk and two tokens: then leave
                    return seen
        return seen

    async def run():
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(cancel_after_two_chunks(client, i)
                                          for i in range(200)))

    assert all(seen == 3 for seen in asyncio.run(run()))
    deadline = time.monotonic() + 30
    while True:
        metrics = httpx.get(f"{server.url}/metrics").text
        if gauge(metrics, "state_slots_used") == 0 and gauge(metrics, "num_requests_running") \
                == 0 and gauge(metrics, "num_requests_waiting") == 0:
            break
        assert time.monotonic() < deadline, "slots still taken"
        time.sleep(0.2)
    assert 'finished_reason="abort"' in metrics
    # and the server still serves, with its full capacity
    done = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL_NAME, "max_tokens": 4, "messages": [user("Hi")]})
    assert done.status_code == 200


def test_an_overfull_queue_answers_429_with_retry_after(start_server):
    server = start_server(store_url="memory://", max_num_seqs=2, max_waiting=2)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            body = {**LONG, "max_tokens": 200, "messages": [user("Talk.")]}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body)
                                          for _ in range(12)))

    responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_a_stream_waiting_for_a_slot_gets_keepalive_comments(start_server):
    server = start_server(store_url="memory://", max_num_seqs=1, keepalive_seconds=0.3)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            hog = asyncio.create_task(client.post("/v1/chat/completions", json={
                **LONG, "max_tokens": 4000, "messages": [user("Talk for a while.")]}))
            await asyncio.sleep(0.5)  # the hog holds the only slot
            lines = []
            async with client.stream("POST", "/v1/chat/completions", json={
                    **LONG, "max_tokens": 2, "stream": True,
                    "messages": [user("Me too.")]}) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
            await hog
            return lines

    lines = asyncio.run(run())
    first_token = next(i for i, line in enumerate(lines) if '"content": "' in line
                       and '"content": ""' not in line)
    assert any(line.startswith(": ping") for line in lines[:first_token]), lines[:6]
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
