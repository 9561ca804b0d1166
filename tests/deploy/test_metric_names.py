"""Every retserve metric that something outside the server reads (the Grafana dashboard, the
GPU overlay's autoscaler, the load test's probe) is one a running server exports."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtest.probe import SERVER_GAUGES
from tests.deploy.files import DEPLOY
from tests.server_process import MODEL_NAME

SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""], "summary": ["", "_sum", "_count"]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """The series names of a server that has served two turns of one conversation."""
    from tests.server_process import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("metrics")).start()
    try:
        messages = [{"role": "user", "content": "My name is Anika."}]
        for _ in range(2):
            reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "model": MODEL_NAME, "messages": messages, "max_tokens": 8}).json()
            messages += [reply["choices"][0]["message"],
                         {"role": "user", "content": "What is my name?"}]
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES.get(family.type, [""]))
        names.update(s.name for s in family.samples)
    return names


def _promql_names(expr: str) -> set[str]:
    return set(re.findall(r"\bretserve_[a-z0-9_]+", expr))


def test_the_dashboard_queries_exported_metrics(exported):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "retserve.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in _promql_names(target["expr"])}
    assert len(queried) >= 15
    assert not queried - exported, sorted(queried - exported)


def test_the_dashboard_shows_what_an_operator_asks_for():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "retserve.json").read_text())
    queried = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ["time_to_first_token_seconds", "inter_token_latency_seconds",
                   "generation_tokens_total", "decode_batch_size", "num_requests_running",
                   "num_requests_waiting", "prefix_cache_hits_total", "store_operation_seconds",
                   "store_errors_total", "state_bytes_per_session",
                   "process_resident_memory_bytes"]:
        assert f"retserve_{metric}" in queried, metric


def test_the_gpu_autoscaler_and_the_load_test_read_exported_metrics(exported):
    hpa = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "gpu" / "hpa-queue-depth.yaml")
                         .read_text())
    read = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} | set(SERVER_GAUGES)
    assert not read - exported, sorted(read - exported)
