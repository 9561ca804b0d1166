"""memory.png: memory against the tokens the conversations hold, and per conversation against
its length; retserve's server and Redis beside a same-size transformer's KV cache."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from loadtest.report import read_csv  # noqa: E402

MIB = 2**20


def plot(out: Path, summary: dict) -> Path:
    per_turn = sorted(read_csv(out / "per_turn.csv"), key=lambda r: int(r["turn"]))
    kv_rows = read_csv(out / "kv_baseline.csv")
    turns = [int(r["turn"]) for r in per_turn]
    convs = [max(1, int(r["num_conversations"])) for r in per_turn]
    tokens = [int(r["tokens_held"]) for r in per_turn]
    rss = [float(r["server_rss_bytes"]) for r in per_turn]
    redis = [float(r["redis_conversation_bytes"]) for r in per_turn]
    kv_by_turn: dict[int, list[float]] = {}
    kv_tokens: dict[int, int] = {}  # the baseline's own count of the tokens it holds
    for r in kv_rows:
        kv_by_turn.setdefault(int(r["turn"]), []).append(float(r["kv_cache_bytes"]))
        kv_tokens[int(r["turn"])] = kv_tokens.get(int(r["turn"]), 0) + int(r["tokens"])
    run = summary["run"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    left.plot(tokens, [x / MIB for x in rss], "o-", ms=3,
              label=f"retserve resident memory ({run['replicas']} replicas)")
    left.plot(tokens, [x / MIB for x in redis], "s-", ms=3, label="Redis memory (states)")
    if kv_by_turn:
        kv_turns = sorted(kv_by_turn)
        left.plot([kv_tokens[t] for t in kv_turns], [sum(kv_by_turn[t]) / MIB for t in kv_turns],
                  "^-", ms=3, label="transformer KV cache, same conversations")
    left.set_xlabel(f"conversation tokens held ({run['conversations']} conversations)")
    left.set_ylabel("MiB")
    left.set_title("Memory against the tokens held")
    left.legend()
    left.grid(alpha=0.3)

    state = summary.get("state_bytes_per_session") or 0
    right.plot(turns, [state / MIB] * len(turns), "-", label="RetNet state (fixed by the model)")
    right.plot(turns, [x / n / MIB for x, n in zip(redis, convs, strict=True)], "s-", ms=3,
               label="Redis bytes per conversation")
    right.plot(turns, [(x - rss[0]) / n / MIB for x, n in zip(rss, convs, strict=True)], "o-",
               ms=3, label="server resident memory, change since turn 1, / conversations")
    if kv_by_turn:
        kv_turns = sorted(kv_by_turn)
        right.plot(kv_turns, [sum(kv_by_turn[t]) / len(kv_by_turn[t]) / MIB for t in kv_turns],
                   "^-", ms=3, label="transformer KV cache per conversation")
    right.set_xlabel("turn")
    right.set_ylabel("MiB per conversation")
    right.set_title("Memory per conversation against its length")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
