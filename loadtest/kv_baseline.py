"""The transformer baseline: the load test's own conversations, turn by turn, through a
decoder-only transformer (Hugging Face `transformers`, Llama architecture) of the shipped RetNet's
parameter count, and the bytes its KV cache holds after each turn, measured on the cache tensors
of a real forward pass. Random weights (built from a config, nothing downloaded): the cache's
size depends on the tokens, not on what the weights say.

Same tokens as the server: the conversations are rendered with the shipped model's chat template
and tokenizer. Same dtype as the stored RetNet states (fp32); an fp16 cache is half.
"""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import numpy as np
import torch

from loadtest.processes import REPO

MODEL_DIR = REPO / "models" / "retnet-tiny-chat"
RETNET_PARAMS = 4_999_424  # models/retnet-tiny-chat (model card)


def transformer_config(target_params: int = RETNET_PARAMS, hidden_size: int = 256,
                       num_layers: int = 4, num_heads: int = 8, vocab_size: int = 2048):
    """A Llama config with the RetNet's width, depth, heads and vocabulary, its MLP width chosen
    so the parameter count is the closest to `target_params`."""
    from transformers import LlamaConfig

    # tied embedding + final norm + per layer: q, k, v, o, two norms, gate/up/down (3 * h * f)
    fixed = vocab_size * hidden_size + hidden_size
    per_layer_fixed = 4 * hidden_size * hidden_size + 2 * hidden_size
    ffn = round(((target_params - fixed) / num_layers - per_layer_fixed) / (3 * hidden_size))
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=ffn,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       num_key_value_heads=num_heads, max_position_embeddings=65536,
                       tie_word_embeddings=True, attention_bias=False, mlp_bias=False)


def build_model(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(transformer_config()).eval()
    return model


def cache_bytes(cache) -> int:
    """Bytes of every key and value tensor a transformers cache holds."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)
                   if t is not None]
    else:
        tensors = [*cache.key_cache, *cache.value_cache]
    return sum(t.numel() * t.element_size() for t in tensors)


def conversation_turn_ids(tokenizer, messages: list[dict]) -> list[list[int]]:
    """The tokens each turn adds: user message, assistant reply, template tokens around them."""
    turns, previous = [], []
    for end in range(2, len(messages) + 1, 2):
        ids = tokenizer.apply_chat_template(messages[:end], tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if ids[:len(previous)] != previous:
            raise ValueError("the template does not extend the earlier turns' tokens")
        turns.append(ids[len(previous):])
        previous = ids
    return turns


@torch.inference_mode()
def measure_conversation(model, turn_ids: list[list[int]]) -> list[tuple[int, int]]:
    """(tokens held, KV-cache bytes) after each turn, the cache carried from turn to turn."""
    from transformers import DynamicCache

    # transformers 5 names the argument `cache`, 4.x `past_key_values`; either fills it in place
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"
    cache, held, rows = DynamicCache(), 0, []
    for ids in turn_ids:
        model(torch.tensor([ids]), use_cache=True, **{name: cache})
        held += len(ids)
        rows.append((held, cache_bytes(cache)))
    return rows


def measure_transcripts(transcripts: Path, out_csv: Path) -> dict:
    """KV bytes per turn of every conversation in a run's transcripts.jsonl; a summary."""
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(MODEL_DIR)
    model = build_model()
    rows = []
    for line in transcripts.read_text().splitlines():
        conv = json.loads(line)
        for turn, (held, num_bytes) in enumerate(
                measure_conversation(model, conversation_turn_ids(tokenizer, conv["messages"])),
                start=1):
            rows.append({"conversation": conv["conversation"], "turn": turn,
                         "tokens": held, "kv_cache_bytes": num_bytes})
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["conversation", "turn", "tokens",
                                               "kv_cache_bytes"])
        writer.writeheader()
        writer.writerows(rows)
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    kv = np.array([r["kv_cache_bytes"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(tokens, kv, 1)
    r2 = 1 - ((kv - (slope * tokens + intercept)) ** 2).sum() / ((kv - kv.mean()) ** 2).sum()
    by_turn = {}
    for r in rows:
        by_turn.setdefault(r["turn"], []).append(r["kv_cache_bytes"])
    last = max(by_turn)
    config = model.config
    return {
        "model": f"LlamaForCausalLM hidden {config.hidden_size}, {config.num_hidden_layers} "
                 f"layers, {config.num_attention_heads} heads, MLP {config.intermediate_size}, "
                 "fp32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes_per_token": round(float(slope), 1),
        "linear_fit_r2": round(float(r2), 6),
        "bytes_per_conversation": {"turn2": float(np.mean(by_turn[2])) if 2 in by_turn else None,
                                   f"turn{last}": float(np.mean(by_turn[last]))},
    }
