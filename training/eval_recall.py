"""Held-out fact recall, measured the way retserve serves a chat: turn by turn, state in a store.

For each probe (training/chat_data.recall_probes: a fact told, N filler exchanges, then the
question) the model runs every user turn itself, through the batching engine (engine/engine.py,
LLMEngine: all probes of a distance decode together): it feeds only that turn's new tokens,
decodes its reply greedily, feeds the template's end-of-turn ids, and hands the state over as
bytes: RetentionState.to_bytes -> state_store encode_record -> decode_record ->
RetentionState.from_bytes, before every following turn. The history it carries is its own
replies, not the probe's reference ones. Nothing is ever replayed.

A probe counts as recalled when the final reply equals the held-out value exactly. Held-out
values never occur in training data, so a hit can only come from the carried state.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.engine import LLMEngine
from engine.engine_config import EngineConfig
from engine.model import RetNet
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState, dtype_from_name, dtype_name
from engine.tokenizer import Tokenizer
from state_store.codec import decode_record, encode_record
from state_store.record import StateRecord
from training.chat_data import recall_probes

DISTANCES = (1, 2, 4, 8)
METHOD = ("engine.engine.LLMEngine (chunkwise prefill of each new turn, batched recurrent greedy "
          "decode); state round-tripped through state_store's record codec before every turn")


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
    """Ids the template adds for `user` plus the generation prompt, after `history` (whose
    tokens, replies as generated, are already in the state)."""
    if not history:
        return tok.encode_chat([user], add_generation_prompt=True)
    ids = tok.encode_chat_continuation(history, [*history, user])
    if ids is None:
        raise ValueError("the chat template does not render the history as a prefix")
    return ids


@dataclass
class Chat:
    """A conversation between turns: its text so far and its state as store bytes, nothing else."""

    history: list[dict] = field(default_factory=list)
    stored: bytes | None = None
    last_reply: str = ""


def make_engine(model: RetNet, tok: Tokenizer, max_num_seqs: int = 64) -> LLMEngine:
    return LLMEngine(model, EngineConfig(max_num_seqs=max_num_seqs,
                                         max_num_batched_tokens=max(2048, 8 * max_num_seqs)),
                     tokenizer=tok)


def run_turn(engine: LLMEngine, tok: Tokenizer, chats: list[Chat], users: list[dict],
             max_new_tokens: int = 32) -> None:
    """One user turn for every chat, decoded together; each chat's state leaves as bytes."""
    model = engine.model
    requests = []
    for i, (chat, user) in enumerate(zip(chats, users, strict=True)):
        state = state_from_record_bytes(model, chat.stored) if chat.stored is not None else None
        requests.append(Request(
            str(i), turn_ids(tok, chat.history, user),
            SamplingParams(max_tokens=max_new_tokens, temperature=0.0),
            initial_state=state, return_state=True, trailing_ids=tuple(tok.end_of_turn_ids)))
    results = engine.generate(requests)
    for i, (chat, user) in enumerate(zip(chats, users, strict=True)):
        outputs = results[str(i)]
        ids = [t for out in outputs for t in out.token_ids]
        chat.last_reply = tok.decode(ids).strip()
        chat.history += [user, {"role": "assistant", "content": chat.last_reply}]
        chat.stored = state_to_record_bytes(model, outputs[-1].state)


def run_probes(engine: LLMEngine, tok: Tokenizer, probes: list[dict],
               max_new_tokens: int = 32) -> list[dict]:
    """Play the probes' user turns through the engine (all probes have as many turns)."""
    chats = [Chat() for _ in probes]
    turns = [[m for m in p["messages"] if m["role"] == "user"] for p in probes]
    for t in range(len(turns[0])):
        run_turn(engine, tok, chats, [u[t] for u in turns], max_new_tokens)
    return [{"reply": c.last_reply, "answer": p["answer"], "kind": p["kind"],
             "correct": c.last_reply == p["answer"],
             "state_tokens": decode_record(c.stored, None).num_tokens}
            for c, p in zip(chats, probes, strict=True)]


def evaluate(model_dir: str | Path | None = None, n: int = 50, distances=DISTANCES,
             seed: int = 1234, max_new_tokens: int = 32, progress: bool = False,
             split: str = "heldout") -> dict:
    """Recall share per distance on held-out probes (or, as a diagnostic, on the training
    pools' values); the result ends with `summary`."""
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    model = load_model(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    engine = make_engine(model, tok, max_num_seqs=n)
    t0 = time.perf_counter()
    per_distance, failures = {}, []
    for k in distances:
        results = run_probes(engine, tok, recall_probes(n, k, seed=seed, split=split),
                             max_new_tokens)
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
        "split": split, "seed": seed, "probes_per_distance": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "distances": per_distance, "failure_examples": failures,
        "summary": {f"recall_{k}": per_distance[str(k)]["recall"] for k in distances},
    }
