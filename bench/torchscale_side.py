"""retserve's engine side by side with torchscale 0.3.0's own RetNet decoder, same model.

One torchscale-shaped model (4 layers, d 256, 4 heads, value dim 512, FFN 512, vocab 1024,
random weights) runs as torchscale's `RetNetDecoder` with incremental decoding (its recurrent
form, the way fairseq generates: all rows at one length) and, converted by
`engine.convert_torchscale`, through `LLMEngine` (sessions at mixed history lengths). Greedy,
the same threads; tokens/s of pure decode steps.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
import types

import torch
from torch import nn

from engine.convert_torchscale import convert_torchscale
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.sampling import SamplingParams
from engine.sequence import Request

SHAPE = dict(decoder_embed_dim=256, decoder_value_embed_dim=512, decoder_retention_heads=4,
             decoder_ffn_embed_dim=512, decoder_layers=4, vocab_size=1024)
PROMPT_LEN = 16
TARGETS = {1: 2.0, 64: 4.0}  # retserve tokens/s over torchscale's


def _timm_stand_in() -> None:
    """torchscale imports timm only for `drop_path`, the identity at inference."""
    if "timm" in sys.modules or importlib.util.find_spec("timm") is not None:
        return

    def drop_path(x, drop_prob: float = 0.0, training: bool = False):
        if drop_prob == 0.0 or not training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - drop_prob)
        return x * keep / (1 - drop_prob)

    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = drop_path
    sys.modules.update({"timm": types.ModuleType("timm"),
                        "timm.models": types.ModuleType("timm.models"),
                        "timm.models.layers": layers})


def torchscale_decoder() -> nn.Module | None:
    _timm_stand_in()
    try:
        from torchscale.architecture.config import RetNetConfig
        from torchscale.architecture.retnet import RetNetDecoder
    except ImportError:
        return None
    torch.manual_seed(0)
    embed = nn.Embedding(SHAPE["vocab_size"], SHAPE["decoder_embed_dim"])
    return RetNetDecoder(RetNetConfig(**SHAPE), embed_tokens=embed).eval()


def torchscale_tokens_per_s(decoder: nn.Module, batch: int, num_steps: int
                            ) -> tuple[float, float, list]:
    """Incremental decoding from a prompt fed token by token; tokens per wall and per CPU
    second of the timed steps, and row 0's greedy tokens."""
    rng = random.Random(0)
    tokens = torch.tensor([[rng.randrange(SHAPE["vocab_size"]) for _ in range(PROMPT_LEN)]]
                          * batch)
    state: dict = {}
    with torch.inference_mode():
        for t in range(1, PROMPT_LEN + 1):
            logits, _ = decoder(tokens[:, :t], incremental_state=state)
        times, cpu = [], []
        for _ in range(num_steps + 2):
            start, cpu_start = time.perf_counter(), time.thread_time()
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            logits, _ = decoder(tokens, incremental_state=state)
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - cpu_start)
    times, cpu = times[2:], cpu[2:]
    return (batch * len(times) / sum(times), batch * len(cpu) / sum(cpu),
            tokens[0, PROMPT_LEN:].tolist())


def retserve_tokens_per_s(model: RetNet, sessions: int, num_steps: int,
                          num_threads: int | None) -> tuple[float, float, list]:
    """Sessions at mixed history lengths (16 + 8 i tokens); tokens per wall and per CPU second
    of pure decode steps, and session 0's greedy tokens."""
    engine = LLMEngine(model, EngineConfig(device="cpu", max_num_seqs=max(sessions, 1),
                                           max_num_batched_tokens=2048, num_threads=num_threads))
    rng = random.Random(0)
    first = [rng.randrange(SHAPE["vocab_size"]) for _ in range(PROMPT_LEN)]
    # enough tokens that nobody finishes before the last session's prefill and the timed steps
    params = SamplingParams(temperature=0.0, max_tokens=num_steps + 64, ignore_eos=True)
    for i in range(sessions):
        prompt = first if i == 0 else [rng.randrange(SHAPE["vocab_size"])
                                       for _ in range(PROMPT_LEN + 8 * i)]
        engine.add_request(Request(f"s{i}", prompt, params))
    tokens: list[int] = []
    times, cpu = [], []
    while engine.has_unfinished_requests() and len(times) < num_steps + 2:
        is_decoding = engine.pool.num_decoding == sessions and not engine.num_waiting
        start, cpu_start = time.perf_counter(), time.thread_time()
        outputs = engine.step()
        if is_decoding:
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - cpu_start)
        tokens += [t for o in outputs if o.request_id == "s0" for t in o.token_ids]
    engine.abort_all()
    times, cpu = times[2:], cpu[2:]
    return sessions * len(times) / sum(times), sessions * len(cpu) / sum(cpu), tokens


def side_by_side(num_threads: int | None, num_steps: int = 32) -> dict:
    if num_threads:
        torch.set_num_threads(num_threads)
    decoder = torchscale_decoder()
    if decoder is None:
        return {"skipped": "torchscale not installed: pip install --no-deps torchscale==0.3.0 "
                           "fairscale==0.4.0"}
    config, state_dict = convert_torchscale(SHAPE, decoder.state_dict())
    model = RetNet(config)
    model.load_state_dict(state_dict)
    model = model.eval().requires_grad_(False)
    rows, summary = [], {}
    for batch in TARGETS:
        theirs, theirs_cpu, their_tokens = torchscale_tokens_per_s(decoder, batch, num_steps)
        ours, ours_cpu, our_tokens = retserve_tokens_per_s(model, batch, num_steps, num_threads)
        same = sum(a == b for a, b in zip(their_tokens, our_tokens, strict=False))
        rows.append({"sessions": batch, "torchscale_tokens_per_s": theirs,
                     "retserve_tokens_per_s": ours, "ratio": ours / theirs,
                     # per CPU second of the stepping thread (one thread: robust to load)
                     "torchscale_tokens_per_cpu_s": theirs_cpu,
                     "retserve_tokens_per_cpu_s": ours_cpu, "ratio_cpu": ours_cpu / theirs_cpu,
                     "target_ratio": TARGETS[batch],
                     # greedy tokens of the first row, equal up to fp32 rounding flips
                     "same_greedy_tokens": f"{same}/{min(len(their_tokens), len(our_tokens))}"})
        summary[f"retserve_vs_torchscale_{batch}"] = ours / theirs
        summary[f"retserve_vs_torchscale_cpu_{batch}"] = ours_cpu / theirs_cpu
        summary[f"target_retserve_vs_torchscale_{batch}"] = TARGETS[batch]
    return {"shape": SHAPE, "torchscale": "0.3.0 RetNetDecoder, incremental_state (recurrent), "
                                          "all rows at one length",
            "retserve": "LLMEngine, sessions at history lengths 16 + 8 i", "num_steps": num_steps,
            "rows": rows, "summary": summary}
