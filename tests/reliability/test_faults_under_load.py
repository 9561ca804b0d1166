"""Faults under load (bounded for CI; `make fuzz` runs a longer one): 32 streaming clients on two
replicas sharing one Redis while Redis is SIGKILLed and restarted, one replica is sent SIGTERM
and restarted, the other SIGKILLed and restarted. Every request completes or fails with an
error its client sees; none is lost; every stored record decodes and equals its conversation
fed whole through the model; and every conversation continues afterwards."""

from __future__ import annotations

import asyncio
import uuid

from bench.faults import FaultRun, verify_records


def test_faults_under_load_lose_no_request_and_store_no_wrong_state(start_server,
                                                                    redis_servers):
    redis = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    namespace = f"faults{uuid.uuid4().hex[:8]}"
    replicas = [start_server(wait=False, store_url=redis.url, store_namespace=namespace,
                             store_timeout=0.5, hot_cache_mb=0, drain_timeout=15)
                for _ in range(2)]
    for replica in replicas:
        replica.wait_healthy()
    # clients read for 8 s between turns: every record is recomputed afterwards, so fewer
    # turns keep the test near a minute (make fuzz runs 1 s)
    run = FaultRun(redis, replicas, num_clients=32, turns_after=2, pause=1.0, think=8.0)
    report = asyncio.run(run.run())
    verify_records(report, redis.url, namespace, run.conversations, replicas[0].url)
    summary = report.summary()

    assert [f["fault"] for f in report.faults] == [
        "redis SIGKILL", "redis restart", "replica 0 SIGTERM (drains)", "replica 0 restart",
        "replica 1 SIGKILL", "replica 1 restart"]
    assert summary["lost"] == 0, summary
    assert report.completed > 2 * 32, summary
    assert report.conversations_continued == 32, summary
    assert report.records_refused == 0 and report.records_wrong == 0, summary
    assert report.records_verified >= 32, summary
