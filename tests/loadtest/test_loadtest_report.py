"""summary.json's figures from a run's rows: the memory change between turns and the check that
fails a run (a failed request, a hop to the other replica that fed the whole history again)."""

from __future__ import annotations

import pytest

from loadtest.report import check, memory_figures


def turn_row(turn: int, rss: float, redis_bytes: float, conversations: int = 4) -> dict:
    return {"turn": str(turn), "server_rss_bytes": str(rss),
            "redis_conversation_bytes": str(redis_bytes), "redis_keys": str(conversations),
            "tokens_held": str(100 * turn * conversations),
            "num_conversations": str(conversations)}


def test_memory_change_is_measured_from_turn_2_to_the_last_turn():
    rows = [turn_row(1, 900.0, 4000), turn_row(2, 1000.0, 4000), turn_row(3, 1020.0, 4400)]
    figures = memory_figures(rows)
    assert figures["rss_change_turn2_to_3"] == pytest.approx(0.02)
    assert figures["redis_bytes_per_conversation_change_turn2_to_3"] == pytest.approx(0.1)
    assert figures["memory"]["redis_bytes_per_conversation"] == {"first": 1000, "last": 1100}
    assert memory_figures(rows[:1]) == {}  # no turn 2: nothing to compare


def summary(**overrides) -> dict:
    base = {"requests": 12, "failed_requests": 0, "cross_replica_hit_rate": 1.0,
            "run": {"locust_exit_code": 0}}
    return {**base, **overrides}


def test_check_passes_a_whole_run_and_names_each_problem():
    assert check(summary(), 12) == []
    assert any("failed" in p for p in check(summary(failed_requests=1), 12))
    assert any("expected 12" in p for p in check(summary(requests=11), 12))
    assert any("cross-replica" in p for p in check(summary(cross_replica_hit_rate=0.9), 12))
    assert any("locust" in p for p in check(summary(run={"locust_exit_code": 1}), 12))


def test_smoke_size_fits_ci():
    from loadtest.run import parse_args

    args = parse_args(["--smoke"])
    assert (args.users, args.turns, args.no_baseline, args.no_plot) == (4, 3, True, True)
    assert args.run_time == "45s"  # Locust stops the load itself well inside CI's 60 s
