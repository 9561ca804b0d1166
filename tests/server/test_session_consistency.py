"""A session's conversation lives only in the store, so a session turn never silently drops a
turn: when the store cannot read the session, cannot store the turn's state, or a concurrent
turn moved the pointer, the turn fails with a clear error and the session still holds the
conversation before it; retried, the turn goes through."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import redis as redis_client

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=8)


def chat(http: httpx.Client, session_id: str, text: str, **extra) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        **GREEDY, **extra, "session_id": session_id, "messages": [user(text)]})


def test_a_turn_whose_state_cannot_be_stored_fails_and_the_session_keeps_the_one_before(
        start_server, redis_servers):
    redis = redis_servers()
    server = start_server(store_url=redis.url, hot_cache_mb=0)
    session = f"s-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert chat(http, session, "My name is Ingrid.").status_code == 200
        before = http.get(f"/v1/sessions/{session}").json()["num_tokens"]
        with redis_client.Redis(port=redis.port) as admin:  # reads still work, writes fail
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            failed = chat(http, session, "What is my name?")
            assert failed.status_code == 503, failed.text
            assert "retry" in failed.json()["error"]["message"]
            with http.stream("POST", "/v1/chat/completions", json={
                    **GREEDY, "stream": True, "session_id": session,
                    "messages": [user("What is my name?")]}) as response:
                events = [line[6:] for line in response.iter_lines()
                          if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and '"error"' in events[-2]
            assert http.get(f"/v1/sessions/{session}").json()["num_tokens"] == before
            admin.config_set("maxmemory", 0)
        retried = chat(http, session, "What is my name?")
        assert retried.status_code == 200
        assert retried.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == before
        assert retried.json()["choices"][0]["message"]["content"] == "Ingrid"


def test_a_session_turn_is_a_503_while_the_store_is_down(start_server,
                                                                           redis_servers):
    redis = redis_servers()
    server = start_server(store_url=redis.url, store_timeout=0.5, hot_cache_mb=0)
    session = f"s-{uuid.uuid4().hex}"
    told = "My name is Ingrid."  # a Redis of its own: nothing stored before
    with httpx.Client(base_url=server.url, timeout=60) as http:
        first = chat(http, session, told)
        redis.kill()
        # only the new message: without the store there is no conversation to continue
        down = chat(http, session, "What is my name?")
        assert down.status_code == 503 and "session" in down.json()["error"]["message"]
        # the whole conversation, without the session: served by full prefill
        whole = http.post("/v1/chat/completions", json={
            **GREEDY, "messages": [
                user(told), first.json()["choices"][0]["message"], user("What is my name?")]})
        assert whole.status_code == 200
        assert whole.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_concurrent_turns_on_one_session_one_wins_the_other_is_a_409(start_server, redis_url,
                                                                     namespace):
    server = start_server(store_url=redis_url, store_namespace=namespace)
    session = f"s-{uuid.uuid4().hex}"

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            await http.post("/v1/chat/completions", json={
                **GREEDY, "session_id": session, "messages": [user(unique("I am Ada."))]})
            return await asyncio.gather(*(http.post("/v1/chat/completions", json={
                **GREEDY, "max_tokens": 40, "ignore_eos": True, "session_id": session,
                "messages": [user(f"Question {i}?")]}) for i in range(4)))

    statuses = sorted(r.status_code for r in asyncio.run(run()))
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}, statuses
    assert 409 in statuses
