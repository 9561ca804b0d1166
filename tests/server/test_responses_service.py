"""The turn seam for stored responses, without HTTP: a turn started from a stored response's
state feeds only its new messages, and the state it hands back is exactly the state of the
whole conversation fed from scratch (also when a stop string cut the reply); its tokens are
those of an uninterrupted run."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import torch

from engine.checkpoint import load_model
from engine.sampling import SamplingParams
from engine.sequence import Request
from server.chat_service import ServiceOptions
from server.chat_turn import ChatTurn
from server.errors import APIError
from server.local_service import close_service, local_service
from server.protocol.common import Limits
from server.protocol.responses import ResponseRequest
from server.state_records import state_from_record
from tests.server.conftest import delete_namespace, unique, user

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
async def service(model, redis_url):
    """A service on the real Redis in a namespace of its own, no in-process cache."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    made = local_service(model=model, store_url=redis_url, namespace=namespace,
                         options=ServiceOptions())
    yield made
    await close_service(made)
    delete_namespace(redis_url, namespace)


async def respond(service, new_messages, start, params=GREEDY, stop=()):
    """One stored-response turn: (stream, the record it handed back)."""
    return await respond_turn(service, ChatTurn("t", new_messages, params, stop=stop), start)


async def respond_turn(service, turn: ChatTurn, start):
    kept = []

    async def keep(record):
        kept.append(record)

    stream = await service.start_from_state(turn, start, keep)
    async for _ in stream:
        pass
    assert len(kept) == 1
    return stream, kept[0]


def assert_state_is_fed_whole(service, model, record, messages, tools=None):
    stored = state_from_record(record, model.config)
    ids = service.tokenizer.encode_chat(messages, add_generation_prompt=False, tools=tools)
    with torch.inference_mode():
        _, reference = model.prefill(torch.tensor([ids]))
    assert stored.num_tokens.item() == len(ids)
    for mine, theirs in zip(stored.tensors, reference.tensors, strict=True):
        torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4)


async def test_a_chain_feeds_only_new_input_and_stores_the_whole_conversation(service, model):
    history, record = [], None
    inputs = [[{"role": "system", "content": "You are brief."}, user(unique("I am Ingrid."))],
              [user("I live in Bergen.")], [user("Where do I live?")]]
    for new in inputs:
        stream, record = await respond(service, new, record)
        fed = stream.usage.prompt_tokens - stream.usage.cached_tokens
        assert fed == len(service.encoder.after_unknown(new).ids) or not history
        assert stream.usage.cached_tokens == (
            len(service.tokenizer.encode_chat(history, False)) if history else 0)
        history += [*new, {"role": "assistant", "content": stream.choices[0].text}]
        assert_state_is_fed_whole(service, model, record, history)
    # the last reply is the reply to the whole conversation as one prompt
    ids = service.tokenizer.encode_chat(history[:-1])
    outputs = service.engine.generate(Request("whole", ids, GREEDY))
    whole = [t async for out in outputs for t in out.token_ids]
    assert stream.choices[0].token_ids == whole


async def test_a_reply_cut_by_a_stop_string_hands_back_the_state_of_its_text(service, model):
    long = SamplingParams(temperature=0.0, max_tokens=40)
    for _ in range(8):  # a reply long enough to cut in its middle
        first = [user(unique("Tell me about your day."))]
        free, _ = await respond(service, first, None, long)
        text = free.choices[0].text
        if len(text) >= 12:
            break
    stop = text[6:9]
    cut, record = await respond(service, first, None, long, stop=(stop,))
    assert cut.choices[0].text == text[: text.index(stop)]
    told = [*first, {"role": "assistant", "content": cut.choices[0].text}]
    assert_state_is_fed_whole(service, model, record, told)
    # and a continuation of it is exact too (the refeed path of a state-started turn)
    nxt = [user("Go on.")]
    stream, record = await respond(service, nxt, record, long, stop=(stop,))
    assert_state_is_fed_whole(service, model, record,
                              [*told, *nxt, {"role": "assistant",
                                             "content": stream.choices[0].text}])


async def test_nothing_is_handed_back_without_keep_and_the_chat_keys_are_untouched(
        service, redis_url):
    stream = await service.start_from_state(ChatTurn("t", [user(unique("Hi."))], GREEDY),
                                            None)
    async for _ in stream:
        pass
    assert stream.choices[0].final_state is None  # no end-of-turn fed, no state returned
    assert await service.conversations.store.list(service.conversations.namespace) == []


async def test_a_state_this_model_cannot_use_is_a_404_and_frees_the_turn(service):
    _, record = await respond(service, [user(unique("Hi."))], None)
    foreign = replace(record, tensors=(("layer0.S", (1,)),), body=b"\0" * 4)
    with pytest.raises(APIError) as e:
        await service.start_from_state(ChatTurn("t", [user("Hi.")], GREEDY), foreign)
    assert e.value.status == 404 and service.num_active == 0


async def test_a_tool_call_and_its_output_store_the_whole_conversation(service, model):
    limits = Limits(max_output_tokens=256, default_max_tokens=64, max_n=1,
                    vocab_size=model.config.vocab_size)
    tools = [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
              "parameters": {"type": "object", "required": ["city"], "properties": {
                  "city": {"type": "string", "maxLength": 16}}}}]
    asked = unique("What is the weather in Porto?")
    calling = ResponseRequest(model="m", input=asked, tools=tools, tool_choice="required",
                              parallel_tool_calls=False, temperature=0.0,
                              max_output_tokens=96).to_turn("t", limits, "r1")
    stream, record = await respond_turn(service, calling, None)
    assert stream.choices[0].finish_reason == "tool_calls"
    (call,) = stream.choices[0].tool_calls
    told = [user(asked), stream.choices[0].reply_message()]
    assert_state_is_fed_whole(service, model, record, told, calling.tools)
    output = {"type": "function_call_output", "call_id": call.id, "output": '{"sky": "clear"}'}
    answering = ResponseRequest(model="m", input=[output], tools=tools, tool_choice="none",
                                temperature=0.0, max_output_tokens=16).to_turn("t", limits, "r2")
    stream, record = await respond_turn(service, answering, record)
    told += [{"role": "tool", "tool_call_id": call.id, "content": output["output"]},
             {"role": "assistant", "content": stream.choices[0].text}]
    assert_state_is_fed_whole(service, model, record, told, calling.tools)
