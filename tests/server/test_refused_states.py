"""A stored state whose header and checksum are valid but whose content is not this model's
state (NaN or infinite values, other shapes, an integer dtype) is refused: counted by reason,
never fed to the model, and the turn is served as a miss: the same answer a missing record
gives. Anyone who can write to Redis can write such a record; the checksum only proves the
bytes did not change since."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import httpx
import numpy as np
import pytest

from server.auth import ANONYMOUS_TENANT
from state_store import ConversationStore, open_store
from state_store.keys import record_key
from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=8)


def _with_values(record, change):
    values = np.frombuffer(record.body, dtype=np.float32).copy()
    change(values)
    return dataclasses.replace(record, body=values.tobytes())


def _nan(record):
    return _with_values(record, lambda v: v.__setitem__(len(v) // 2, np.nan))


def _inf(record):
    return _with_values(record, lambda v: v.__setitem__(0, -np.inf))


def _other_shapes(record):
    """The same number of elements, so the body length still matches the header."""
    (name, shape), *rest = record.tensors
    return dataclasses.replace(record, tensors=((name, tuple(reversed(shape))), *rest))


def _flattened(record):
    return dataclasses.replace(record, tensors=tuple(
        (name, (int(np.prod(shape)),)) for name, shape in record.tensors))


def _integer_dtype(record):
    return dataclasses.replace(record, dtype="int32")


POISONS = {"nan": _nan, "inf": _inf, "other_shapes": _other_shapes, "flattened": _flattened,
           "integer_dtype": _integer_dtype}


def in_store(redis_url: str, namespace: str, fingerprint: str, work):
    """`await work(store)` on a ConversationStore of its own (one per event loop)."""
    async def run():
        store = ConversationStore(open_store(redis_url), fingerprint, namespace=namespace)
        try:
            return await work(store)
        finally:
            await store.store.close()

    return asyncio.run(run())


def refused_count(server_url: str) -> int:
    text = httpx.get(f"{server_url}/metrics").text
    return int(sum(float(v) for v in re.findall(
        r'^retserve_store_records_refused_total\{[^}]*reason="MalformedRecord"\} (\S+)$', text,
        re.M)))


@pytest.fixture(scope="module")
def conversation(tmp_path_factory, redis_url, namespace):
    """A server without an in-process cache (each turn reads Redis), a first turn stored, and
    the next turn's answer when its state is missing: what a refused state must give."""
    from tests.server_process import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("refused"), store_url=redis_url,
                           store_namespace=namespace, hot_cache_mb=0).start()
    try:
        client = server.client()
        first = [user(unique("My boat is called Siri."))]
        reply = client.chat.completions.create(messages=first, **GREEDY)
        told = [*first, {"role": "assistant", "content": reply.choices[0].message.content}]
        fingerprint = httpx.get(f"{server.url}/version").json()["model_fingerprint"]

        def store(work):
            return in_store(redis_url, namespace, fingerprint, work)

        async def take(s: ConversationStore):
            found = await s.lookup(ANONYMOUS_TENANT, told)
            content_key = s.content_keys(ANONYMOUS_TENANT, told)[-1]
            key = record_key(namespace, ANONYMOUS_TENANT, content_key)
            assert await s.store.delete(key)
            return found[1]

        record = store(take)
        following = [*told, user("What is my boat called?")]
        missed = client.chat.completions.create(messages=following, **GREEDY)
        assert missed.usage.prompt_tokens_details.cached_tokens == 0
        yield server, store, told, record, following, missed.choices[0].message.content
    finally:
        server.kill()


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_state_is_refused_counted_and_served_as_a_miss(conversation, poison):
    server, store, told, record, following, answer_without_state = conversation
    store(lambda s: s.save(ANONYMOUS_TENANT, told, POISONS[poison](record)))
    before = refused_count(server.url)
    reply = server.client().chat.completions.create(messages=following, **GREEDY)
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert reply.choices[0].message.content == answer_without_state
    assert refused_count(server.url) == before + 1


def test_the_true_state_is_still_used(conversation):
    server, store, told, record, following, answer_without_state = conversation
    store(lambda s: s.save(ANONYMOUS_TENANT, told, record))
    reply = server.client().chat.completions.create(messages=following, **GREEDY)
    assert reply.usage.prompt_tokens_details.cached_tokens > 0
    assert reply.choices[0].message.content == answer_without_state
