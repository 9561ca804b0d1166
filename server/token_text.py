"""Each token's bytes and text, for logprobs (`token`, `bytes`). Byte-level BPE tokens (GPT-2's
scheme) spell their bytes with one printable character per byte; other tokenizers fall back to
decoding the token alone. A token that ends inside a UTF-8 character has text with U+FFFD and
its exact `bytes`."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from engine.tokenizer import Tokenizer


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character table, character -> byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(decoder: dict | None) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(d) for d in decoder.get("decoders", []) or [])


class TokenText:
    def __init__(self, tokenizer: Tokenizer, tokenizer_json: Path | None = None):
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}
        self._special = tokenizer.special_token_ids
        if tokenizer_json is not None and tokenizer_json.is_file():
            data = json.loads(tokenizer_json.read_text("utf-8"))
            if _is_byte_level(data.get("decoder")):
                vocab = data.get("model", {}).get("vocab", {})
                if isinstance(vocab, dict):
                    self._pieces = {i: piece for piece, i in vocab.items()}
                for added in data.get("added_tokens", []):
                    self._pieces[added["id"]] = added["content"]
        self._alphabet = byte_level_alphabet()

    @lru_cache(maxsize=65536)  # noqa: B019 (one instance per server, bounded)
    def bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None or token_id in self._special:
            return self.tokenizer.decode([token_id], skip_special_tokens=False).encode()
        try:
            return bytes(self._alphabet[c] for c in piece)
        except KeyError:
            return piece.encode()

    def text(self, token_id: int) -> str:
        return self.bytes(token_id).decode("utf-8", errors="replace")
