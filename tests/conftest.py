"""Fixtures shared by every suite."""

import os

import pytest

from tests.redis_server import RedisServer, redis_answers
from tests.server_process import ServerProcess

# Multi-byte text the tiny tokenizer sees often enough to merge partially, so some tokens end
# inside a character (what the detokenizer must cope with).
MULTIBYTE_CHAT = [
    {"role": "user", "content": "日本語 café 🎉 naïve Ωmega"},
    {"role": "assistant", "content": "日本語 🎉🎉 über ñandú"},
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A ChatML byte-level BPE tokenizer (vocab 1024) trained on synthetic chats (~0.2 s)."""
    # Imported here so the rest of tests/engine never depends on the training package.
    from training.chat_data import generate_conversations
    from training.train_tokenizer import train_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    conversations = generate_conversations(300, seed=0) + [MULTIBYTE_CHAT] * 30
    train_tokenizer(out_dir, conversations, vocab_size=1024)
    return out_dir


@pytest.fixture
def redis_servers(tmp_path):
    """Start private redis-servers: `redis_servers(*args)`; all are killed at teardown."""
    started: list[RedisServer] = []

    def start(*args: str, port: int | None = None, sentinel_of: int | None = None
              ) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", *args, port=port,
                             sentinel_of=sentinel_of)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("RETSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("shared-redis")).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def start_server(tmp_path):
    """Start `retserve serve` processes: `start_server(**settings)`; killed at teardown."""
    started: list[ServerProcess] = []

    def start(wait: bool = True, **settings) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(started)}", **settings)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.kill()
