"""A server's life: 503 while the model loads; SIGTERM drains (ready 503, new requests 503,
streams in flight finish and their states are saved, exit 0); a request past its timeout ends
with a clear error."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import httpx

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME


def test_health_is_503_while_the_model_loads_then_200(start_server):
    server = start_server(wait=False, store_url="memory://")
    statuses = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and 200 not in statuses:
        try:
            statuses.append(httpx.get(f"{server.url}/health", timeout=1).status_code)
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.02)
    assert statuses[0] == 503 and statuses[-1] == 200, statuses[:3]
    assert set(statuses) == {503, 200}


async def stream_lines(client: httpx.AsyncClient, body: dict, first_chunk: asyncio.Event):
    lines = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                first_chunk.set()
    return lines


def test_sigterm_drains_streams_saves_their_states_and_exits_0(start_server, redis_url,
                                                               namespace):
    server = start_server(store_url=redis_url, store_namespace=namespace, drain_timeout=60)
    sessions = [f"drain-{uuid.uuid4().hex}" for _ in range(3)]
    # long enough to be mid-stream at SIGTERM + 0.3 s however fast the decode step is
    body = dict(model=MODEL_NAME, temperature=0.0, max_tokens=3000, ignore_eos=True,
                stream=True)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            started = [asyncio.Event() for _ in sessions]
            streams = [asyncio.create_task(stream_lines(
                client, {**body, "session_id": s, "messages": [user(unique("Tell a story."))]},
                started[i])) for i, s in enumerate(sessions)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await client.get("/ready")
            refused = await client.post("/v1/chat/completions", json={
                **body, "stream": False, "messages": [user("hi")]})
            return ready, refused, await asyncio.gather(*streams)

    ready, refused, streams = asyncio.run(run())
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    for lines in streams:  # every stream ran to its end
        assert lines[-1] == "[DONE]"
        finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, lines[:-1])
                    if c["choices"]]
        assert finishes[-1] == "length"
    assert server.proc.wait(60) == 0
    # the states were saved: a new server finds every session with its reply folded in
    again = start_server(store_url=redis_url, store_namespace=namespace)
    for session_id in sessions:
        info = httpx.get(f"{again.url}/v1/sessions/{session_id}").json()
        assert info["num_tokens"] > 100


def test_a_request_past_its_timeout_ends_with_a_clear_error(start_server):
    server = start_server(store_url="memory://", request_timeout=0.5)
    body = dict(model=MODEL_NAME, max_tokens=4000, ignore_eos=True, temperature=0.0,
                messages=[user("Go on and on.")])
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "request_timeout"
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "request_timeout"
        metrics = client.get("/metrics").text
        assert 'retserve_state_slots_used{model_name="retnet-tiny-chat"} 0.0' in metrics
