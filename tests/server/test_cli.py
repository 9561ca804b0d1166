"""The `retserve` console script: every subcommand is registered; benchmarks print JSON."""

import json
import subprocess
import sys

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
