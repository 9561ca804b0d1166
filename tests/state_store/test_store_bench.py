"""bench/store.py runs end to end on every backend and reports its summary."""

from bench.store import run


def test_bench_store_reports_every_backend(redis_url):
    result = run(["--redis-url", redis_url, "--sizes", "64K,1M", "--budget-mb", "4"])
    assert set(result["backends"]) == {"redis", "sqlite", "memory"}
    for name, backend in result["backends"].items():
        assert "error" not in backend, (name, backend)
        assert [row["size"] for row in backend["sizes"]] == ["64KB", "1MB"]
        for row in backend["sizes"]:
            assert row["get"]["p50_ms"] <= row["get"]["p99_ms"]
            assert row["put"]["mb_per_s"] > 0
    summary = result["summary"]
    assert summary["redis_get_p99_ms_1mb"] > 0
    assert summary["redis_mb_per_s_64mb"] is None  # not measured at these sizes
    assert result["hot_cache"]["lookup_hit_p50_us"] > 0
