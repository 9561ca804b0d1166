"""Decode throughput of the continuous-batching engine vs one sequence at a time.

`retserve bench decode [--configs default,1.3b] [--concurrency 1,2,...] [--torchscale] ...`

For each model and concurrency: aggregate decode tokens/s and per-step latency (p50/p99) of the
engine's batched recurrent step, the same work done one sequence at a time through `model.step`
(the naive baseline), the step's hardware limit and the step time with states at position 16
vs 16384 (a recurrent step costs the same at any position).

The limit of a step is max(bytes moved / copy bandwidth, FLOPs / matmul peak), both measured in
the same run: bytes = the weights the step reads + 2 x sessions x state (each state read and
written once), FLOPs = 2 per weight per session + the retention update and readout.
`limit_fraction` = limit / measured p50 step.

`--torchscale`: side by side with torchscale 0.3.0's own `RetNetDecoder` incremental decoding,
on one model of the same shape converted with `retserve convert torchscale`'s converter
(`pip install --no-deps torchscale==0.3.0 fairscale==0.4.0`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import time

import torch

from bench.common import DEFAULT_SHAPE, percentile, sync
from bench.torchscale_side import side_by_side
from engine import native_kernels
from engine.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, load_model
from engine.config import PRESETS
from engine.engine_config import CPU_KERNELS, EngineConfig
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.onednn_linear import ROW_BLOCK, PackedLinear, can_pack
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state_pool import StatePool

PROMPT_LEN = 16


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retserve bench decode", description=__doc__)
    p.add_argument("--configs", default="default,1.3b", help="models: default and/or 1.3b")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--steps", type=int, default=32, help="timed steps at concurrency <= 16; "
                   "fewer above (never under 8)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="weights (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--cpu-kernels", choices=CPU_KERNELS, default="native",
                   help="CPU: retserve's kernels, oneDNN's packed linears or torch's (MKL)")
    p.add_argument("--force", action="store_true", help="run 1.3b even on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--torchscale", action="store_true",
                   help="also run torchscale's RetNetDecoder side by side (if installed)")
    return p.parse_args(argv)


def make_model(name: str, config: EngineConfig) -> tuple[RetNet, str]:
    device, dtype = config.torch_device, config.torch_dtype
    if name == "default":
        try:
            return load_model(None, device, dtype), str(DEFAULT_MODEL_DIR)
        except CheckpointError:
            model_config = DEFAULT_SHAPE
            source = "random weights: models/retnet-tiny-chat not found, a model of its shape"
    else:
        model_config, source = PRESETS[name], f"random weights, preset {name}"
    torch.manual_seed(0)
    with torch.device(device):
        model = RetNet(model_config)
    for module in model.modules():  # small weights: a random model's logits stay finite in bf16
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)
    return model.to(dtype).eval().requires_grad_(False), source


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the practical roofline."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    best = float("inf")
    for _ in range(20):  # the best of many: other processes share the memory bus
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of large matmuls in the weights' dtype, the best of a few: the practical compute
    roof. On CPU also through oneDNN's packed weights and retserve's kernel (the engine's
    linears), where they run: the best of every kernel."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    calls = [(lambda: torch.mm(a, b), n)]
    if can_pack(device, dtype):
        packed = PackedLinear(b)
        calls.append((lambda: packed(a[:ROW_BLOCK]), ROW_BLOCK))
    kernels = native_kernels.load() if device.type == "cpu" else None
    if kernels is not None and dtype in native_kernels.WEIGHT_DTYPES:
        native, x = kernels.pack_weight(b), a[:ROW_BLOCK].float().contiguous()
        calls.append((lambda: kernels.linear(x, native, n), ROW_BLOCK))
    best = 0.0
    for call, rows in calls:
        for _ in range(10):
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            best = max(best, 2 * rows * n * n / (time.perf_counter() - start))
    return best


def step_cost(model: RetNet) -> tuple[int, int]:
    """(bytes of weights a decode step reads, FLOPs per session): every linear and the output
    head whole, the embedding only through a tied head; retention: the state's update and
    readout, ~4 FLOPs per state element and layer."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if c.tie_embeddings or n != "embed_tokens.weight")
    matmul_params = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, torch.nn.Linear))
    matmul_params += c.vocab_size * c.hidden_size if c.tie_embeddings else 0
    return weights, 2 * matmul_params + 4 * c.kv_numel


def start_sessions(engine: LLMEngine, n: int, max_tokens: int, tag: str) -> None:
    rng = random.Random(n)
    vocab = engine.model.config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(n):
        engine.add_request(Request(f"{tag}-{i}", [rng.randrange(vocab) for _ in range(PROMPT_LEN)],
                                   params))
    while engine.pool.num_decoding < n or engine.num_waiting:  # prefill
        engine.step()


