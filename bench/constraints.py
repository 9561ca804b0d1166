"""What grammar-constrained decoding costs the engine, and how forced tokens are best fed.

`retserve bench constraints [--batch 16] [--constrained 8] [--max-tokens 160]`

On the shipped model: `--batch` requests decode together, `--constrained` of them under a JSON
schema (engine/constraints.py), the rest free. Reports
- mask work per token (llguidance, on its worker: off the engine thread) and what the engine
  thread spends per step waiting for masks and applying them (on the critical path);
- the decode step time of the same batch with no grammar at all;
- forced tokens fed like prompt tokens (EngineConfig.forced_tokens="prefill": one chunkwise
  call per sequence, the next sample one step later) vs one per decode step ("decode": no extra
  model call, a step per token): steps, wall time, and time to the last token of a structured
  request.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import llguidance
import torch

from bench.common import bench_model, percentile
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.tokenizer import Tokenizer
from server.grammar import json_schema_grammar

SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": {"type": "string", "maxLength": 16},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "city": {"type": "string", "maxLength": 16},
                   "tags": {"type": "array", "maxItems": 4,
                            "items": {"enum": ["friend", "colleague", "neighbour"]}}},
    "required": ["name", "age", "city", "tags"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retserve bench constraints", description=__doc__)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--constrained", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def requests(tok: Tokenizer, num: int, num_constrained: int, max_tokens: int,
             grammar: str | None) -> list[Request]:
    out = []
    for i in range(num):
        constrained = grammar is not None and i < num_constrained
        prompt = tok.encode_chat([{"role": "user", "content": f"Person {i} as JSON, please."}])
        out.append(Request(f"r{i}", prompt, SamplingParams(
            temperature=1.0, seed=i, max_tokens=max_tokens,
            grammar=grammar if constrained else None)))
    return out


def run_batch(engine: LLMEngine, batch: list[Request]) -> dict:
    """Runs to completion; step times and when each request finished."""
    for request in batch:
        engine.add_request(request)
    step_times, finished, start = [], {}, time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        outputs = engine.step()
        step_times.append(time.perf_counter() - t0)
        for output in outputs:
            if output.finished:
                finished[output.request_id] = (time.perf_counter() - start,
                                               output.num_generated_tokens)
    return {"steps": step_times, "finished": finished, "wall": time.perf_counter() - start}


def run(argv: list[str]) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    config = EngineConfig(max_num_seqs=max(args.batch, 1), device=args.device,
                          num_threads=args.num_threads)
    model, source = bench_model(device=config.torch_device, dtype=config.torch_dtype)
    tok = Tokenizer.from_dir(source)
    grammar = json_schema_grammar(SCHEMA)
    result: dict = {"model": source, "device": str(config.torch_device),
                    "llguidance": llguidance.__version__, "batch": args.batch,
                    "constrained_rows": args.constrained, "schema": SCHEMA}

    plain_engine = LLMEngine(model, config, tok)
    run_batch(plain_engine, requests(tok, 2, 0, 8, None))  # warm-up
    plain = run_batch(plain_engine, requests(tok, args.batch, 0, args.max_tokens, None))
    result["unconstrained"] = {"step_ms_p50": 1e3 * statistics.median(plain["steps"])}

    for mode in ("prefill", "decode"):
        engine = LLMEngine(model, dataclasses.replace(config, forced_tokens=mode), tok)
        run_batch(engine, requests(tok, 2, 2, 24, grammar))  # warm-up: compile, first masks
        constraints = engine.constraints
        constraints.mask_seconds.clear()
        constraints.apply_seconds.clear()
        before = engine.stats()
        batch = run_batch(engine, requests(tok, args.batch, args.constrained,
                                           args.max_tokens, grammar))
        after = engine.stats()
        structured = [batch["finished"][f"r{i}"] for i in range(args.constrained)]
        masks_us = [1e6 * s for s in constraints.mask_seconds]
        apply_us = [1e6 * s for s in constraints.apply_seconds]
        result[f"forced_{mode}"] = {
            "steps": after.num_steps - before.num_steps,
            "wall_s": round(batch["wall"], 3),
            "step_ms_p50": 1e3 * statistics.median(batch["steps"]),
            "structured_tokens": sum(n for _, n in structured),
            "forced_tokens": after.num_forced_tokens - before.num_forced_tokens,
            "structured_done_s_p50": statistics.median(t for t, _ in structured),
            "mask_us_per_token_p50": percentile(masks_us, 50),
            "mask_us_per_token_p99": percentile(masks_us, 99),
            "wait_and_apply_us_per_step_p50": percentile(apply_us, 50),
            "wait_and_apply_us_per_step_p99": percentile(apply_us, 99),
        }
        constraints.close()
    prefill, decode = result["forced_prefill"], result["forced_decode"]
    result["summary"] = {
        "mask_us_per_token_p50": prefill["mask_us_per_token_p50"],
        "critical_path_us_per_step_p50": prefill["wait_and_apply_us_per_step_p50"],
        "step_ms_p50_unconstrained": result["unconstrained"]["step_ms_p50"],
        "step_ms_p50_constrained": prefill["step_ms_p50"],
        "forced_prefill_vs_decode_wall": round(prefill["wall_s"] / decode["wall_s"], 3),
        "forced_prefill_vs_decode_structured_done": round(
            prefill["structured_done_s_p50"] / decode["structured_done_s_p50"], 3),
    }
    return result
