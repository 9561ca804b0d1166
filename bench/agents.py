"""`retserve bench agents`: an agent loop through the Responses API, each request continuing the
previous response's stored state, against the same loop through chat completions resending the
whole history to a server with reuse off (what a server without stored states does).

Each of `--turns` turns is two requests: the user's question, which the model answers with a
call of the weather tool (tool_choice required), then the tool's output, which the model
answers in text (tool_choice none). Through /v1/responses each request sends only its new input
(the question, or a function_call_output) with `previous_response_id`; through
/v1/chat/completions each request sends the tools and every message so far. Both servers run
the shipped model on the same kind of store; the responses server has no in-process cache, so
every turn reads its state back from the store.

Per turn and request: tokens fed (input tokens no stored state covered) and time to first
generated token (text or the call's item; median over `--repeats` loops). Summary:
ttft_ratio_turn20_vs_turn1_responses (target <= 1.3; the turn's first request), the same for
chat, tokens fed in the last turn by each, and mask_us_per_token_p50: what computing the tool
call grammar's token mask costs per generated token (llguidance, engine/constraints.py), measured
in this process on the same grammar and prompts.
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

from bench.common import percentile
from bench.server_process import MODEL_NAME, ServerProcess

INSTRUCTIONS = "You are a helpful assistant."
CITIES = ("Porto", "Bergen", "Lyon", "Kyoto", "Quito", "Perth", "Oslo", "Turin", "Cusco", "Hanoi")
WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 24}}}}
TOOLS = [{"type": "function", **WEATHER}]  # the Responses API's shape
CHAT_TOOLS = [{"type": "function", "function": WEATHER}]  # chat completions' shape
CALL_TOKENS, ANSWER_TOKENS = 64, 16  # max output tokens of a call, of an answer


def city(turn: int) -> str:
    return CITIES[turn % len(CITIES)]


def question(turn: int) -> str:
    return f"What is the weather in {city(turn)}?"


def tool_output(turn: int) -> str:
    return json.dumps({"forecast": "sunny" if turn % 2 else "rain",
                       "temperature": 10 + turn % 15})


async def _sse(client: httpx.AsyncClient, path: str, body: dict) -> tuple[float, list[dict]]:
    """POSTs a streamed request; (seconds to the first generated output, every data event)."""
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
            if first is None and _is_output(event):
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"{path}: the stream ended without output")
    return first, events


def _is_output(event: dict) -> bool:
    kind = event.get("type")
    if kind == "response.output_text.delta":
        return bool(event["delta"])
    if kind == "response.output_item.added":
        return event["item"]["type"] == "function_call"
    return any(c.get("delta", {}).get("content") or c.get("delta", {}).get("tool_calls")
               for c in event.get("choices", []))


def _measure(usage_in: int, cached: int, ttft: float) -> dict:
    return {"fed": usage_in - cached, "cached": cached, "ttft_ms": ttft * 1000}


async def responses_loop(url: str, turns: int) -> tuple[list[list[dict]], int]:
    """Per turn, per request: {"fed", "cached", "ttft_ms"}; and the calls that named the
    city asked about."""
    out, previous, exact = [], None, 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for turn in range(turns):
            ask = {"model": MODEL_NAME, "input": question(turn), "tools": TOOLS,
                   "tool_choice": "required", "parallel_tool_calls": False,
                   "max_output_tokens": CALL_TOKENS, "temperature": 0.0, "stream": True,
                   "previous_response_id": previous}
            if previous is None:
                ask["instructions"] = INSTRUCTIONS
            ttft_call, events = await _sse(client, "/v1/responses", ask)
            called = events[-1]["response"]
            call = next(i for i in called["output"] if i["type"] == "function_call")
            exact += json.loads(call["arguments"]).get("city") == city(turn)
            output = {"type": "function_call_output", "call_id": call["call_id"],
                      "output": tool_output(turn)}
            answer = {"model": MODEL_NAME, "input": [output], "tools": TOOLS,
                      "tool_choice": "none", "max_output_tokens": ANSWER_TOKENS,
                      "temperature": 0.0, "stream": True, "previous_response_id": called["id"]}
            ttft_answer, events = await _sse(client, "/v1/responses", answer)
            answered = events[-1]["response"]
            previous = answered["id"]
            out.append([_measure(r["usage"]["input_tokens"],
                                 r["usage"]["input_tokens_details"]["cached_tokens"], t)
                        for r, t in ((called, ttft_call), (answered, ttft_answer))])
    return out, exact


async def chat_loop(url: str, turns: int) -> tuple[list[list[dict]], int]:
    """The same loop, every request sending the tools and the whole conversation."""
    out, exact = [], 0
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    common = {"model": MODEL_NAME, "tools": CHAT_TOOLS, "temperature": 0.0, "stream": True,
              "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": question(turn)})
            ttft_call, events = await _sse(client, "/v1/chat/completions", {
                **common, "messages": messages, "tool_choice": "required",
                "parallel_tool_calls": False, "max_tokens": CALL_TOKENS})
            call_usage = events[-1]["usage"]
            call = _streamed_call(events)
            exact += json.loads(call["function"]["arguments"]).get("city") == city(turn)
            messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"],
                          "content": tool_output(turn)}]
            ttft_answer, events = await _sse(client, "/v1/chat/completions", {
                **common, "messages": messages, "tool_choice": "none",
                "max_tokens": ANSWER_TOKENS})
            answer_usage = events[-1]["usage"]
            messages.append({"role": "assistant", "content": "".join(
                c["delta"].get("content") or "" for e in events for c in e.get("choices", []))})
            out.append([_measure(u["prompt_tokens"],
                                 (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                                 t)
                        for u, t in ((call_usage, ttft_call), (answer_usage, ttft_answer))])
    return out, exact


def _streamed_call(events: list[dict]) -> dict:
    """The one tool call of a streamed chat completion, reassembled from its deltas."""
    call = None
    for event in events:
        for choice in event.get("choices", []):
            for piece in choice.get("delta", {}).get("tool_calls") or []:
                if piece.get("id"):
                    call = {"id": piece["id"], "type": "function",
                            "function": {"name": piece["function"]["name"], "arguments": ""}}
                call["function"]["arguments"] += piece["function"].get("arguments") or ""
    if call is None:
        raise RuntimeError("the model did not call the tool")
    return call


def medians(loops: list[list[list[dict]]]) -> list[dict]:
    """Per turn over the repeated loops: tokens fed (the same every loop: greedy) and the
    median TTFT of each request."""
    turns = []
    for turn, per_loop in enumerate(zip(*loops, strict=True)):
        entry = {"turn": turn + 1}
        for i, name in enumerate(("call", "answer")):
            entry[f"{name}_fed_tokens"] = per_loop[0][i]["fed"]
            entry[f"{name}_cached_tokens"] = per_loop[0][i]["cached"]
            entry[f"{name}_ttft_ms"] = round(
                statistics.median(loop[i]["ttft_ms"] for loop in per_loop), 2)
        turns.append(entry)
    return turns


def mask_cost(threads: int, num_requests: int = 8) -> dict:
    """Token-mask time per generated token of the loop's call grammar, on the engine's own
    constraint workers (engine/constraints.py), in this process."""
    import torch

    from engine.checkpoint import DEFAULT_MODEL_DIR
    from engine.engine_config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling import SamplingParams
    from engine.sequence import Request
    from engine.tokenizer import Tokenizer
    from server.protocol.responses import ResponseRequest

    constraint = ResponseRequest(model=MODEL_NAME, input="", tools=TOOLS,
                                 tool_choice="required", parallel_tool_calls=False).constraint()
    tokenizer = Tokenizer.from_dir(DEFAULT_MODEL_DIR)
    torch.set_num_threads(threads)
    engine = LLMEngine.from_checkpoint(DEFAULT_MODEL_DIR, EngineConfig(
        max_num_seqs=num_requests, num_threads=threads), tokenizer)

    def requests(n: int, tag: str) -> list[Request]:
        return [Request(f"{tag}{i}", tokenizer.encode_chat(
            [{"role": "system", "content": INSTRUCTIONS},
             {"role": "user", "content": question(i)}], tools=constraint.tools),
            SamplingParams(temperature=0.0, max_tokens=CALL_TOKENS, grammar=constraint.grammar))
            for i in range(n)]

    try:
        engine.generate(requests(2, "warm"))  # compiles the grammar
        engine.constraints.mask_seconds.clear()
        engine.generate(requests(num_requests, "m"))
        masks_us = [1e6 * s for s in engine.constraints.mask_seconds]
    finally:
        engine.constraints.close()
    return {"tokens": len(masks_us), "mask_us_per_token_p50": round(percentile(masks_us, 50), 2),
            "mask_us_per_token_p99": round(percentile(masks_us, 99), 2)}


def run(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="retserve bench agents")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="loops per API (TTFT medians)")
    p.add_argument("--store", default=None, help="store URL for both servers (default: a "
                   "sqlite file in a temporary directory)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server "
                   "(and of the mask measurement's engine)")
    args = p.parse_args(argv)
    result: dict = {"model": MODEL_NAME, "turns": args.turns, "repeats": args.repeats,
                    "threads": args.threads, "max_output_tokens": {"call": CALL_TOKENS,
                                                                   "answer": ANSWER_TOKENS}}
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"sqlite:///{tmp}/state.db"
        common = dict(store_url=store, hot_cache_mb=0, num_threads=args.threads)
        stored = ServerProcess(Path(tmp) / "responses", **common).start()
        plain = ServerProcess(Path(tmp) / "chat", reuse_states=False, **common).start()
        try:
            asyncio.run(responses_loop(stored.url, 2))  # warm-up, both servers
            asyncio.run(chat_loop(plain.url, 2))
            for key, loop, url in (("responses", responses_loop, stored.url),
                                   ("chat_no_reuse", chat_loop, plain.url)):
                runs = [asyncio.run(loop(url, args.turns)) for _ in range(args.repeats)]
                result[key] = medians([turns for turns, _ in runs])
                result[f"{key}_calls_naming_the_city"] = runs[0][1]
        finally:
            stored.stop()
            plain.stop()
    result["masks"] = mask_cost(args.threads)
    summary = {}
    for name, key in (("responses", "responses"), ("chat", "chat_no_reuse")):
        first, last = result[key][0], result[key][-1]
        summary[f"ttft_ratio_turn{args.turns}_vs_turn1_{name}"] = round(
            last["call_ttft_ms"] / first["call_ttft_ms"], 3)
        summary[f"fed_tokens_turn{args.turns}_{name}"] = (
            last["call_fed_tokens"] + last["answer_fed_tokens"])
    summary["mask_us_per_token_p50"] = result["masks"]["mask_us_per_token_p50"]
    result["summary"] = summary
    return result
