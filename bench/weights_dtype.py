"""bf16 weights on the CPU against fp32: do greedy tokens stay the same, and how much faster?

`retserve bench weights_dtype [--prompts 32] [--max-tokens 48] [--num-threads 1]`

The same prompts (random tokens of the shipped model's vocabulary, 16-64 long) decode greedily
through two engines, fp32 and bf16 weights (retention math and states stay fp32 in both). Per
prompt: whether the continuations are equal, and where they first part; the logits' largest
difference on the prompts' last position; the decode step time of each at 1 and at all prompts.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from bench.common import bench_model
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling import SamplingParams
from engine.sequence import Request


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retserve bench weights_dtype", description=__doc__)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--num-threads", type=int, default=1)
    return p.parse_args(argv)


def greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: int
           ) -> tuple[list[list[int]], float]:
    """Every prompt's greedy tokens, all decoding together, and the p50 decode step (s)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(Request(f"p{i}", prompt, params))
    tokens: dict[str, list[int]] = {f"p{i}": [] for i in range(len(prompts))}
    times = []
    while engine.has_unfinished_requests():
        is_decoding = engine.pool.num_decoding == len(prompts)
        start = time.perf_counter()
        for output in engine.step():
            tokens[output.request_id] += output.token_ids
        if is_decoding:
            times.append(time.perf_counter() - start)
    return [tokens[f"p{i}"] for i in range(len(prompts))], statistics.median(times)


def last_logits(model, prompts: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stack([model.prefill(torch.tensor([p]))[0][0, -1].float() for p in prompts])


def run(argv: list[str]) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    model, source = bench_model()
    rng = random.Random(0)
    prompts = [[rng.randrange(model.config.vocab_size) for _ in range(rng.randint(16, 64))]
               for _ in range(args.prompts)]
    result: dict = {"bench": "weights_dtype", "source": source,
                    "load_average_at_start": list(os.getloadavg()),
                    "num_threads": args.num_threads, "prompts": args.prompts,
                    "max_tokens": args.max_tokens, "dtypes": {}}
    outputs, logits = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = EngineConfig(device="cpu", dtype=dtype, max_num_seqs=args.prompts,
                              num_threads=args.num_threads)
        engine = LLMEngine(model, config)
        outputs[dtype], step_all = greedy(engine, prompts, args.max_tokens)
        _, step_one = greedy(engine, prompts[:1], args.max_tokens)
        logits[dtype] = last_logits(engine.model, prompts)
        result["dtypes"][dtype] = {"step_ms_p50_1": 1e3 * step_one,
                                   f"step_ms_p50_{args.prompts}": 1e3 * step_all}
    parts = []
    for ours, theirs in zip(outputs["bfloat16"], outputs["float32"], strict=True):
        parts.append(next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                           if a != b), len(ours)))
    diff = (logits["bfloat16"] - logits["float32"]).abs().max().item()
    result["summary"] = {
        "prompts_with_equal_greedy_tokens": sum(p == args.max_tokens for p in parts) / len(parts),
        "median_first_differing_token": statistics.median(parts),
        "tokens_equal_before_first_difference": sum(parts) / (len(parts) * args.max_tokens),
        "max_abs_logit_diff_last_prompt_position": diff,
        "logit_scale_max_abs": logits["float32"].abs().max().item(),
        "speedup_1": result["dtypes"]["float32"]["step_ms_p50_1"]
        / result["dtypes"]["bfloat16"]["step_ms_p50_1"],
        f"speedup_{args.prompts}": result["dtypes"]["float32"][f"step_ms_p50_{args.prompts}"]
        / result["dtypes"]["bfloat16"][f"step_ms_p50_{args.prompts}"],
    }
    return result
