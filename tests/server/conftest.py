"""Servers for the HTTP suites: real `retserve serve` processes on the shipped model, storing
in the real Redis under a namespace of their own (removed afterwards)."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.server_process import MODEL_NAME, ServerProcess


def delete_namespace(redis_url: str, namespace: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture(scope="module")
def namespace(redis_url):
    value = f"t{uuid.uuid4().hex[:12]}"
    yield value
    delete_namespace(redis_url, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url, namespace):
    """One reusing server for a whole module."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), store_url=redis_url,
                            store_namespace=namespace).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def full_prefill_server(tmp_path_factory):
    """The same model with reuse switched off: every turn feeds its whole conversation."""
    process = ServerProcess(tmp_path_factory.mktemp("no-reuse"), store_url="memory://",
                            reuse_states=False).start()
    yield process
    process.kill()


@pytest.fixture
def model_name() -> str:
    return MODEL_NAME


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def unique(text: str) -> str:
    """Text no earlier test (or run) has stored a state for."""
    return f"{text} ({uuid.uuid4().hex[:6]})"
