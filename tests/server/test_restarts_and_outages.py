"""Conversation state outlives the process that made it (Redis, and the default sqlite store),
and a store that goes away never fails a request: it is served by full prefill, /ready says
degraded and why, and reuse comes back when the store does, without a restart."""

from __future__ import annotations

import time

import httpx

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=12)


def two_turns(client, first_text: str):
    messages = [user(first_text)]
    first = client.chat.completions.create(messages=messages, **GREEDY)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 user("And now?")]
    return first, messages


def test_the_next_turn_hits_after_a_restart_on_redis(start_server, redis_url, namespace):
    server = start_server(store_url=redis_url, store_namespace=namespace)
    _, messages = two_turns(server.client(), unique("My city is Bergen."))
    assert server.stop() == 0
    again = start_server(store_url=redis_url, store_namespace=namespace)
    second = again.client().chat.completions.create(messages=messages, **GREEDY)
    assert second.usage.prompt_tokens_details.cached_tokens > 0


def test_the_next_turn_hits_after_a_restart_on_the_default_sqlite_store(start_server,
                                                                        tmp_path):
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    _, messages = two_turns(server.client(), unique("My dog is Rex."))
    assert server.stop() == 0
    assert (data_dir / "state.db").is_file()
    again = start_server(data_dir=data_dir)
    second = again.client().chat.completions.create(messages=messages, **GREEDY)
    assert second.usage.prompt_tokens_details.cached_tokens > 0


def wait_for(condition, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_redis_down_mid_run_serves_without_reuse_and_recovers(start_server, redis_servers):
    redis = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    # no in-process cache: it would still serve this replica's recent states
    server = start_server(store_url=redis.url, store_timeout=0.5, hot_cache_mb=0)
    client = server.client()
    first, messages = two_turns(client, unique("My colour is teal."))

    redis.kill()
    during = client.chat.completions.create(messages=messages, **GREEDY)
    assert during.choices[0].message.content  # answered, by full prefill
    assert during.usage.prompt_tokens_details.cached_tokens == 0
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["store"] == "degraded" and "unreachable" in ready["reason"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'retserve_store_errors_total{model_name="retnet-tiny-chat",operation="lookup"}' \
        in metrics

    redis.start()  # the same port; the appendonly file brings the first turn's state back
    wait_for(lambda: httpx.get(f"{server.url}/ready").json()["store"] == "ok")
    after = client.chat.completions.create(messages=messages, **GREEDY)
    assert after.usage.prompt_tokens_details.cached_tokens > 0
    assert after.choices[0].message.content == during.choices[0].message.content
