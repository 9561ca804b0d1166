"""`retserve bench turns`: what state reuse buys a follow-up turn, through HTTP.

1. Time to first token of a follow-up turn against the length of the conversation before it
   (256 .. 32k tokens of earlier turns), on a server that reuses stored states and on one with
   reuse switched off (every turn prefills its whole conversation). Both servers run the shipped
   model on the same store; the reusing one has no in-process cache, so each turn reads its
   state back from the store. The client resends the whole history, as an OpenAI client does;
   a third series names a session instead (`session_id`: the new question alone is sent).
2. Streamed tokens/s through HTTP at N concurrent streams against the engine alone (LLMEngine
   in a process of its own) at the same concurrency and lengths: on a server that only
   streams, as the engine alone does (reuse off: no state is stored), and on one that also
   stores every turn's state (the default). Storing costs engine time beyond the stream: the
   end-of-turn tokens, and, for a sampled reply whose tokens are not its text's own
   tokenization (nearly every reply here: sampled at temperature 1 past the end of turn), a
   refeed of the whole turn so that the stored state is the one a from-scratch prefill of the
   conversation gives.

Summary: ttft_ratio_32k_vs_256_reuse (target <= 1.3), ttft_ratio_32k_vs_256_session,
ttft_ratio_32k_vs_256_no_reuse, http_vs_engine_tps (target >= 0.9; streamed token by token),
http_vs_engine_tps_saving_states, and that at the other stream intervals asked for (a chunk
per that many tokens after the first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.server_process import MODEL_NAME, REPO, ServerProcess
from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.tokenizer import Tokenizer

RUNS = 3  # throughput: the best of this many, on both sides (the machine may be shared)
FACTS = ("colour is teal", "city is Bergen", "pet is a ferret", "food is paella",
         "number is 42", "name is Ingrid")


def history_of(tokenizer: Tokenizer, num_tokens: int) -> list[dict]:
    """Earlier turns (user facts, short replies) adding up to about num_tokens tokens."""
    pair = [{"role": "user", "content": "Remember this: my colour is teal."},
            {"role": "assistant", "content": "Noted."}]
    per_pair = len(tokenizer.encode_chat(pair * 2, False)) - len(tokenizer.encode_chat(pair,
                                                                                        False))
    messages = []
    for i in range(max(1, num_tokens // per_pair)):
        messages += [{"role": "user", "content": f"Remember this ({i}): my {FACTS[i % 6]}."},
                     {"role": "assistant", "content": "Noted."}]
    return messages


async def first_token_seconds(client: httpx.AsyncClient, messages: list[dict],
                              session_id: str | None = None) -> float:
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 4, "temperature": 0.0,
            "stream": True}
    if session_id is not None:
        body["session_id"] = session_id
    content = json.dumps(body).encode()  # the client's own encoding is not the server's time
    start = time.perf_counter()
    elapsed = None
    async with client.stream("POST", "/v1/chat/completions", content=content,
                             headers={"content-type": "application/json"}) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        # read to the end either way: the turn's state is saved before [DONE]
        async for line in response.aiter_lines():
            if elapsed is None and line.startswith("data: {") and '"content": "' in line \
                    and '"content": ""' not in line:
                elapsed = time.perf_counter() - start
    if elapsed is None:
        raise RuntimeError("the stream ended without a token")
    return elapsed


async def ttft_series(url: str, tokenizer: Tokenizer, lengths: list[int], repeats: int,
                      session: bool = False) -> dict[int, dict]:
    """Per history length: the follow-up turn's TTFT (median of `repeats` questions). The
    client resends the whole history, or with `session` names a session holding it and sends
    the new question alone."""
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for length in lengths:
            history = history_of(tokenizer, length)
            # the turn that makes the history: its reply is the model's own, stored by the
            # reusing server
            session_id = f"bench-{length}-{time.time_ns()}" if session else None
            body = {"model": MODEL_NAME, "messages": history[:-1], "max_tokens": 4,
                    "temperature": 0.0, "session_id": session_id}
            made = (await client.post("/v1/chat/completions", json=body)).json()
            history[-1] = {"role": "assistant",
                           "content": made["choices"][0]["message"]["content"]}
            times = []
            for r in range(repeats):
                question = {"role": "user", "content": f"What is my colour? ({r})"}
                messages = [question] if session else [*history, question]
                times.append(await first_token_seconds(client, messages, session_id))
            out[length] = {"history_tokens": len(tokenizer.encode_chat(history, False)),
                           "ttft_ms_p50": round(statistics.median(times) * 1000, 2),
                           "ttft_ms_all": [round(t * 1000, 2) for t in times]}
    return out


def ttft_results(workdir: Path, common: dict, tokenizer: Tokenizer, lengths: list[int],
                 repeats: int) -> dict:
    """The three TTFT series: history resent and by session on a reusing server, and resent
    on one with reuse off."""
    reuse = ServerProcess(workdir / "reuse", **common).start()
    try:
        plain = ServerProcess(workdir / "plain", reuse_states=False, **common).start()
        try:
            return {
                "ttft_reuse": asyncio.run(ttft_series(reuse.url, tokenizer, lengths, repeats)),
                "ttft_session": asyncio.run(
                    ttft_series(reuse.url, tokenizer, lengths, repeats, session=True)),
                "ttft_no_reuse": asyncio.run(ttft_series(plain.url, tokenizer, lengths,
                                                         repeats))}
        finally:
            plain.stop()
    finally:
        reuse.stop()


async def http_throughput(url: str, streams: int, max_tokens: int) -> dict:
    """All streams at once; tokens counted from the usage chunk; time to the last [DONE]."""
    limits = httpx.Limits(max_connections=streams + 4)

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {"model": MODEL_NAME, "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 1.0, "seed": i, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Tell me story number {i}."}]}
        tail = b""
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for chunk in response.aiter_raw():  # raw bytes: the client stays cheap
                tail = (tail + chunk)[-2000:]
        usage = tail.rsplit(b'"usage": ', 1)[1].split(b"}}", 1)[0] + b"}}"
        return json.loads(usage)["completion_tokens"]

    runs = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one(client, -1)  # warm-up
        for _ in range(RUNS):
            start = time.perf_counter()
            tokens = await asyncio.gather(*(one(client, i) for i in range(streams)))
            runs.append((time.perf_counter() - start, sum(tokens)))
    elapsed, tokens = min(runs)
    return {"streams": streams, "tokens": tokens, "seconds": round(elapsed, 3),
            "tokens_per_s": round(tokens / elapsed, 1)}


ENGINE_SCRIPT = """
import json, sys, time
import torch
from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.llm_engine import LLMEngine
from engine.engine_config import EngineConfig
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.tokenizer import Tokenizer

