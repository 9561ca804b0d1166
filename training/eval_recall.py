"""Held-out fact recall, measured the way retserve serves a chat: turn by turn, state in a store.

For each probe (training/chat_data.recall_probes: a fact told, N filler exchanges, then the
question) the model runs every user turn itself: it prefills only that turn's new tokens
(chunkwise form), decodes its reply greedily (recurrent form), feeds the template's end-of-turn
ids, and hands the state over as bytes: RetentionState.to_bytes -> state_store encode_record ->
decode_record -> RetentionState.from_bytes, before every following turn. The history it carries
is its own replies, not the probe's reference ones. Nothing is ever replayed.

A probe counts as recalled when the final reply equals the held-out value exactly. Held-out
values never occur in training data, so a hit can only come from the carried state.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import torch

from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.model import RetNet
from engine.state import RetentionState, dtype_from_name, dtype_name
from engine.tokenizer import Tokenizer
from state_store.codec import decode_record, encode_record
from state_store.record import StateRecord
from training.chat_data import recall_probes

DISTANCES = (1, 2, 4, 8)
METHOD = ("model.prefill (chunkwise) + model.step (recurrent), greedy; state round-tripped "
          "through state_store's record codec before every turn")


def state_to_record_bytes(model: RetNet, state: RetentionState, tenant: str = "") -> bytes:
    """A single-row state as the bytes a store holds (header with fingerprint + raw tensors)."""
    now = time.time()
    record = StateRecord(
        model_fingerprint=model.fingerprint, dtype=dtype_name(state.kv.dtype),
        tensors=tuple(state.tensor_spec()), num_tokens=int(state.num_tokens[0]),
        body=state.to_bytes(), tenant=tenant, created_at=now, updated_at=now)
    return encode_record(record)


def state_from_record_bytes(model: RetNet, data: bytes) -> RetentionState:
    """Inverse of state_to_record_bytes; refuses bytes of another model or with a bad checksum."""
    record = decode_record(data, model.fingerprint)
    return RetentionState.from_bytes(record.body, model.config, record.num_tokens,
                                     dtype=dtype_from_name(record.dtype), device=model.device,
                                     out_dtype=model.empty_state(1).kv.dtype)


def turn_ids(tok: Tokenizer, history: list[dict], user: dict) -> list[int]:
    """Ids the template adds for `user` plus the generation prompt, after `history`.

    Taken as a text difference of two renders, so it holds for any append-only template; the
    text added starts with a special token (<|im_start|>), so encoding it alone gives the same
    ids as encoding the whole chat.
    """
    before = tok.apply_chat_template(history, add_generation_prompt=False) if history else ""
    after = tok.apply_chat_template(history + [user], add_generation_prompt=True)
    if not after.startswith(before):
        raise ValueError("chat template is not append-only")
    return tok.encode(after[len(before):])


@torch.no_grad()
def generate_reply(model: RetNet, tok: Tokenizer, prompt_ids: list[int],
                   state: RetentionState | None, max_new_tokens: int = 32
                   ) -> tuple[list[int], RetentionState]:
    """Prefill the new tokens, decode greedily to a stop token, then feed the end-of-turn ids
    (as the server does) so the state ends on a well-formed chat, ready for the next turn."""
    logits, state = model.prefill(torch.tensor([prompt_ids], device=model.device), state)
    out: list[int] = []
    token = int(logits[0, -1].argmax())
    while token not in tok.stop_token_ids and len(out) < max_new_tokens:
        out.append(token)
        logits, state = model.step(torch.tensor([token], device=model.device), state)
        token = int(logits[0].argmax())
    if tok.end_of_turn_ids:
        _, state = model.prefill(torch.tensor([list(tok.end_of_turn_ids)], device=model.device),
                                 state)
    return out, state


def run_probe(model: RetNet, tok: Tokenizer, probe: dict, max_new_tokens: int = 32) -> dict:
    """Play a probe's user turns through the model; the state crosses bytes between turns."""
    history: list[dict] = []
    stored: bytes | None = None
    users = [m for m in probe["messages"] if m["role"] == "user"]
    for user in users:
        state = state_from_record_bytes(model, stored) if stored is not None else None
        ids, state = generate_reply(model, tok, turn_ids(tok, history, user), state,
                                    max_new_tokens)
        reply = tok.decode(ids).strip()
        history += [user, {"role": "assistant", "content": reply}]
        stored = state_to_record_bytes(model, state)
    return {"reply": reply, "answer": probe["answer"], "kind": probe["kind"],
            "correct": reply == probe["answer"], "state_tokens": int(state.num_tokens[0])}


def evaluate(model_dir: str | Path | None = None, n: int = 50, distances=DISTANCES,
             seed: int = 1234, max_new_tokens: int = 32, progress: bool = False) -> dict:
    """Recall share per distance on held-out probes; the result ends with `summary`."""
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    model = load_model(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    t0 = time.perf_counter()
    per_distance, failures = {}, []
    for k in distances:
        results = [run_probe(model, tok, p, max_new_tokens)
                   for p in recall_probes(n, k, seed=seed, split="heldout")]
        hits = [r for r in results if r["correct"]]
        kinds, kind_hits = Counter(r["kind"] for r in results), Counter(r["kind"] for r in hits)
        per_distance[str(k)] = {
            "recall": len(hits) / len(results), "correct": len(hits), "total": len(results),
            "by_kind": {kind: f"{kind_hits[kind]}/{kinds[kind]}" for kind in sorted(kinds)},
        }
        failures += [{"turns_back": k, **r} for r in results if not r["correct"]][:3]
        if progress:
            print(f"turns_back={k}: {len(hits)}/{len(results)}", flush=True)
    return {
        "model": str(model_dir), "model_fingerprint": model.fingerprint, "method": METHOD,
        "split": "heldout", "seed": seed, "probes_per_distance": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "distances": per_distance, "failure_examples": failures,
        "summary": {f"recall_{k}": per_distance[str(k)]["recall"] for k in distances},
    }
