"""The `retserve` console script: every subcommand is registered; benchmarks print JSON."""

import json
import subprocess
import sys

import pytest

from server.cli import COMMANDS, build_parser


def test_every_subcommand_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)


def test_bench_forms_prints_json_with_its_summary():
    out = subprocess.run([sys.executable, "-m", "server.cli", "bench", "forms", "--json",
                          "--lengths", "64,200"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    summary = json.loads(out)["summary"]
    assert summary["max_abs_diff_fp32"] < 1e-4
    assert set(summary) == {"max_abs_diff_fp32", "chunkwise_tps_ratio_16k_vs_256",
                            "step_time_ratio_16k_vs_16"}


def bench(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "server.cli", "bench", *argv], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out)


def test_bench_decode_reports_the_step_against_its_limit():
    result = bench("decode", "--configs", "default", "--concurrency", "1,2", "--steps", "8",
                   "--num-threads", "1")
    model = result["models"]["default"]
    assert model["matmul_peak_gflop_s"] > 0 and model["copy_bandwidth_gb_s"] > 0
    for row in model["concurrency"]:
        assert row["limit_ms"] == pytest.approx(max(row["roofline_ms"], row["compute_ms"]))
        assert row["limit_fraction"] == pytest.approx(row["limit_ms"] / row["step_ms_p50"])
        assert row["limit_fraction"] > 0
    assert result["summary"]["limit_fraction_1"] == model["concurrency"][0]["limit_fraction"]


def test_bench_engine_memory_runs_turns_under_the_tuned_allocator():
    result = bench("engine_memory", "--conversations", "4", "--turns", "3", "--max-tokens", "4",
                   "--async")
    assert result["malloc_tuned"] and len(result["per_turn"]) == 3
    assert result["tokens_per_conversation_last"] > 3 * 8
    assert "rss_change_turn2_to_last" in result["summary"]
