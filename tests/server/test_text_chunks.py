"""A streamed text delta's chunk, spliced into a template, is the JSON a full dump writes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from server.routes.chat import TextChunks

HEAD = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m é",
        "system_fingerprint": "0123"}


def chunk(index: int, delta: dict, finish_reason=None, logprobs=None, tail=None) -> str:
    choice = {"index": index, "delta": delta, "logprobs": logprobs,
              "finish_reason": finish_reason}
    return json.dumps({**HEAD, "choices": [choice], **(tail or {})}, ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(text=st.text(), index=st.integers(0, 3), usage=st.booleans())
def test_a_spliced_chunk_is_the_dumped_chunk(text, index, usage):
    tail = {"usage": None} if usage else None
    spliced = TextChunks(lambda i, d: chunk(i, d, tail=tail))

    expected = chunk(index, {"content": text}, tail=tail)
    assert spliced(index, text) == expected
    assert spliced(index, text + '"\\\n') == chunk(index, {"content": text + '"\\\n'},
                                                   tail=tail)
    assert json.loads(spliced(index, text))["choices"][0]["delta"] == {"content": text}