def timed_steps(engine: LLMEngine, num_steps: int, cpu_times: list[float] | None = None
                ) -> list[float]:
    """Wall seconds of each step; the calling thread's CPU seconds appended to cpu_times."""
    times = []
    for _ in range(num_steps):
        start, cpu_start = time.perf_counter(), time.thread_time()
        engine.step()  # ends with the sampled ids on the host: a device sync
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.thread_time() - cpu_start)
    return times


def model_step_cpu_seconds(engine: LLMEngine, sessions: int, num_steps: int) -> float:
    """p50 CPU seconds of the model's decode step alone on the running sessions' pool rows:
    the engine step minus this is the engine's own work (scheduling, sampling, outputs)."""
    rows = engine.pool.decode_batch(sessions)
    ids = torch.zeros(sessions, dtype=torch.long, device=rows.kv.device)
    times = []
    with torch.inference_mode():
        for _ in range(num_steps):
            start = time.thread_time()
            engine.runner.decode_step(ids, rows.kv, rows.num_tokens, rows.conv)
            sync(rows.kv.device)
            times.append(time.thread_time() - start)
    return statistics.median(times)


def stop_sessions(engine: LLMEngine) -> None:
    engine.abort_all()


def naive_tokens_per_s(model: RetNet, num_steps: int) -> dict:
    """One sequence at a time, model.step (clone + recurrent step) and greedy argmax."""
    rng = random.Random(0)
    ids = torch.tensor([[rng.randrange(model.config.vocab_size) for _ in range(PROMPT_LEN)]],
                       device=model.device)
    with torch.inference_mode():
        logits, state = model.prefill(ids)
        token = logits[:, -1].argmax(-1)
        times = []
        for _ in range(num_steps + 3):
            start = time.perf_counter()
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
            token.tolist()
            times.append(time.perf_counter() - start)
    times = times[3:]
    return {"tokens_per_s": len(times) / sum(times),
            "step_ms_p50": 1e3 * statistics.median(times)}


