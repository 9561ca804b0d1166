"""summary.json from a run's CSV: request counts, latency percentiles, cross-replica reuse and the
memory figures between turn 2 and the last turn (50 in `make loadtest`)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np

from loadtest.processes import REPO

RSS_TARGET = 0.05  # server resident memory may change by at most 5% from turn 2 to the last
REDIS_TARGET = 0.05  # Redis bytes per conversation likewise: flat


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _change(first: float, last: float) -> float | None:
    return round((last - first) / first, 5) if first else None


def _locust_row(rows: list[dict], name: str) -> dict:
    return next((r for r in rows if r.get("Name") == name), {})


def memory_figures(per_turn: list[dict], first_turn: int = 2) -> dict:
    """RSS and Redis bytes per conversation at `first_turn` and at the last turn sampled."""
    by_turn = {int(r["turn"]): r for r in per_turn}
    if first_turn not in by_turn:
        return {}
    last = max(by_turn)
    a, b = by_turn[first_turn], by_turn[last]

    def per_conv(row: dict, field: str) -> float:
        return float(row[field]) / max(1, int(row["num_conversations"]))

    rss_a, rss_b = float(a["server_rss_bytes"]), float(b["server_rss_bytes"])
    redis_a = per_conv(a, "redis_conversation_bytes")
    redis_b = per_conv(b, "redis_conversation_bytes")
    span = f"turn{first_turn}_to_{last}"
    return {
        f"rss_change_{span}": _change(rss_a, rss_b),
        f"redis_bytes_per_conversation_change_{span}": _change(redis_a, redis_b),
        "memory": {
            "first_turn": first_turn, "last_turn": last,
            "server_rss_bytes": {"first": rss_a, "last": rss_b},
            "redis_bytes_per_conversation": {"first": round(redis_a), "last": round(redis_b)},
            "redis_keys_per_conversation": {"first": per_conv(a, "redis_keys"),
                                            "last": per_conv(b, "redis_keys")},
            "tokens_per_conversation": {"first": per_conv(a, "tokens_held"),
                                        "last": per_conv(b, "tokens_held")},
        },
    }


def summarise(out: Path, args, model: dict, kv: dict | None, locust_exit_code: int,
              load_average: dict, seconds: float, load_seconds: float) -> dict:
    requests = read_csv(out / "requests.csv")
    ok = [r for r in requests if r["ok"] == "1"]
    hops = [r for r in ok if r["had_state"] == "1"]  # each turn after the first: other replica
    ttft = [float(r["ttft_ms"]) for r in ok if r["ttft_ms"]]
    tpot = [float(r["tpot_ms"]) for r in ok if r["tpot_ms"]]
    e2el = [float(r["e2el_ms"]) for r in ok if r["e2el_ms"]]
    itl = _locust_row(read_csv(out / "locust_stats.csv"), "ITL")
    summary = {
        "requests": len(requests),
        "failed_requests": len(requests) - len(ok),
        "cross_replica_hops": len(hops),
        # session turns the server asked to resend whole (their state was gone)
        "session_fallbacks": sum(r.get("session_fallback") == "1" for r in requests),
        "cross_replica_hit_rate": (round(sum(int(r["cached_tokens"]) > 0 for r in hops)
                                   / len(hops), 5) if hops else None),
        "cached_tokens_share": (round(sum(int(r["cached_tokens"]) for r in ok)
                                      / max(1, sum(int(r["prompt_tokens"]) for r in ok)), 5)),
        "p50_ttft_ms": _percentile(ttft, 50), "p99_ttft_ms": _percentile(ttft, 99),
        "p50_tpot_ms": _percentile(tpot, 50), "p99_tpot_ms": _percentile(tpot, 99),
        "p50_e2el_ms": _percentile(e2el, 50), "p99_e2el_ms": _percentile(e2el, 99),
        # Locust's own percentiles (two significant digits): one entry per token gap
        "p50_itl_ms": float(itl["50%"]) if itl.get("50%") not in (None, "N/A") else None,
        "p99_itl_ms": float(itl["99%"]) if itl.get("99%") not in (None, "N/A") else None,
        # over the whole load, barrier waits included
        "output_tokens_per_second": round(sum(int(r["completion_tokens"]) for r in ok)
                                          / load_seconds, 2),
    }
    summary.update(memory_figures(read_csv(out / "per_turn.csv")))
    summary["state_bytes_per_session"] = model.get("state_bytes")
    if kv is not None:
        summary["transformer_kv_cache"] = kv
    summary["targets"] = _targets(summary)
    summary["run"] = {
        "conversations": args.users, "turns": args.turns, "replicas": args.replicas,
        "max_tokens": args.max_tokens, "parent_grace_s": args.parent_grace,
        "settle_s": args.settle, "hot_cache_mb": args.hot_cache_mb,
        "store_timeout_s": args.store_timeout,
        "num_threads_per_replica": args.num_threads, "model": model.get("id"),
        "locust_exit_code": locust_exit_code, "seconds": round(seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "load_average": {k: [round(x, 2) for x in v] for k, v in load_average.items()},
        "commit": _commit(),
    }
    return summary


def _targets(summary: dict) -> dict:
    targets = {"every_cross_replica_hop_reused_a_state":
               summary["cross_replica_hit_rate"] == 1.0,
               "no_failed_requests": summary["failed_requests"] == 0}
    rss = next((v for k, v in summary.items() if k.startswith("rss_change_")), None)
    redis = next((v for k, v in summary.items()
                  if k.startswith("redis_bytes_per_conversation_change_")), None)
    if rss is not None:
        targets["rss_change_within_5_percent"] = abs(rss) <= RSS_TARGET
    if redis is not None:
        targets["redis_per_conversation_within_5_percent"] = abs(redis) <= REDIS_TARGET
    kv = summary.get("transformer_kv_cache")
    if kv is not None:
        targets["transformer_kv_cache_linear_in_tokens"] = kv["linear_fit_r2"] >= 0.99
    return targets


def check(summary: dict, expected_requests: int) -> list[str]:
    """What a run must show to pass; empty when it does."""
    problems = []
    if summary["requests"] != expected_requests:
        problems.append(f"{summary['requests']} requests, expected {expected_requests}")
    if summary["failed_requests"]:
        problems.append(f"{summary['failed_requests']} failed requests")
    if summary["cross_replica_hit_rate"] != 1.0:
        problems.append(f"cross-replica hit rate {summary['cross_replica_hit_rate']} (every "
                        "turn after the first should reuse the other replica's stored state)")
    if summary["run"]["locust_exit_code"] != 0:
        problems.append(f"locust exited {summary['run']['locust_exit_code']}")
    return problems


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
