"""Tool turns through the turn seam (no HTTP): a reply that is a call is stored as the exact
state of its conversation (tools, call and all), the tools key with the conversation, and a
follow-up after the tool result feeds only the new tokens."""

from __future__ import annotations

import json

import pytest
import torch

from engine.checkpoint import load_model
from engine.sampling import SamplingParams
from engine.sequence import Request
from server.chat_turn import ChatTurn
from server.local_service import close_service, local_service
from server.protocol.tools import ToolDefinition, output_constraint
from server.state_records import state_from_record
from tests.server.conftest import unique, user
from tests.server.test_tool_calls import TOOLS


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
async def service(model):
    service = local_service(model=model)
    yield service
    await close_service(service)


def tool_turn(messages, tools=TOOLS, choice="required", max_tokens=120) -> ChatTurn:
    constraint = output_constraint([ToolDefinition(**t) for t in tools], choice, None, None)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, grammar=constraint.grammar)
    return ChatTurn("t", list(messages), params, tools=constraint.tools,
                    tool_call_mode=constraint.tool_call_mode)


async def run(service, turn: ChatTurn):
    stream = await service.start_chat(turn)
    return stream, [d async for d in stream]


async def test_a_call_is_stored_as_the_exact_state_of_its_conversation(service, model):
    messages = [user(unique("What is the square of 7?"))]
    stream, deltas = await run(service, tool_turn(messages))
    choice = stream.choices[0]
    assert choice.finish_reason == "tool_calls" and deltas[-1].finish_reason == "tool_calls"
    reply = choice.reply_message()
    assert reply["content"] == "" and reply["tool_calls"][0]["id"] == choice.tool_calls[0].id
    key_messages = [{**messages[0], "tools": TOOLS}, reply]
    found = await service.conversations.lookup("t", key_messages)
    assert found is not None and found[0] == 2
    ids = service.tokenizer.encode_chat([*messages, reply], add_generation_prompt=False,
                                        tools=TOOLS)
    stored = state_from_record(found[1], model.config)
    with torch.inference_mode():
        _, reference = model.prefill(torch.tensor([ids]))
    torch.testing.assert_close(stored.kv, reference.kv, atol=2e-4, rtol=1e-4)


async def test_after_the_tool_result_only_the_new_tokens_are_fed(service):
    messages = [user(unique("What is the weather in Porto?"))]
    stream, _ = await run(service, tool_turn(messages))
    call = stream.choices[0].reply_message()
    result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"],
              "content": json.dumps({"forecast": "sunny", "temperature": 21})}
    follow = [*messages, call, result]
    second, _ = await run(service, tool_turn(follow, choice="auto", max_tokens=24))
    stored = service.tokenizer.encode_chat([*messages, call], add_generation_prompt=False,
                                           tools=TOOLS)
    assert second.usage.cached_tokens == len(stored)
    ids = service.tokenizer.encode_chat(follow, tools=TOOLS)
    assert second.usage.prompt_tokens == len(ids)
    outputs = service.engine.generate(Request("whole", ids, second.choices[0].request.params))
    whole = [t async for out in outputs for t in out.token_ids]
    assert second.choices[0].token_ids == whole


async def test_tools_key_with_the_conversation(service):
    messages = [user(unique("Square 9."))]
    first, _ = await run(service, tool_turn(messages))
    follow = [*messages, first.choices[0].reply_message(), user("Thanks.")]
    same, _ = await run(service, tool_turn(follow, choice="none", max_tokens=4))
    other, _ = await run(service, tool_turn(follow, tools=TOOLS[::-1], choice="none",
                                            max_tokens=4))
    without, _ = await run(service, ChatTurn("t", follow, SamplingParams(max_tokens=4)))
    assert same.usage.cached_tokens > 0
    assert other.usage.cached_tokens == 0 and without.usage.cached_tokens == 0
    keys = [service.conversations.content_keys("t", t.key_messages)[0] for t in (
        tool_turn(messages), tool_turn(messages, tools=TOOLS[::-1]),
        ChatTurn("t", messages, SamplingParams()))]
    assert len(set(keys)) == 3