def bench_model(name: str, args, concurrency: list[int]) -> dict:
    config = EngineConfig(max_num_seqs=max(concurrency), max_num_batched_tokens=max(
        2048, max(concurrency) * (PROMPT_LEN + 1) + 64), device=args.device, dtype=args.dtype,
        cuda_graphs=not args.no_cuda_graphs, num_threads=args.num_threads,
        cpu_kernels=args.cpu_kernels, compile_decode=args.compile)
    device = config.torch_device
    if name != "default" and device.type != "cuda" and not args.force:
        return {"skipped": "CPU: the 1.3b preset is for a GPU (use --force to run it anyway)"}
    model_config = PRESETS.get(name, DEFAULT_SHAPE)
    state_bytes = StatePool.row_nbytes(model_config)
    with torch.device("meta"):
        num_params = sum(p.numel() for p in RetNet(model_config).parameters())
    weights = num_params * torch.finfo(config.torch_dtype).bits // 8
    free = free_memory(device)
    fits = [c for c in concurrency if weights + c * state_bytes * 1.1 < 0.8 * free]
    if not fits:
        return {"skipped": f"{free / 2**30:.1f} GiB free on {device.type}: too little"}
    if len(fits) < len(concurrency):
        concurrency = fits
        config = dataclasses.replace(config, max_num_seqs=max(fits))
    model, source = make_model(name, config)
    state_bytes = StatePool.row_nbytes(model.config)  # the loaded model's, not the estimate's
    engine = LLMEngine(model, config)
    weight_bytes, flops_per_session = step_cost(model)
    bandwidth, peak = copy_bandwidth(device), matmul_peak(device, model.dtype)
    naive = naive_tokens_per_s(model, args.steps)  # the model as given: not packed
    rows = []
    for c in concurrency:
        num_steps = max(8, args.steps * 16 // max(c, 16))
        start_sessions(engine, c, max_tokens=num_steps + 16, tag=f"c{c}")
        timed_steps(engine, 2)  # warm-up at this batch size
        cpu_times: list[float] = []
        times = timed_steps(engine, num_steps, cpu_times)
        model_cpu = model_step_cpu_seconds(engine, c, num_steps)
        stop_sessions(engine)
        step = statistics.median(times)
        moved = weight_bytes + 2 * c * state_bytes
        limit = max(moved / bandwidth, c * flops_per_session / peak)
        rows.append({
            "sessions": c,
            "tokens_per_s": c * len(times) / sum(times),
            "step_ms_p50": 1e3 * step,
            "step_ms_p99": 1e3 * percentile(times, 99),
            "speedup_vs_naive": c * len(times) / sum(times) / naive["tokens_per_s"],
            "bytes_per_step": moved,
            "roofline_ms": 1e3 * moved / bandwidth,
            "roofline_fraction": moved / bandwidth / step,
            "flops_per_step": c * flops_per_session,
            "compute_ms": 1e3 * c * flops_per_session / peak,
            "limit_ms": 1e3 * limit,
            "limit_fraction": limit / step,
            # the step's CPU time on this thread: what a shared, loaded CPU machine still
            # measures reliably (wall time there includes other processes' turns); CPU, 1 thread
            "step_cpu_ms_p50": 1e3 * statistics.median(cpu_times),
            "limit_fraction_cpu": limit / statistics.median(cpu_times),
            "model_step_cpu_ms_p50": 1e3 * model_cpu,
            "engine_overhead_cpu_ms": 1e3 * (statistics.median(cpu_times) - model_cpu),
        })
    base = rows[0]["tokens_per_s"] if rows[0]["sessions"] == 1 else None
    for row in rows:
        row["scaling_vs_1_session"] = row["tokens_per_s"] / base if base else None
    return {
        "source": source,
        "config": {k: v for k, v in model.config.to_dict().items() if k in (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "qk_dim", "v_dim", "ffn_dim")},
        "dtype": str(model.dtype).removeprefix("torch."),
        "weight_bytes": weight_bytes,
        "state_bytes_per_session": state_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "matmul_peak_gflop_s": peak / 1e9,
        "roofline_note": "bytes_per_step = weights read + 2 x sessions x state (read + write); "
                         "roofline_ms = bytes / copy bandwidth; compute_ms = FLOPs / matmul peak; "
                         "limit_ms = the larger; limit_fraction = limit_ms / measured p50 step",
        "cuda_graphs": config.use_cuda_graphs,
        "compile_decode": config.compile_decode,
        "compile_seconds": engine.runner.compile_seconds,
        # CPU: "native" (retserve's kernels), "onednn" (packed linears) or "torch"
        "cpu_kernels": engine.cpu_kernels,
        "packed_linears": engine.packed_linears,
        "naive_one_at_a_time": naive,
        "concurrency": rows,
        "position": position_cost(engine, min(16, max(concurrency)), args.steps),
    }


def position_cost(engine: LLMEngine, sessions: int, num_steps: int) -> dict:
    """Step time with every state at position 16 vs 16384 (num_tokens set directly), in
    alternating blocks so that a noisy neighbour hits both alike: the cost must be flat."""
    start_sessions(engine, sessions, max_tokens=4 * num_steps + 16, tag="pos")
    times: dict[str, list[float]] = {"short": [], "long": []}
    for _ in range(3):
        for name, position in (("short", 16), ("long", 16384)):
            engine.pool.num_tokens[:sessions] = position
            timed_steps(engine, 1)
            times[name] += timed_steps(engine, max(2, num_steps // 3))
    stop_sessions(engine)
    short, long = statistics.median(times["short"]), statistics.median(times["long"])
    return {"sessions": sessions, "short_position": 16, "long_position": 16384,
            "short_step_ms": 1e3 * short, "long_step_ms": 1e3 * long,
            "ratio_long_vs_short": long / short}


def run(argv: list[str]) -> dict:
    args = parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    started = time.perf_counter()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = EngineConfig(device=args.device).torch_device
    result = {
        "bench": "decode",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "workload": f"{PROMPT_LEN}-token random prompts, greedy, ignore_eos; timed steps are "
                    "pure decode steps (every session decoding)",
        "models": {},
    }
    for name in args.configs.split(","):
        result["models"][name] = bench_model(name, args, concurrency)
    if args.torchscale:
        result["torchscale"] = side_by_side(args.num_threads)
    default = result["models"].get("default", {})
    by_sessions = {r["sessions"]: r for r in default.get("concurrency", [])}
    at_1, at_64 = by_sessions.get(1, {}), by_sessions.get(64, {})
    result["seconds"] = time.perf_counter() - started
    result["summary"] = {
        # aggregate tokens/s at 64 sessions / one session's (through the engine both)
        "speedup_64": at_64.get("scaling_vs_1_session"),
        "target_speedup_64": 20.0,
        "speedup_64_vs_naive_model_step": at_64.get("speedup_vs_naive"),
        "step_time_ratio_long_vs_short": default.get("position", {}).get("ratio_long_vs_short"),
        "limit_fraction_1": at_1.get("limit_fraction"),
        "target_limit_fraction_1": 0.3,
        "limit_fraction_64": at_64.get("limit_fraction"),
        "target_limit_fraction_64": 0.6,
        "limit_fraction_cpu_1": at_1.get("limit_fraction_cpu"),
        "limit_fraction_cpu_64": at_64.get("limit_fraction_cpu"),
        **result.get("torchscale", {}).get("summary", {}),
    }
    return result
