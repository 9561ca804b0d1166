"""State store latency and throughput: put/get of records of several sizes on each backend.

Usage: python -m bench.store [--redis-url redis://127.0.0.1:6379/0] [--sizes 64K,1M,16M,64M]
(later: retserve bench store --json). Prints one JSON object; sizes are in bytes, throughput in
MiB/s (2**20 bytes per second), latencies in milliseconds (hot cache: microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid

from bench.common import percentile
from state_store import ConversationStore, HotCache, StateRecord, open_store
from state_store.codec import decode_record, encode_record

MiB = 2**20
TARGETS = {"redis_get_p99_ms_1mb": 5.0, "redis_mb_per_s_64mb": 300.0}


def _size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _label(num_bytes: int) -> str:
    return f"{num_bytes // MiB}MB" if num_bytes >= MiB else f"{num_bytes // 1024}KB"


def _summary(times: list[float], num_bytes: int) -> dict:
    median = percentile(times, 50)
    return {"p50_ms": median * 1e3, "p99_ms": percentile(times, 99) * 1e3,
            "mb_per_s": num_bytes / median / MiB, "n": len(times)}


def _iterations(num_bytes: int, budget_bytes: int) -> int:
    return max(8, min(1000, budget_bytes // num_bytes))


async def _bench_backend(url: str, sizes: list[int], budget_bytes: int, part_size: int) -> dict:
    store = open_store(url, part_size=part_size, timeout=5.0)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    rows = []
    try:
        for num_bytes in sizes:
            payload = random.randbytes(num_bytes)
            key = f"{prefix}:{num_bytes}"
            await store.put(key, payload)  # warm up: connections, pages, allocator
            if await store.get(key) != payload:
                raise AssertionError(f"{url}: read back differs at {num_bytes} bytes")
            # all puts, then all gets: a get right behind a put of the same size would also
            # measure the server freeing the old value
            puts, gets = [], []
            for _ in range(_iterations(num_bytes, budget_bytes)):
                t0 = time.perf_counter()
                await store.put(key, payload)
                puts.append(time.perf_counter() - t0)
            for _ in range(_iterations(num_bytes, budget_bytes)):
                t0 = time.perf_counter()
                await store.get(key)
                gets.append(time.perf_counter() - t0)
            await store.delete(key)
            rows.append({"size": _label(num_bytes), "bytes": num_bytes,
                         "put": _summary(puts, num_bytes), "get": _summary(gets, num_bytes)})
    finally:
        for key in await store.list(prefix):
            await store.delete(key)
        await store.close()
    return {"url": url, "sizes": rows}


async def _bench_hot_cache(num_bytes: int, repeats: int = 2000) -> dict:
    """A ConversationStore lookup answered from the hot cache (no backend round trip)."""
    fingerprint = "b" * 32
    body = random.randbytes(num_bytes)
    record = StateRecord(fingerprint, "float32", [("S", (num_bytes // 4,))], 100, body)
    store = open_store("memory://")
    conv = ConversationStore(store, fingerprint, hot_cache=HotCache(4 * num_bytes + MiB))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"}]
    await conv.save("bench", messages[:2], record)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await conv.lookup("bench", messages)
        times.append(time.perf_counter() - t0)
    await store.close()
    return {"record_bytes": num_bytes, "lookup_hit_p50_us": percentile(times, 50) * 1e6,
            "lookup_hit_p99_us": percentile(times, 99) * 1e6}


def _bench_codec(num_bytes: int, repeats: int = 5) -> dict:
    record = StateRecord("c" * 32, "float32", [("S", (num_bytes // 4,))], 1,
                         random.randbytes(num_bytes))
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = encode_record(record)
        t1 = time.perf_counter()
        decode_record(data, "c" * 32)
        dec.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
    return {"record_bytes": num_bytes, "encode_mb_per_s": num_bytes / min(enc) / MiB,
            "decode_mb_per_s": num_bytes / min(dec) / MiB}


async def _main(args) -> dict:
    sizes = [_size(s) for s in args.sizes.split(",")]
    backends = {"redis": args.redis_url, "memory": "memory://",
                "sqlite": f"sqlite:///{args.sqlite_dir}/bench-store.db"}
    result = {"units": {"latency": "ms", "throughput": "MiB/s"},
              # other work on the machine shows up in the tails; say how busy it was
              "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
              "backends": {}}
    for name in args.backends.split(","):
        try:
            result["backends"][name] = await _bench_backend(
                backends[name], sizes, args.budget_mb * MiB, args.part_size)
        except Exception as e:  # a bench run reports a missing backend instead of dying
            result["backends"][name] = {"url": backends[name], "error": f"{type(e).__name__}: {e}"}
    if "sizes" in result["backends"].get("memory", {}):
        result["backends"]["memory"]["note"] = "a dict keeps a reference: no copy, no I/O"
    result["hot_cache"] = await _bench_hot_cache(min(sizes[0], MiB))
    result["codec"] = _bench_codec(max(sizes))
    result["summary"] = _headline(result["backends"].get("redis", {}))
    return result


def _headline(redis_result: dict) -> dict:
    rows = {row["bytes"]: row for row in redis_result.get("sizes", [])}
    one, big = rows.get(MiB), rows.get(64 * MiB)
    summary = {
        "redis_get_p99_ms_1mb": one["get"]["p99_ms"] if one else None,
        # the slower direction: a turn both loads and saves its state
        "redis_mb_per_s_64mb": min(big["put"]["mb_per_s"], big["get"]["mb_per_s"]) if big else None,
        "redis_get_mb_per_s_64mb": big["get"]["mb_per_s"] if big else None,
        "redis_put_mb_per_s_64mb": big["put"]["mb_per_s"] if big else None,
    }
    summary["targets"] = TARGETS
    summary["meets_targets"] = None if None in summary.values() else (
        summary["redis_get_p99_ms_1mb"] <= TARGETS["redis_get_p99_ms_1mb"]
        and summary["redis_mb_per_s_64mb"] >= TARGETS["redis_mb_per_s_64mb"])
    return summary


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench store")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--sizes", default="64K,1M,16M,64M")
    p.add_argument("--backends", default="redis,sqlite,memory")
    p.add_argument("--sqlite-dir", default=None, help="default: a temporary directory")
    p.add_argument("--budget-mb", type=int, default=512,
                   help="bytes moved per size and direction (bounds the iteration count)")
    p.add_argument("--part-size", type=_size, default=8 * MiB)
    p.add_argument("--json", action="store_true", help="accepted for the CLI; output is JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.sqlite_dir = args.sqlite_dir or tmp
        os.makedirs(args.sqlite_dir, exist_ok=True)
        return asyncio.run(_main(args))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
