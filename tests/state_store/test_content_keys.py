"""Content keys: stable bytes per message, whatever path computes them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from state_store import keys
from state_store.keys import canonical_message

text = st.text(st.characters(codec="utf-8"), max_size=200)


def general(message: dict) -> bytes:
    fields = {k: v for k, v in message.items() if v is not None}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=500, deadline=None)
@given(role=text, content=text)
def test_the_plain_message_path_writes_the_canonical_json(role, content):
    message = {"role": role, "content": content}
    assert canonical_message(message) == general(message)
    assert canonical_message({"content": content, "role": role}) == general(message)
    assert json.loads(canonical_message(message)) == message


def test_other_messages_take_the_general_path():
    for message in ({"role": "user", "content": None},
                    {"role": "assistant", "content": "x", "name": None},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "tool", "content": "42", "tool_call_id": "c1"}):
        assert canonical_message(message) == general(message)
    assert canonical_message({"role": "user", "content": None}) == b'{"role":"user"}'



def chain(tenant: str, messages: list[dict]) -> list[str]:
    """The chain by its definition: each key hashes the previous one and the message."""
    state = keys._digest(b"rs-content", tenant.encode(), b"fp")
    out = []
    for message in messages:
        state = keys._digest(b"rs-content", state, canonical_message(message))
        out.append(state.hex())
    return out


def test_remembered_chain_steps_give_the_keys_of_the_definition(monkeypatch):
    monkeypatch.setattr(keys, "_chain_steps", keys._ChainSteps(max_chars=300))
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages = [*turns, {"role": "tool", "content": "1", "tool_call_id": "c"}, *turns,
                {"role": "user", "content": "x" * 100}]
    for tenant in ("a", "b", "a"):  # the second "a" is served from the memo (then cleared)
        assert keys.content_keys(tenant, "fp", messages) == chain(tenant, messages)
    first, again = keys.content_keys("a", "fp", messages), keys.content_keys("a", "fp", messages)
    assert first == again and len(set(first)) == len(first)  # same message, other parent
    assert keys._chain_steps._chars <= 300
