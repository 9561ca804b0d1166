"""Retention forms: agreement and speed of parallel vs chunkwise prefill, recurrent step cost.

Usage: retserve bench forms --json [--lengths 256,1024,...] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import bench_model, time_call
from engine.state import RetentionState

MAX_PARALLEL_BYTES = 8 * 2**30  # the T x T decay mask and scores dominate; skip beyond this


def _parallel_bytes(model, length: int) -> int:
    return 6 * model.config.num_heads * length * length * 4


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench forms")
    p.add_argument("--lengths", default="256,1024,4096,8192,16384")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    model, source = bench_model(device=args.device)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    rows, worst = [], 0.0
    for length in [int(x) for x in args.lengths.split(",")]:
        ids = torch.randint(0, vocab, (1, length), generator=gen).to(args.device)
        chunk_t = min(time_call(lambda ids=ids: model.prefill(ids), 2, args.device))
        chunk_logits, _ = model.prefill(ids)
        row = {"length": length, "chunkwise_tokens_per_s": length / chunk_t}
        state, rec = model.empty_state(1), []
        for t in range(length):
            logits, state = model.step(ids[:, t], state)
            rec.append(logits)
        rec_logits = torch.stack(rec, 1)
        row["max_abs_diff_chunkwise_recurrent"] = (chunk_logits - rec_logits).abs().max().item()
        if _parallel_bytes(model, length) <= MAX_PARALLEL_BYTES:
            par_t = min(time_call(lambda ids=ids: model.forward_parallel(ids), 2, args.device))
            par_logits = model.forward_parallel(ids)
            row["parallel_tokens_per_s"] = length / par_t
            row["max_abs_diff_parallel_chunkwise"] = (par_logits - chunk_logits).abs().max().item()
            row["max_abs_diff_parallel_recurrent"] = (par_logits - rec_logits).abs().max().item()
        else:
            row["parallel_tokens_per_s"] = None
            row["parallel_skipped"] = "T x T scores exceed the memory cap"
        worst = max(worst, *(v for k, v in row.items() if k.startswith("max_abs_diff")))
        rows.append(row)
    step_times = {}
    for position in (16, 16384):
        state = model.empty_state(8)
        state = RetentionState(torch.randn_like(state.kv) * 0.1,
                               torch.full((8,), position, device=args.device), state.conv)
        ids = torch.randint(0, vocab, (8,), generator=gen).to(args.device)
        step = lambda s=state, ids=ids: model.step(ids, s)
        step_times[position] = min(time_call(step, 20, args.device))
    first, last = rows[0], rows[-1]
    return {
        "benchmark": "forms", "model": source, "device": args.device, "dtype": "float32",
        "chunk_size": model.config.chunk_size, "lengths": rows,
        "recurrent_step_seconds": {"position_16": step_times[16],
                                   "position_16384": step_times[16384], "batch": 8},
        "summary": {
            "max_abs_diff_fp32": worst,
            "chunkwise_tps_ratio_16k_vs_256": last["chunkwise_tokens_per_s"]
            / first["chunkwise_tokens_per_s"],
            "step_time_ratio_16k_vs_16": step_times[16384] / step_times[16],
        },
    }