streams, max_tokens, max_num_seqs, threads, RUNS = map(int, sys.argv[1:6])
tok = Tokenizer.from_dir(DEFAULT_MODEL_DIR)
torch.set_num_threads(threads)
engine = LLMEngine.from_checkpoint(DEFAULT_MODEL_DIR, EngineConfig(
    max_num_seqs=max_num_seqs, max_num_batched_tokens=max(2048, 2 * max_num_seqs + 512),
    num_threads=threads), tok)
def requests(n):
    return [Request(f"r{i}", tok.encode_chat([{"role": "user",
            "content": f"Tell me story number {i}."}]), SamplingParams(
            max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=i)) for i in range(n)]
engine.generate(requests(1))
runs = []
for _ in range(RUNS):
    start = time.perf_counter()
    out = engine.generate(requests(streams))
    runs.append(time.perf_counter() - start)
elapsed = min(runs)
tokens = sum(len(o.token_ids) for outs in out.values() for o in outs)
print(json.dumps({"streams": streams, "tokens": tokens, "seconds": round(elapsed, 3),
                  "tokens_per_s": round(tokens / elapsed, 1)}))
"""


def engine_throughput(streams: int, max_tokens: int, max_num_seqs: int, threads: int
                      ) -> dict:
    argv = [str(x) for x in (streams, max_tokens, max_num_seqs, threads, RUNS)]
    done = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, *argv], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=1200)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench turns")
    p.add_argument("--lengths", default="256,1024,4096,16384,32768",
                   help="history lengths in tokens (the first and the last make the ratios)")
    p.add_argument("--repeats", type=int, default=3, help="follow-up turns per length")
    p.add_argument("--streams", type=int, default=32, help="concurrent streams")
    p.add_argument("--tokens", type=int, default=256, help="tokens per stream")
    p.add_argument("--store", default=None, help="store URL for both servers (default: a "
                   "sqlite file in a temporary directory)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the servers "
                   "and of the engine alone (the same for both)")
    p.add_argument("--stream-intervals", default="1,4", help="the servers' stream_interval "
                   "values for the throughput runs (the first makes http_vs_engine_tps)")
    p.add_argument("--skip-ttft", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    intervals = [int(x) for x in args.stream_intervals.split(",")]
    tokenizer = Tokenizer.from_dir(DEFAULT_MODEL_DIR)
    result: dict = {"model": str(DEFAULT_MODEL_DIR), "lengths": lengths,
                    "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"sqlite:///{tmp}/state.db"
        common = dict(store_url=store, max_prompt_tokens=max(lengths) * 2 + 4096,
                      hot_cache_mb=0, max_num_seqs=max(64, args.streams),
                      num_threads=args.threads)
        if not args.skip_ttft:
            result.update(ttft_results(Path(tmp), common, tokenizer, lengths, args.repeats))
        if not args.skip_throughput:
            result["http"], result["http_saving_states"] = {}, {}
            runs = [("http", intervals[0], False)] + [("http_saving_states", i, True)
                                                      for i in intervals]
            for series, interval, saving in runs:
                server = ServerProcess(Path(tmp) / f"{series}{interval}",
                                       stream_interval=interval, reuse_states=saving,
                                       **common).start()
                try:
                    result[series][interval] = asyncio.run(
                        http_throughput(server.url, args.streams, args.tokens))
                finally:
                    server.stop()
    if not args.skip_throughput:
        result["engine"] = engine_throughput(args.streams, args.tokens,
                                             max(64, args.streams), args.threads)
    summary = {}
    if not args.skip_ttft:
        first, last = lengths[0], lengths[-1]
        for name in ("reuse", "session", "no_reuse"):
            series = result[f"ttft_{name}"]
            summary[f"ttft_ratio_{last // 1024}k_vs_{first}_{name}"] = round(
                series[last]["ttft_ms_p50"] / series[first]["ttft_ms_p50"], 3)
    if not args.skip_throughput:
        engine_tps = result["engine"]["tokens_per_s"]
        summary["http_vs_engine_tps"] = round(
            result["http"][intervals[0]]["tokens_per_s"] / engine_tps, 3)
        for i, interval in enumerate(intervals):
            name = "http_vs_engine_tps_saving_states" + (
                "" if i == 0 else f"_stream_interval_{interval}")
            summary[name] = round(
                result["http_saving_states"][interval]["tokens_per_s"] / engine_tps, 3)
    result["summary"] = summary
    return result
