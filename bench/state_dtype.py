"""What storing states in fp16/bf16 costs: logit error of a follow-up turn resumed from them.

Usage: retserve bench state_dtype --json [--prompts 16] [--length 512] [--follow-up 64]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import bench_model
from engine.state import RetentionState


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench state_dtype")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--follow-up", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    model, source = bench_model()
    gen = torch.Generator().manual_seed(0)
    results = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        worst, agree, total, nbytes = 0.0, 0, 0, 0
        for _ in range(args.prompts):
            ids = torch.randint(0, model.config.vocab_size, (1, args.length + args.follow_up),
                                generator=gen)
            head, tail = ids[:, :args.length], ids[:, args.length:]
            _, state = model.prefill(head)
            exact, _ = model.prefill(tail, state)
            data = state.to_bytes(dtype)
            nbytes = len(data)
            restored = RetentionState.from_bytes(data, model.config, args.length, dtype=dtype)
            resumed, _ = model.prefill(tail, restored)
            worst = max(worst, (resumed - exact).abs().max().item())
            agree += (resumed.argmax(-1) == exact.argmax(-1)).sum().item()
            total += tail.numel()
        results[str(dtype).removeprefix("torch.")] = {
            "state_bytes": nbytes, "max_abs_logit_diff": worst,
            "greedy_token_agreement": agree / total,
        }
    return {"benchmark": "state_dtype", "model": source, "prompt_tokens": args.length,
            "follow_up_tokens": args.follow_up, "by_dtype": results,
            "summary": {f"max_abs_logit_diff_{k}": v["max_abs_logit_diff"]
                        for k, v in results.items()}}
