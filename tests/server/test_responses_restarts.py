"""A stored response outlives the process that made it (Redis, and the default sqlite store):
after a restart it is retrieved as it was and continued from its state, feeding only the new
input."""

from __future__ import annotations

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.tokenizer import Tokenizer
from server.turn_encoding import TurnEncoder
from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_output_tokens=8)


def continue_after_restart(start_server, **settings) -> None:
    server = start_server(**settings)
    first = server.client().responses.create(input=unique("My city is Bergen."), **GREEDY)
    assert server.stop() == 0
    client = start_server(**settings).client()
    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    second = client.responses.create(input="Where do I live?", previous_response_id=first.id,
                                     **GREEDY)
    usage = second.usage
    assert usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    new_input = TurnEncoder(Tokenizer.from_dir(DEFAULT_MODEL_DIR)).after_unknown(
        [user("Where do I live?")])
    assert usage.input_tokens - usage.input_tokens_details.cached_tokens == len(new_input.ids)


def test_a_response_continues_after_a_restart_on_redis(start_server, redis_url, namespace):
    continue_after_restart(start_server, store_url=redis_url, store_namespace=namespace)


def test_a_response_continues_after_a_restart_on_the_default_sqlite_store(start_server,
                                                                         tmp_path):
    data_dir = tmp_path / "data"
    continue_after_restart(start_server, data_dir=data_dir)
    assert (data_dir / "state.db").is_file()
