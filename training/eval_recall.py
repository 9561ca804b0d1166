"""Held-out fact recall, measured the way retserve serves a chat: turn by turn, state in a store.

For each probe (training/chat_data.recall_probes: a fact told, N filler exchanges, then the
question) the model runs every user turn itself through the chat service (server/chat_service.py,
the same turn seam the HTTP API uses): each turn resends the conversation as an OpenAI client
does, the service finds the state stored after the previous reply, decodes it from the record
bytes (no in-process cache) and feeds only the new turn; the reply is decoded greedily and the
state after it (end of turn included) is stored again. All probes of a distance run at once,
batched by the engine. The history is the model's own replies, not the probe's reference ones.

A probe counts as recalled when the final reply, stripped of surrounding whitespace, equals the
held-out value exactly. Held-out values never occur in training data, so a hit can only come
from the carried state.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.sampling import SamplingParams
from server.chat_service import ChatService
from server.chat_turn import ChatTurn
from server.local_service import close_service, local_service
from training.chat_data import recall_probes

DISTANCES = (1, 2, 4, 8)
METHOD = ("server.chat_service.ChatService (stored prefix found by content key, chunkwise "
          "prefill of each new turn, batched recurrent greedy decode); state read back from "
          "store record bytes before every turn")
TENANT = "eval"


async def reply(service: ChatService, messages: list[dict], max_new_tokens: int = 32,
                session_id: str | None = None) -> tuple[str, int]:
    """One greedy turn: (the reply's text, tokens a stored state covered)."""
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    stream = await service.start_chat(ChatTurn(TENANT, list(messages), params,
                                               session_id=session_id))
    text = "".join([delta.text async for delta in stream])
    return text, stream.usage.cached_tokens


async def play(service: ChatService, users: list[dict], max_new_tokens: int = 32) -> dict:
    """Every user turn of one probe; the conversation resent each turn."""
    messages, cached = [], []
    for user in users:
        messages.append(user)
        text, num_cached = await reply(service, messages, max_new_tokens)
        messages.append({"role": "assistant", "content": text})
        cached.append(num_cached)
    return {"reply": messages[-1]["content"], "cached_tokens": cached}


async def run_probes(service: ChatService, probes: list[dict], max_new_tokens: int = 32
                     ) -> list[dict]:
    played = await asyncio.gather(*(
        play(service, [m for m in p["messages"] if m["role"] == "user"], max_new_tokens)
        for p in probes))
    return [{"reply": r["reply"].strip(), "answer": p["answer"], "kind": p["kind"],
             "correct": r["reply"].strip() == p["answer"],
             "every_turn_resumed": all(c > 0 for c in r["cached_tokens"][1:])}
            for r, p in zip(played, probes, strict=True)]


async def _evaluate(service: ChatService, n: int, distances, seed: int, max_new_tokens: int,
                    progress: bool, split: str) -> tuple[dict, list]:
    per_distance, failures = {}, []
    for k in distances:
        results = await run_probes(service, recall_probes(n, k, seed=seed, split=split),
                                   max_new_tokens)
        hits = [r for r in results if r["correct"]]
        kinds, kind_hits = Counter(r["kind"] for r in results), Counter(r["kind"] for r in hits)
        per_distance[str(k)] = {
            "recall": len(hits) / len(results), "correct": len(hits), "total": len(results),
            "by_kind": {kind: f"{kind_hits[kind]}/{kinds[kind]}" for kind in sorted(kinds)},
            "every_turn_resumed": all(r["every_turn_resumed"] for r in results),
        }
        failures += [{"turns_back": k, **r} for r in results if not r["correct"]][:3]
        if progress:
            print(f"turns_back={k}: {len(hits)}/{len(results)}", flush=True)
    return per_distance, failures


def evaluate(model_dir: str | Path | None = None, n: int = 50, distances=DISTANCES,
             seed: int = 1234, max_new_tokens: int = 32, progress: bool = False,
             split: str = "heldout") -> dict:
    """Recall share per distance on held-out probes (or, as a diagnostic, on the training
    pools' values); the result ends with `summary`."""
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR

    async def run() -> tuple[dict, list, str]:
        service = local_service(model_dir, max_num_seqs=n)
        try:
            found = await _evaluate(service, n, distances, seed, max_new_tokens, progress, split)
            return *found, service.model_fingerprint
        finally:
            await close_service(service)

    t0 = time.perf_counter()
    per_distance, failures, fingerprint = asyncio.run(run())
    return {
        "model": str(model_dir), "model_fingerprint": fingerprint, "method": METHOD,
        "split": split, "seed": seed, "probes_per_distance": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "distances": per_distance, "failure_examples": failures,
        "summary": {f"recall_{k}": per_distance[str(k)]["recall"] for k in distances},
    }
