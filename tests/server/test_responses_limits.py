"""Stored responses stay bounded and private: each API key's tenant sees only its own
responses (another's id is a 404 like an unknown one), a tenant keeps at most its cap (the
oldest go, their states with them), and a response is gone after its expiry."""

from __future__ import annotations

import time

import openai
import pytest
import redis

from state_store.keys import tenant_prefix
from tests.server.conftest import unique
from tests.server_process import MODEL_NAME, ServerProcess

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
SHORT = dict(model=MODEL_NAME, temperature=0.0, max_output_tokens=4)


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory, redis_url, namespace):
    server = ServerProcess(tmp_path_factory.mktemp("capped"), store_url=redis_url,
                           store_namespace=namespace, api_keys=f"{ALICE}:alice,{BOB}:bob",
                           max_responses_per_tenant=3).start()
    yield server
    server.kill()


def assert_gone(client, response_id: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(response_id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(input="Hi", previous_response_id=response_id, **SHORT)
    assert e.value.body["param"] == "previous_response_id"


def test_another_tenants_response_is_a_404_everywhere(capped_server):
    alice, bob = capped_server.client(api_key=ALICE), capped_server.client(api_key=BOB)
    made = alice.responses.create(input=unique("My secret word is plum."), **SHORT)
    assert_gone(bob, made.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(made.id)
    assert alice.responses.retrieve(made.id).id == made.id  # untouched by bob's delete


def stored_states(redis_url: str, namespace: str, tenant: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return sum(1 for _ in client.scan_iter(match=f"{tenant_prefix(namespace, tenant)}r:*"))


def test_a_tenant_keeps_its_newest_responses_up_to_the_cap(capped_server, redis_url,
                                                          namespace):
    alice, bob = capped_server.client(api_key=ALICE), capped_server.client(api_key=BOB)
    kept_by_bob = bob.responses.create(input=unique("Bob's."), **SHORT)
    made = []
    for i in range(5):
        previous = made[-1].id if made else None
        made.append(alice.responses.create(input=unique(f"Turn {i}."),
                                           previous_response_id=previous, **SHORT))
    for old in made[:2]:
        assert_gone(alice, old.id)
    for new in made[2:]:
        assert alice.responses.retrieve(new.id).id == new.id
    assert bob.responses.retrieve(kept_by_bob.id).id == kept_by_bob.id
    assert stored_states(redis_url, namespace, "alice") == 3


def test_a_response_is_gone_after_its_expiry(start_server, redis_url, namespace):
    server = start_server(store_url=redis_url, store_namespace=namespace, response_ttl=2.0)
    client = server.client()
    made = client.responses.create(input=unique("Soon gone."), **SHORT)
    assert client.responses.retrieve(made.id).id == made.id
    time.sleep(2.5)
    assert_gone(client, made.id)
