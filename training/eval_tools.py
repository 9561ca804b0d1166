"""Held-out tool use, measured the way retserve serves it: through the chat service (the turn
seam of the HTTP API), tools offered with `tool_choice: "auto"`, greedy decoding.

For each probe (training/tool_data.tool_probes: held-out argument values, results of its own
seed; half the requests name a fact told a turn or two before) the model
1. answers the request: does it call, is the call valid (it parses and its arguments validate
   against the function's parameters), is it the expected function with exactly the expected
   arguments (copied from the conversation);
2. answers the tool's result (its own call and the result appended, as a client does; after an
   invalid or missing call the expected call stands in, so every probe measures this step):
   does the reply repeat every value of the result. After the model's own valid call this turn
   continues the state stored after it (reported: answer_resumed, the share that did).
Control probes ask something no tool provides (small talk, a sum) with the same tools offered:
the share answered with text, not a call, is reported beside.

Turns may generate 128 tokens (`MAX_NEW_TOKENS`): the tokenizer was trained before the template
had tools, so a call's envelope is spelled in small pieces (`<tool_call>` is 7 tokens) and the
longest expected call (send_message, two string arguments) is 80 tokens.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import jsonschema

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.sampling import SamplingParams
from server.chat_service import ChatService
from server.chat_turn import ChatTurn
from server.local_service import close_service, local_service
from server.protocol.tools import ToolDefinition, output_constraint
from training.chat_data import _filler_turn
from training.tool_data import TOOLS, tool_message, tool_probes

TENANT = "eval"
MAX_NEW_TOKENS = 128  # > the longest expected call of the probes (80 tokens)
METHOD = ("server.chat_service.ChatService, tools offered with tool_choice auto (grammar: text "
          "or calls), greedy; the answer turn continues the state stored after the call")


async def _turn(service: ChatService, messages: list[dict], tools: list[dict],
                max_tokens: int):
    constraint = output_constraint([ToolDefinition(**t) for t in tools], "auto", None, None)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, grammar=constraint.grammar)
    stream = await service.start_chat(ChatTurn(TENANT, list(messages), params,
                                               tools=constraint.tools,
                                               tool_call_mode=constraint.tool_call_mode))
    async for _ in stream:
        pass
    return stream


def _is_valid(call, tools: list[dict]) -> bool:
    functions = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    try:
        jsonschema.validate(json.loads(call.arguments), functions[call.name])
    except (KeyError, ValueError, jsonschema.ValidationError):
        return False
    return True


async def run_probe(service: ChatService, probe: dict, max_new_tokens: int) -> dict:
    tools, messages = probe["tools"], probe["messages"]
    first = await _turn(service, messages, tools, max_new_tokens)
    choice = first.choices[0]
    calls = choice.tool_calls
    valid = bool(calls) and all(_is_valid(c, tools) for c in calls)
    expected = probe["call"]
    exact = bool(calls) and calls[0].name == expected["name"] and \
        json.loads(calls[0].arguments) == expected["arguments"] and len(calls) == 1
    if valid:
        call_message, call_id = choice.reply_message(), calls[0].id
    else:  # the expected call stands in, so the answer step is measured on every probe
        call_id = probe["call_id"]
        call_message = {"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function", "function": {
                "name": expected["name"], "arguments": json.dumps(expected["arguments"])}}]}
    follow = [*messages, call_message, tool_message(probe["result"], call_id)]
    second = await _turn(service, follow, tools, max_new_tokens)
    answer = second.choices[0].text
    values = [str(v) for v in probe["result"].values()]
    return {"request": messages[-1]["content"], "expected": expected,
            "called": [{"name": c.name, "arguments": c.arguments} for c in calls],
            "text": choice.text, "tool_call_valid": valid, "tool_args_exact": exact,
            "answer": answer, "result": probe["result"],
            "answer_from_tool": all(v in answer for v in values),
            "answer_resumed": second.usage.cached_tokens > 0, "from_fact": probe["from_fact"]}


async def run_control(service: ChatService, seed: int, i: int, max_new_tokens: int) -> bool:
    """A request no tool serves, tools offered: answered with text?"""
    rng = random.Random(f"retserve-tool-controls:{seed}:{i}")
    user, _ = _filler_turn(rng)
    tools = [t.definition() for t in rng.sample(TOOLS, rng.randint(1, 3))]
    stream = await _turn(service, [{"role": "user", "content": user}], tools, max_new_tokens)
    return not stream.choices[0].tool_calls


def _share(results: list[dict], key: str) -> float:
    return sum(r[key] for r in results) / max(len(results), 1)


def evaluate(model_dir: str | Path | None = None, n: int = 100, seed: int = 4321,
             num_controls: int = 50, max_new_tokens: int = MAX_NEW_TOKENS,
             progress: bool = False) -> dict:
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    probes = tool_probes(n, seed)

    async def run() -> tuple[list[dict], list[bool], str]:
        service = local_service(model_dir, max_num_seqs=min(max(n, num_controls), 64))
        try:
            results = await asyncio.gather(*(run_probe(service, p, max_new_tokens)
                                             for p in probes))
            controls = await asyncio.gather(*(run_control(service, seed, i, max_new_tokens)
                                              for i in range(num_controls)))
            return results, controls, service.model_fingerprint
        finally:
            await close_service(service)

    t0 = time.perf_counter()
    results, controls, fingerprint = asyncio.run(run())
    by_source = {}
    for name, subset in (("argument_in_request", [r for r in results if not r["from_fact"]]),
                         ("argument_told_before", [r for r in results if r["from_fact"]])):
        by_source[name] = {"probes": len(subset), "tool_args_exact": _share(subset,
                                                                            "tool_args_exact")}
    failures = [r for r in results if not (r["tool_call_valid"] and r["tool_args_exact"]
                                           and r["answer_from_tool"])][:5]
    if progress:
        print(f"{len(results)} probes, {len(controls)} controls", flush=True)
    return {
        "model": str(model_dir), "model_fingerprint": fingerprint, "method": METHOD,
        "seed": seed, "probes": n, "controls": num_controls,
        "seconds": round(time.perf_counter() - t0, 1),
        "called": _share([{"c": bool(r["called"])} for r in results], "c"),
        "answer_resumed": _share(results, "answer_resumed"),
        "by_argument_source": by_source, "failure_examples": failures,
        "summary": {"tool_call_valid": _share(results, "tool_call_valid"),
                    "tool_args_exact": _share(results, "tool_args_exact"),
                    "answer_from_tool": _share(results, "answer_from_tool"),
                    "text_when_no_tool_applies": sum(controls) / max(len(controls), 1)},
    }
