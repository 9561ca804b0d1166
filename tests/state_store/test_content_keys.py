"""Content keys: stable bytes per message, whatever path computes them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

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

