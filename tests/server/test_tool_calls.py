"""Tool calling through the official `openai` client against a real server: calls in OpenAI's
shape (streamed and not, reassembled by the client's stream helpers), arguments that validate
against their function's schema, tool results continued from the stored state with the tokens
of a full prefill, and 400s for what cannot be served."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
SQUARE = {"type": "function", "function": {
    "name": "square", "description": "Square of a whole number.",
    "parameters": {"type": "object",
                   "properties": {"number": {"type": "integer", "minimum": 0, "maximum": 99}},
                   "required": ["number"]}}}
TOOLS = [WEATHER, SQUARE]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=120)



def assert_valid_calls(message, names=None):
    assert message.tool_calls and message.content is None
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_required_gives_calls_whose_arguments_validate(client):
    for seed in range(4):
        response = client.chat.completions.create(
            model=MODEL_NAME, messages=[user(unique("What is the weather in Porto?"))],
            tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, max_tokens=200)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message)


def test_a_named_function_is_the_one_called_and_parallel_false_makes_one_call(client):
    response = client.chat.completions.create(
        messages=[user(unique("Square 12 for me."))], tools=TOOLS, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "square"}}, **GREEDY)
    message = response.choices[0].message
    assert_valid_calls(message, {"square"})
    assert len(message.tool_calls) == 1


def test_streamed_calls_are_openais_deltas_and_the_helper_reassembles_them(client):
    fields = dict(messages=[user(unique("What is the weather in Lisbon?"))], tools=TOOLS,
                  tool_choice="required", **GREEDY)
    whole = client.chat.completions.create(**fields).choices[0].message
    chunks = list(client.chat.completions.create(stream=True, **fields))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == whole.tool_calls[0].function.name
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert arguments == whole.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(**fields) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion().choices[0]
    assert "tool_calls.function.arguments.done" in events
    assert final.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]


def test_a_tool_result_continues_the_stored_state_and_says_what_a_full_prefill_says(
        client, full_prefill_server):
    plain = full_prefill_server.client()
    messages = [{"role": "system", "content": "You are brief."},
                user(unique("What is the weather in Porto?"))]
    call = client.chat.completions.create(messages=messages, tools=TOOLS,
                                          tool_choice="required", **GREEDY)
    assert_valid_calls(call.choices[0].message)
    # the assistant message exactly as the client library hands it back
    messages += [call.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.choices[0].message.tool_calls[0].id,
                  "content": json.dumps({"forecast": "sunny", "temperature": 21})}]
    reused = client.chat.completions.create(messages=messages, tools=TOOLS, **GREEDY)
    fresh = plain.chat.completions.create(messages=messages, tools=TOOLS, **GREEDY)
    assert reused.usage.prompt_tokens == fresh.usage.prompt_tokens
    assert reused.usage.prompt_tokens_details.cached_tokens >= (
        call.usage.prompt_tokens + call.usage.completion_tokens)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert reused.choices[0].message == fresh.choices[0].message
    # other tools: another prompt, so nothing stored applies
    other = client.chat.completions.create(messages=messages, tools=[SQUARE], **GREEDY)
    assert other.usage.prompt_tokens_details.cached_tokens == 0


def test_auto_answers_with_text_or_calls_and_none_never_calls(client):
    for choice in ("auto", "none"):
        for question in ("Hello!", "What is the weather in Oslo?"):
            response = client.chat.completions.create(
                messages=[user(unique(question))], tools=TOOLS, tool_choice=choice, **GREEDY)
            message = response.choices[0].message
            if message.tool_calls:
                assert choice == "auto" and response.choices[0].finish_reason == "tool_calls"
                assert_valid_calls(message)
            else:
                assert not message.content.startswith("<")


BAD = {
    "tool_choice without tools": (dict(tool_choice="required"), "tool_choice"),
    "unknown named function": (dict(tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "nope"}}), "tool_choice"),
    "bad function name": (dict(tools=[{"type": "function", "function": {"name": "a b"}}]),
                          "tools.0.function.name"),
    "duplicate function": (dict(tools=[WEATHER, WEATHER]), "tools.1.function.name"),
    "unsupported parameters": (dict(tools=[SQUARE, {"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "not": {}}}}]),
        "tools.1.function.parameters"),
    "non-object parameters": (dict(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "string"}}}]), "tools.0.function.parameters"),
    "tool message without id": (dict(tools=TOOLS, messages=[
        user("x"), {"role": "tool", "content": "{}"}]), "messages.1.tool_call_id"),
    "ignore_eos with tools": (dict(tools=TOOLS, extra_body={"ignore_eos": True}),
                              "ignore_eos"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_what_cannot_be_served_is_a_400_naming_it(client, name):
    fields, param = BAD[name]
    fields = {"messages": [user("x")], **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, max_tokens=5, **fields)
    assert caught.value.body["param"] == param, caught.value.body
