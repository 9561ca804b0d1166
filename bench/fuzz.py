"""`retserve bench fuzz`: hostile input everywhere, with figures.

1. api: the API fuzzed from its own OpenAPI schema (bench/api_fuzz.py, Schemathesis).
2. hostile: hand-written hostile requests over raw sockets (bench/hostile.py), each round.
3. records: forged state records through a replica's reader (bench/record_fuzz.py).
4. faults: streaming clients on two replicas and one Redis while Redis, then each replica, are
   stopped and restarted (bench/faults.py); every stored record checked by recomputation.

Summary (last in the JSON): requests_tried (and by kind), server_errors (5xx in the fuzz and
the hostile runs, and any 500 under faults; must be 0), crashes (a server that exited when
nobody stopped it; 0), hangs (no answer within the bound; 0), records_tried and
records_accepted_bad (forged records that got through or raised anything but a RecordError;
0), lost_requests (under faults; 0), states_verified and states_wrong (0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.api_fuzz import FUZZ_API_KEY, FUZZ_SETTINGS, run_api_fuzz
from bench.faults import FaultRun, verify_records
from bench.hostile import BOUND_SECONDS, CASES, HOSTILE_SETTINGS
from bench.record_fuzz import run_record_fuzz
from bench.redis_process import RedisServer
from bench.server_process import ServerProcess


def _is_healthy(server: ServerProcess) -> bool:
    try:
        return server.proc.poll() is None and httpx.get(f"{server.url}/health",
                                                        timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def run_api(workdir: Path, max_examples: int, seed: int | None) -> dict:
    server = ServerProcess(workdir / "api-server", store_url="memory://",
                           api_keys=FUZZ_API_KEY, **FUZZ_SETTINGS)
    server.start()
    try:
        result = run_api_fuzz(server.url, workdir / "api-report", max_examples, seed,
                              timeout=3600, api_key=FUZZ_API_KEY)
        healthy = _is_healthy(server)
    finally:
        server.kill()
    return {"max_examples": max_examples, "seed": seed, "schemathesis_exit_code":
            result.returncode, **result.summary(), "healthy_after": healthy,
            "crashes": 0 if healthy else 1}


def run_hostile(workdir: Path, rounds: int) -> dict:
    server = ServerProcess(workdir / "hostile-server", store_url="memory://",
                           **HOSTILE_SETTINGS)
    server.start()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    slowest = 0.0
    try:
        for _ in range(rounds):
            for name, case in CASES.items():
                outcome = case(server.port)
                status = "closed" if outcome.status is None else str(outcome.status)
                by_kind[name][status] += 1
                by_kind[name]["over_bound"] += outcome.seconds >= BOUND_SECONDS
                slowest = max(slowest, outcome.seconds)
        healthy = _is_healthy(server)
    finally:
        server.kill()
    requests = sum(n for counts in by_kind.values() for k, n in counts.items()
                   if k != "over_bound")
    server_errors = sum(n for counts in by_kind.values() for k, n in counts.items()
                        if k.isdigit() and int(k) >= 500)
    accepted = sum(n for counts in by_kind.values() for k, n in counts.items()
                   if k.isdigit() and int(k) < 400)
    return {"rounds": rounds, "requests": requests, "server_errors": server_errors,
            "accepted": accepted,
            "hangs": sum(c["over_bound"] for c in by_kind.values()),
            "bound_seconds": BOUND_SECONDS, "slowest_seconds": round(slowest, 2),
            "healthy_after": healthy, "crashes": 0 if healthy else 1,
            "by_kind": {k: dict(sorted(v.items())) for k, v in by_kind.items()}}


def run_faults(workdir: Path, clients: int, pause: float, think: float) -> dict:
    redis = RedisServer(workdir / "redis", "--appendonly", "yes", "--appendfsync", "always")
    redis.start()
    namespace = f"fuzz{uuid.uuid4().hex[:8]}"
    replicas = [ServerProcess(workdir / f"replica{i}", store_url=redis.url,
                              store_namespace=namespace, store_timeout=0.5, hot_cache_mb=0,
                              drain_timeout=15).start(wait=False) for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_healthy()
        run = FaultRun(redis, replicas, num_clients=clients, pause=pause, think=think)
        report = asyncio.run(run.run())
        healthy = all(_is_healthy(r) for r in replicas)
        verify_records(report, redis.url, namespace, run.conversations, replicas[0].url)
    finally:
        for replica in replicas:
            replica.kill()
        redis.kill()
    return {"clients": clients, **report.summary(), "healthy_after": healthy,
            "crashes": 0 if healthy else 1}


def run(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench fuzz")
    p.add_argument("--api-examples", type=int, default=200,
                   help="Schemathesis examples per operation and phase")
    p.add_argument("--seed", type=int, default=None, help="Schemathesis seed (default: random)")
    p.add_argument("--hostile-rounds", type=int, default=3)
    p.add_argument("--records", type=int, default=20000, help="forged records to try")
    p.add_argument("--clients", type=int, default=32, help="streaming clients under faults")
    p.add_argument("--fault-pause", type=float, default=5.0,
                   help="seconds of load before each fault")
    p.add_argument("--think", type=float, default=1.0, help="seconds between a client's turns")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                   "api,hostile,records,faults")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="retserve-fuzz-") as tmp:
        workdir = Path(tmp)
        if "api" not in skip:
            out["api"] = run_api(workdir, args.api_examples, args.seed)
        if "hostile" not in skip:
            out["hostile"] = run_hostile(workdir, args.hostile_rounds)
        if "records" not in skip:
            out["records"] = run_record_fuzz(args.records).summary()
        if "faults" not in skip:
            out["faults"] = run_faults(workdir, args.clients, args.fault_pause, args.think)
    out["seconds"] = round(time.monotonic() - started, 1)
    out["summary"] = summarize(out)
    return out


def summarize(out: dict) -> dict:
    api, hostile = out.get("api", {}), out.get("hostile", {})
    records, faults = out.get("records", {}), out.get("faults", {})
    fault_requests = (faults.get("completed", 0) + faults.get("failed_with_error", 0)
                      + faults.get("lost", 0))
    by_kind = {"api_fuzz": api.get("requests", 0), "hostile": hostile.get("requests", 0),
               "under_faults": fault_requests}
    return {
        "requests_tried": sum(by_kind.values()),
        "requests_by_kind": by_kind,
        "server_errors": (api.get("server_errors", 0) + hostile.get("server_errors", 0)
                          + faults.get("failed_by_reason", {}).get("http 500", 0)),
        "crashes": sum(part.get("crashes", 0) for part in (api, hostile, faults)),
        "hangs": (api.get("no_answer", 0) + hostile.get("hangs", 0)
                  + faults.get("lost_by_reason", {}).get("no answer in time", 0)),
        "schema_failures": sum(api.get("failed_checks", {}).values()),
        "records_tried": records.get("tried", 0),
        "records_refused": records.get("refused", 0),
        "records_accepted_bad": records.get("accepted_bad", 0) + records.get("crashed", 0),
        "completed_under_faults": faults.get("completed", 0),
        "failed_with_error_under_faults": faults.get("failed_with_error", 0),
        "lost_requests": faults.get("lost", 0),
        "states_read_under_faults": faults.get("records_read", 0),
        "states_verified": faults.get("records_verified", 0),
        "states_wrong": faults.get("records_wrong", 0) + faults.get("records_refused", 0),
    }
