"""`make loadtest`: Redis-backed retserve replicas on loopback under multi-turn chat load, and
the memory-per-session report.

    python -m loadtest.run                  # 64 conversations x 50 turns, 2 replicas, one Redis
    python -m loadtest.run --smoke --check  # CI: 4 x 3, asserts no failed request

Starts its own redis-server on a free port and the replicas, runs Locust headless in lockstep
(every conversation at turn k when memory is sampled), then writes into --out: Locust's CSV,
per-turn and periodic samples (server RSS from /metrics, Redis INFO memory), one row per request,
the transcripts, the same conversations' KV-cache bytes in a transformer of the same parameter
count (loadtest/kv_baseline.py), summary.json and memory.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.redis_process import RedisServer
from loadtest.processes import REPO, Retserve
from loadtest.report import check, summarise


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=64, help="concurrent conversations")
    p.add_argument("--turns", type=int, default=50, help="turns per conversation")
    p.add_argument("--replicas", type=int, default=2, help="retserve processes on one Redis")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--run-time", default="90m", help="Locust's bound on the whole run (a "
                   "safety net: the run ends when every conversation has had its turns)")
    p.add_argument("--parent-grace", type=float, default=1.0,
                   help="the servers' --parent-grace: shorter than --settle")
    p.add_argument("--settle", type=float, default=1.5, help="seconds at each turn's barrier "
                   "before the memory sample")
    p.add_argument("--hot-cache-mb", type=int, default=16,
                   help="each replica's hot cache (full from turn 2 at 64 conversations)")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads per replica")
    p.add_argument("--store-timeout", type=float, default=5.0,
                   help="the servers' --store-timeout: replicas, Redis and Locust share this "
                   "machine's cores, so a Redis call can wait seconds for a CPU, not for Redis")
    p.add_argument("--out", type=Path, default=REPO / "loadtest" / "results")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the transformer KV-cache baseline (needs transformers)")
    p.add_argument("--no-plot", action="store_true", help="skip memory.png (needs matplotlib)")
    p.add_argument("--smoke", action="store_true",
                   help="CI size: 4 conversations x 3 turns, no baseline, no plot")
    p.add_argument("--check", action="store_true", help="exit 1 unless every turn succeeded "
                   "and every hop to the other replica reused the stored state")
    args = p.parse_args(argv)
    if args.smoke:
        args.users, args.turns, args.max_tokens, args.run_time = 4, 3, 16, "45s"
        args.no_baseline = args.no_plot = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the finally below stops what it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.csv"):
        old.unlink()
    load_before = os.getloadavg()
    started = time.monotonic()
    # no snapshots, no AOF: memory is what is measured, and nothing outlives the run
    redis_server = RedisServer(out / "redis", "--appendonly", "no")
    replicas: list[Retserve] = []
    try:
        redis_server.start()
        replicas = [Retserve(i, redis_server.url, out, parent_grace=args.parent_grace,
                             hot_cache_mb=args.hot_cache_mb, num_threads=args.num_threads,
                             store_timeout=args.store_timeout,
                             log_level="warning")
                    for i in range(args.replicas)]
        for replica in replicas:
            replica.wait_ready()
        print(f"{len(replicas)} replicas ready on one Redis in {time.monotonic() - started:.0f} s;"
              f" {args.users} conversations x {args.turns} turns", flush=True)
        model = httpx.get(f"{replicas[0].url}/v1/models", timeout=10).json()["data"][0]
        load_started = time.monotonic()
        code = _locust(args, [r.url for r in replicas], redis_server.url, model["id"])
        load_seconds = time.monotonic() - load_started
    finally:
        for replica in replicas:
            replica.stop()
        redis_server.kill()
    kv = None
    if not args.no_baseline:
        from loadtest.kv_baseline import measure_transcripts

        print("transformer baseline: the same conversations through a same-size decoder-only "
              "transformer's KV cache", flush=True)
        kv = measure_transcripts(out / "transcripts.jsonl", out / "kv_baseline.csv")
    summary = summarise(out, args, model, kv, locust_exit_code=code,
                        load_average={"before": load_before, "after": os.getloadavg()},
                        seconds=time.monotonic() - started, load_seconds=load_seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plot:
        from loadtest.plot import plot

        plot(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=2))
    if args.check:
        problems = check(summary, args.users * args.turns)
        for problem in problems:
            print(f"loadtest check failed: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def _locust(args, urls: list[str], redis_url: str, model: str) -> int:
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
           "--headless", "--only-summary", "-u", str(args.users), "-r", str(args.users),
           "--run-time", args.run_time, "--host", urls[0], "--servers", ",".join(urls),
           "--turns", str(args.turns), "--max-tokens", str(args.max_tokens), "--model", model,
           "--lockstep", "--settle", str(args.settle), "--redis-url", redis_url,
           "--results-dir", str(args.out), "--csv", str(args.out / "locust"),
           "--loglevel", "WARNING"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
