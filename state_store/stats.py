"""Operation counters and latency histograms, kept as plain numbers.

The server turns a snapshot into Prometheus series (store operations by backend/op/outcome with
latency, refused records by reason); nothing here imports prometheus_client.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

from state_store.errors import ConflictError, RecordError, StoreUnavailable

# seconds; upper bounds of the histogram buckets (+Inf is implicit)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


@dataclass
class OpStats:
    count: int = 0
    total_seconds: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total_seconds += seconds
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


class StoreStats:
    """Shared by a backend and the ConversationStore above it; single event loop, no locks."""

    def __init__(self):
        self.ops: dict[tuple[str, str, str], OpStats] = {}
        self.refused: Counter[str] = Counter()

    def observe(self, backend: str, op: str, outcome: str, seconds: float) -> None:
        key = (backend, op, outcome)
        stats = self.ops.get(key)
        if stats is None:
            stats = self.ops[key] = OpStats()
        stats.observe(seconds)

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def count(self, backend: str | None = None, op: str | None = None,
              outcome: str | None = None) -> int:
        return sum(s.count for (b, o, r), s in self.ops.items()
                   if backend in (None, b) and op in (None, o) and outcome in (None, r))

    @contextmanager
    def timed(self, backend: str, op: str):
        """Times the block; the block sets `t.outcome` (default "ok", "error" if it raises)."""
        timer = _Timer()
        start = time.perf_counter()
        try:
            yield timer
        except BaseException as e:
            if timer.outcome == "ok":
                timer.outcome = _outcome_of(e)
            raise
        finally:
            self.observe(backend, op, timer.outcome, time.perf_counter() - start)

    def snapshot(self) -> dict:
        return {
            "buckets": list(LATENCY_BUCKETS),
            "ops": [{"backend": b, "op": o, "outcome": r, "count": s.count,
                     "total_seconds": s.total_seconds, "bucket_counts": list(s.bucket_counts)}
                    for (b, o, r), s in sorted(self.ops.items())],
            "refused": dict(self.refused),
        }


class _Timer:
    outcome = "ok"


def _outcome_of(e: BaseException) -> str:
    if isinstance(e, StoreUnavailable):
        return "unavailable"
    if isinstance(e, ConflictError):
        return "conflict"
    if isinstance(e, RecordError):
        return "refused"
    return "error"
