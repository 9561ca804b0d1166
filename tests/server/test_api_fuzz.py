"""The whole API fuzzed from its own OpenAPI schema (Schemathesis, bounded for CI; `make fuzz`
runs longer): every operation, sessions and responses included, answers every generated
request without a 5xx, as its schema declares, and with OpenAI's error shape on every 4xx."""

from __future__ import annotations

import time

import httpx

from bench.api_fuzz import FUZZ_API_KEY, FUZZ_SETTINGS, run_api_fuzz

OPERATIONS = {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses",
              "GET /v1/responses/{response_id}", "DELETE /v1/responses/{response_id}",
              "GET /v1/responses/{response_id}/input_items", "GET /v1/models",
              "GET /v1/models/{model_id}", "GET /v1/sessions/{session_id}",
              "DELETE /v1/sessions/{session_id}", "POST /v1/sessions/{session_id}/fork",
              "GET /health", "GET /ready", "GET /version", "GET /metrics"}


def test_every_operation_answers_fuzzed_requests_as_its_schema_says(start_server, tmp_path):
    server = start_server(store_url="memory://", api_keys=FUZZ_API_KEY, **FUZZ_SETTINGS)
    started = time.monotonic()
    result = run_api_fuzz(server.url, tmp_path / "fuzz", max_examples=25, seed=14,
                          timeout=120, api_key=FUZZ_API_KEY)
    assert result.is_clean, result.output[-6000:]
    assert set(result.requests_by_operation) == OPERATIONS
    # the steered half reaches real turns, not only refusals
    for operation in ("POST /v1/chat/completions", "POST /v1/completions",
                      "POST /v1/responses", "GET /v1/sessions/{session_id}"):
        assert result.requests_by_operation[operation].get("200", 0) > 0, operation
        assert result.requests_by_operation[operation].get("401", 0) > 0, operation
    assert result.num_requests > 1000
    assert time.monotonic() - started < 60
    assert httpx.get(f"{server.url}/health").status_code == 200
