"""Key scheme: every key lives under a per-tenant prefix derived from a hash of the tenant.

    <namespace>:<tenant hash>:c:<content key>   immutable state record of a conversation prefix
    <namespace>:<tenant hash>:s:<session hash> mutable pointer: session -> content key
    <namespace>:<tenant hash>:p:<content key>   pin: a fork shares this record, keep it
    <namespace>:<tenant hash>:r:<response hash> immutable state record of a stored response
    <namespace>:<tenant hash>:o:<response hash> that response's object (JSON), beside it
    <namespace>:<tenant hash>:q:<slot> | q:next the tenant's ring of stored response ids (its cap)

Callers hand in a tenant and get keys under that tenant's prefix only; no function takes a raw
key or another tenant's hash, so there is no way to name (or probe) a key of another tenant.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Mapping, Sequence

DEFAULT_NAMESPACE = "rs"
_json_string = json.encoder.encode_basestring  # a JSON string as ensure_ascii=False writes it
_CONTENT_KEY_RE = re.compile(r"[0-9a-f]{32}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _digest(person: bytes, *chunks: bytes, size: int = 16) -> bytes:
    h = hashlib.blake2b(digest_size=size, person=person)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))  # length-prefixed: no ambiguous joins
        h.update(chunk)
    return h.digest()


def tenant_prefix(namespace: str, tenant: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"invalid namespace {namespace!r}")
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty string")
    return f"{namespace}:{_digest(b'rs-tenant', tenant.encode(), size=12).hex()}:"


def record_key(namespace: str, tenant: str, content_key: str) -> str:
    if not isinstance(content_key, str) or not _CONTENT_KEY_RE.fullmatch(content_key):
        raise ValueError(f"invalid content key {content_key!r}")
    return f"{tenant_prefix(namespace, tenant)}c:{content_key}"


def pin_key(namespace: str, tenant: str, content_key: str) -> str:
    """Marks a record that a forked session shares: its expiry is never cut to a grace period."""
    return record_key(namespace, tenant, content_key).replace(":c:", ":p:", 1)


def session_prefix(namespace: str, tenant: str) -> str:
    return f"{tenant_prefix(namespace, tenant)}s:"


def session_key(namespace: str, tenant: str, session_id: str) -> str:
    # hashed: client-chosen ids may hold any character; the id itself lives in the pointer value
    if not isinstance(session_id, str) or not 0 < len(session_id) <= 256:
        raise ValueError("session_id must be a string of 1..256 characters")
    return session_prefix(namespace, tenant) + _digest(b"rs-session", session_id.encode()).hex()


def canonical_message(message: Mapping) -> bytes:
    """One message as canonical JSON: sorted keys, no whitespace, null-valued fields dropped
    (clients differ on `"name": null` vs no name; the template sees the same thing)."""
    if len(message) == 2 and type(message.get("content")) is str \
            and type(message.get("role")) is str:
        # the common message, spelt out: the same bytes as below at a fraction of the cost
        # (a client resending a long history hashes every message of it each turn)
        return (f'{{"content":{_json_string(message["content"])},'
                f'"role":{_json_string(message["role"])}}}').encode()
    fields = {k: v for k, v in message.items() if v is not None}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_keys(tenant: str, model_fingerprint: str, messages: Sequence[Mapping],
                 base: str | None = None) -> list[str]:
    """Content key of every prefix: ids[i] names messages[: i + 1] (after `base`, the content
    key of the conversation before `messages`, when given).

    A hash chain, id_i = H(id_{i-1}, message_i), seeded with (tenant, fingerprint): equal to a
    hash of the whole prefix's canonical JSON, but all prefixes cost O(total length), and a
    conversation known only by its key (a session) extends it without its earlier text.
    """
    if base is None:
        state = _digest(b"rs-content", tenant.encode(), model_fingerprint.encode())
    elif isinstance(base, str) and _CONTENT_KEY_RE.fullmatch(base):
        state = bytes.fromhex(base)
    else:
        raise ValueError(f"invalid content key {base!r}")
    ids = []
    for message in messages:
        if len(message) == 2 and type(role := message.get("role")) is str \
                and type(content := message.get("content")) is str:
            step = (state, role, content)
            following = _chain_steps.get(step)
            if following is None:
                following = _digest(b"rs-content", state, canonical_message(message))
                _chain_steps.put(step, following, len(content))
            state = following
        else:
            state = _digest(b"rs-content", state, canonical_message(message))
        ids.append(state.hex())
    return ids


class _ChainSteps:
    """Memo of chain steps (previous key, role, content) -> next key for plain messages: a
    client resends its whole history every turn, and keying it again costs ~1.3 µs a message
    (3 ms for a 2,300-message chat), a lookup a tenth of that. A pure function's memo, so
    sharing it across tenants reveals nothing (the tenant is in every previous key); bounded
    by the characters it holds, cleared when full."""

    def __init__(self, max_chars: int = 8 << 20):
        self.max_chars = max_chars
        self._steps: dict[tuple[bytes, str, str], bytes] = {}
        self._chars = 0

    def get(self, step: tuple[bytes, str, str]) -> bytes | None:
        return self._steps.get(step)

    def put(self, step: tuple[bytes, str, str], following: bytes, num_chars: int) -> None:
        size = num_chars + 64  # the content and, roughly, the entry around it
        if self._chars + size > self.max_chars:
            self._steps.clear()
            self._chars = 0
        self._steps[step] = following
        self._chars += size


_chain_steps = _ChainSteps()


_RESPONSE_PARTS = {"state": "r", "object": "o"}


def response_key(namespace: str, tenant: str, response_id: str, part: str = "state") -> str:
    """A stored response's state record (part "state") or its response object ("object")."""
    # hashed like session ids: a client may send any string as previous_response_id
    if not isinstance(response_id, str) or not 0 < len(response_id) <= 256:
        raise ValueError("response_id must be a string of 1..256 characters")
    digest = _digest(b"rs-response", response_id.encode()).hex()
    return f"{tenant_prefix(namespace, tenant)}{_RESPONSE_PARTS[part]}:{digest}"


def response_slot_key(namespace: str, tenant: str, slot: int | None) -> str:
    """Slot `slot` of the tenant's ring of stored response ids; None: the ring's counter."""
    name = "next" if slot is None else str(operator.index(slot))
    return f"{tenant_prefix(namespace, tenant)}q:{name}"
