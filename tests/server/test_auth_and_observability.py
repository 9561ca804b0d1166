"""API keys map to tenants that never see each other's states; keys never reach a log. One JSON
log line per request with its figures; X-Request-Id honoured; metrics named after vLLM's."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

ALICE, BOB, CAROL = "sk-alice-0123456789", "sk-bob-0123456789", "sk-carol-0123456789"
GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, redis_url, namespace):
    from tests.server_process import ServerProcess

    workdir = tmp_path_factory.mktemp("keyed")
    keys_file = workdir / "keys.txt"
    keys_file.write_text(f"# one key per line\n{CAROL} carol\n")
    server = ServerProcess(workdir, store_url=redis_url, store_namespace=namespace,
                           api_keys=f"{ALICE}:alice,{BOB}:bob", api_keys_file=keys_file,
                           log_format="json").start()
    yield server
    server.kill()


def test_requests_without_a_valid_key_get_401_in_openais_shape(keyed_server):
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer wrong-key-0"},
                    {"Authorization": "Bearer " + "x" * 10_000}):
        response = httpx.post(f"{keyed_server.url}/v1/chat/completions", headers=headers,
                              json={**GREEDY, "messages": [user("Hi")]})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="nope-nope-nope").models.list()
    assert keyed_server.client(api_key=CAROL).models.list().data[0].id == MODEL_NAME
    for path in ("/health", "/ready", "/metrics"):  # operations need no key
        assert httpx.get(keyed_server.url + path).status_code == 200


def test_each_key_is_a_tenant_that_cannot_reach_anothers_states(keyed_server):
    alice, bob = keyed_server.client(api_key=ALICE), keyed_server.client(api_key=BOB)
    messages = [user(unique("My secret word is plum."))]
    first = alice.chat.completions.create(messages=messages, extra_body={"session_id": "s1"},
                                          **GREEDY)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 user("What is my secret word?")]
    as_bob = bob.chat.completions.create(messages=messages, **GREEDY)
    as_alice = alice.chat.completions.create(messages=messages, **GREEDY)
    assert as_bob.usage.prompt_tokens_details.cached_tokens == 0
    assert as_alice.usage.prompt_tokens_details.cached_tokens > 0
    with pytest.raises(openai.NotFoundError):
        bob.get("/sessions/s1", cast_to=dict)
    assert alice.get("/sessions/s1", cast_to=dict)["num_tokens"] > 0


def wait_for_log_lines(server, request_ids: set[str], timeout: float = 10.0) -> dict:
    """The JSON log lines by request id, once all of these are written (a line follows its
    response)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        by_id = {line.get("request_id"): line for line in lines}
        if request_ids <= set(by_id) or time.monotonic() > deadline:
            return by_id
        time.sleep(0.05)


def test_one_json_line_per_request_with_its_figures_and_no_key(keyed_server):
    client = keyed_server.client(api_key=ALICE)
    messages = [user(unique("Remember: 42."))]
    first = client.chat.completions.create(messages=messages, **GREEDY,
                                           extra_headers={"X-Request-Id": "req-first-1"})
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 user("What should I remember?")]
    raw = client.chat.completions.with_raw_response.create(
        messages=messages, **GREEDY, extra_headers={"X-Request-Id": "req-second-2"})
    assert raw.headers["x-request-id"] == "req-second-2"
    by_id = wait_for_log_lines(keyed_server, {"req-first-1", "req-second-2"})
    second = by_id["req-second-2"]
    assert second["tokens_cached"] > 0 and second["tokens_in"] > 0
    assert second["tokens_out"] >= 1 and second["ttft_ms"] >= 0
    assert second["finish"] in ("stop", "length") and second["status"] == 200
    assert re.fullmatch(r"[0-9a-f]{12}", second["tenant"])  # a hash, not the tenant's name
    assert "req-first-1" in by_id
    generated = httpx.get(f"{keyed_server.url}/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    log = keyed_server.log()
    assert ALICE not in log and BOB not in log and CAROL not in log


def test_metrics_carry_vllms_names_and_the_state_servers_own(keyed_server):
    client = keyed_server.client(api_key=BOB)
    client.chat.completions.create(messages=[user(unique("Hello"))], **GREEDY)
    metrics = httpx.get(f"{keyed_server.url}/metrics").text
    label = f'{{model_name="{MODEL_NAME}"}}'
    for name in ("num_requests_running", "num_requests_waiting", "state_slots_used",
                 "state_slots_total", "state_bytes_per_session", "process_resident_memory_bytes",
                 "prompt_tokens_total", "generation_tokens_total", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "time_to_first_token_seconds_count",
                 "inter_token_latency_seconds_count", "e2e_request_latency_seconds_count",
                 "request_queue_time_seconds_count", "decode_batch_size_count"):
        pattern = rf"^retserve_{name}({re.escape(label)})? [0-9.e+]+$"
        assert re.search(pattern, metrics, re.M), name
    assert re.search(r'^retserve_request_success_total\{finished_reason="(stop|length)",'
                     rf'model_name="{MODEL_NAME}"\}} [1-9]', metrics, re.M)
    assert re.search(r'^retserve_store_operations_total\{backend="redis",model_name=".*",'
                     r'op="put",outcome="ok"\} [1-9]', metrics, re.M)
    assert 'retserve_store_operation_seconds_bucket{backend="redis"' in metrics
    assert float(re.search(rf"^retserve_prefix_cache_hits_total{re.escape(label)} (\S+)$",
                           metrics, re.M).group(1)) > 0
