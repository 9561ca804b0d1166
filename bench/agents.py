"""`retserve bench agents`: an agent loop through the Responses API, each request continuing the
previous response's stored state, against the same loop through chat completions resending the
whole history to a server with reuse off (what a server without stored states does).

Each of `--turns` turns is two requests: the user's request, which the model answers (in the
agent loop, with a call of the tool), then the tool's output, which the model answers in text.
Through /v1/responses every request sends only its new input with `previous_response_id`; through
/v1/chat/completions every request sends every message so far. Both servers run the shipped
model on the same kind of store; the responses server has no in-process cache, so every turn
reads its state back from the store.

Per turn and request: tokens fed (input tokens no stored state covered) and time to first token
(median over `--repeats` loops). Summary: ttft_ratio_turn20_vs_turn1_responses (target <= 1.3;
the turn's first request), the same for chat, tokens fed at the last turn by each, and
mask_us_per_token_p50 (the constrained-decoding cost per token; null until it exists).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.server_process import MODEL_NAME, ServerProcess

INSTRUCTIONS = "You are a weather assistant. Use the tool's result in your answer."
CITIES = ("Porto", "Bergen", "Lyon", "Kyoto", "Quito", "Perth", "Oslo", "Turin", "Cusco", "Hanoi")
MAX_OUTPUT_TOKENS = 16


def question(turn: int) -> str:
    return f"What is the weather in {CITIES[turn % len(CITIES)]} now? (request {turn})"


def tool_output(turn: int) -> str:
    return f"Tool result: {10 + turn % 15} C and {'sunny' if turn % 2 else 'raining'}."


async def _sse(client: httpx.AsyncClient, path: str, body: dict) -> tuple[float, list[dict]]:
    """POSTs a streamed request; (seconds to the first generated text, every data event)."""
    start = time.perf_counter()
    first, events = None, []
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{path}: {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():  # read to the end: the state is saved first
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            events.append(event)
            if first is None and _has_text(event):
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"{path}: the stream ended without generated text")
    return first, events


def _has_text(event: dict) -> bool:
    if event.get("type") == "response.output_text.delta":
        return bool(event["delta"])
    return any(c.get("delta", {}).get("content") for c in event.get("choices", []))


async def responses_loop(url: str, turns: int) -> list[list[dict]]:
    """Per turn, per request: {"fed", "cached", "ttft_ms"}; each request sends its new input."""
    out, previous = [], None
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for turn in range(turns):
            requests = []
            for text in (question(turn), tool_output(turn)):
                body = {"model": MODEL_NAME, "input": text, "stream": True, "temperature": 0.0,
                        "max_output_tokens": MAX_OUTPUT_TOKENS,
                        "previous_response_id": previous}
                if previous is None:
                    body["instructions"] = INSTRUCTIONS
                ttft, events = await _sse(client, "/v1/responses", body)
                final = events[-1]["response"]
                usage = final["usage"]
                cached = usage["input_tokens_details"]["cached_tokens"]
                requests.append({"fed": usage["input_tokens"] - cached, "cached": cached,
                                 "ttft_ms": ttft * 1000})
                previous = final["id"]
            out.append(requests)
    return out


async def chat_loop(url: str, turns: int) -> list[list[dict]]:
    """The same loop, every request sending the whole conversation."""
    out, messages = [], [{"role": "system", "content": INSTRUCTIONS}]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for turn in range(turns):
            requests = []
            for text in (question(turn), tool_output(turn)):
                messages.append({"role": "user", "content": text})
                body = {"model": MODEL_NAME, "messages": messages, "stream": True,
                        "temperature": 0.0, "max_tokens": MAX_OUTPUT_TOKENS,
                        "stream_options": {"include_usage": True}}
                ttft, events = await _sse(client, "/v1/chat/completions", body)
                usage = events[-1]["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                reply = "".join(c["delta"].get("content") or "" for e in events
                                for c in e.get("choices", []))
                messages.append({"role": "assistant", "content": reply})
                requests.append({"fed": usage["prompt_tokens"] - cached, "cached": cached,
                                 "ttft_ms": ttft * 1000})
            out.append(requests)
    return out


def medians(loops: list[list[list[dict]]]) -> list[dict]:
    """Per turn over the repeated loops: tokens fed (the same every loop: greedy) and the
    median TTFT of each request."""
    turns = []
    for turn, per_loop in enumerate(zip(*loops, strict=True)):
        entry = {"turn": turn + 1}
        for i, name in enumerate(("request", "tool_output")):
            entry[f"{name}_fed_tokens"] = per_loop[0][i]["fed"]
            entry[f"{name}_cached_tokens"] = per_loop[0][i]["cached"]
            entry[f"{name}_ttft_ms"] = round(
                statistics.median(loop[i]["ttft_ms"] for loop in per_loop), 2)
        turns.append(entry)
    return turns


def run(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench agents")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="loops per API (TTFT medians)")
    p.add_argument("--store", default=None, help="store URL for both servers (default: a "
                   "sqlite file in a temporary directory)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server")
    args = p.parse_args(argv)
    result: dict = {"model": MODEL_NAME, "turns": args.turns, "repeats": args.repeats,
                    "threads": args.threads, "max_output_tokens": MAX_OUTPUT_TOKENS,
                    "loop": "text: the user's request, then the tool's output as a user "
                            "message (tool calls are not served yet)"}
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"sqlite:///{tmp}/state.db"
        common = dict(store_url=store, hot_cache_mb=0, num_threads=args.threads)
        stored = ServerProcess(Path(tmp) / "responses", **common).start()
        plain = ServerProcess(Path(tmp) / "chat", reuse_states=False, **common).start()
        try:
            asyncio.run(responses_loop(stored.url, 2))  # warm-up, both servers
            asyncio.run(chat_loop(plain.url, 2))
            result["responses"] = medians([asyncio.run(responses_loop(stored.url, args.turns))
                                           for _ in range(args.repeats)])
            result["chat_no_reuse"] = medians([asyncio.run(chat_loop(plain.url, args.turns))
                                               for _ in range(args.repeats)])
        finally:
            stored.stop()
            plain.stop()
    summary = {}
    for name, key in (("responses", "responses"), ("chat", "chat_no_reuse")):
        first, last = result[key][0], result[key][-1]
        summary[f"ttft_ratio_turn{args.turns}_vs_turn1_{name}"] = round(
            last["request_ttft_ms"] / first["request_ttft_ms"], 3)
        summary[f"fed_tokens_turn{args.turns}_{name}"] = (
            last["request_fed_tokens"] + last["tool_output_fed_tokens"])
    summary["mask_us_per_token_p50"] = None
    summary["mask_us_per_token_p50_reason"] = ("constrained decoding (tool calls, structured "
                                               "outputs) has not landed on this build")
    result["summary"] = summary
    return result
