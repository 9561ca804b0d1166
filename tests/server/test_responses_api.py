"""The Responses API through the official `openai` client, against a real server on the real
Redis: response objects and streamed events in OpenAI's shapes; a chain of responses feeds only
each new input, whatever the history's length, and says what a full prefill of the whole
conversation says; branches; retrieve, delete and input items; 404s in OpenAI's shape."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.tokenizer import Tokenizer
from server.turn_encoding import TurnEncoder
from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_output_tokens=12)



@pytest.fixture(scope="module")
def encoder():
    return TurnEncoder(Tokenizer.from_dir(DEFAULT_MODEL_DIR))


def reply_of(response) -> dict:
    return {"role": "assistant", "content": response.output_text}


def fresh_reply(server, messages: list[dict]) -> str:
    """The greedy reply to the whole conversation, fed from scratch."""
    done = server.client().chat.completions.create(
        model=MODEL_NAME, messages=messages, temperature=0.0, max_tokens=12)
    return done.choices[0].message.content


def test_a_response_has_openais_shape_and_is_retrieved_as_it_was_returned(client):
    said = unique("My name is Ingrid.")
    made = client.responses.create(input=said, instructions="Be brief.",
                                   metadata={"run": "shape"}, **GREEDY)
    assert made.object == "response" and made.id.startswith("resp_")
    assert made.status in ("completed", "incomplete") and made.error is None
    assert made.instructions == "Be brief." and made.metadata == {"run": "shape"}
    assert made.model == MODEL_NAME and made.store is True and made.previous_response_id is None
    (message,) = made.output
    assert (message.type, message.role, message.status) == ("message", "assistant", made.status)
    assert message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert made.output_text == message.content[0].text and made.output_text
    usage = made.usage
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    got = client.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    items = client.responses.input_items.list(made.id)  # the instructions are not an item
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [
        ("message", "user", said)]
    assert items.data[0].id.startswith("msg_") and items.first_id == items.data[0].id


def test_a_chain_of_20_responses_never_refeeds_history(client, encoder, full_prefill_server):
    history: list[dict] = []
    previous = None
    for turn in range(20):
        new = [user(unique(f"Fact {turn}: my number is {turn * 7}.") if turn == 0
                    else f"Fact {turn}: my number is {turn * 7}.")]
        made = client.responses.create(input=new[0]["content"], previous_response_id=previous,
                                       **GREEDY)
        assert made.previous_response_id == previous
        usage = made.usage
        fed = usage.input_tokens - usage.input_tokens_details.cached_tokens
        if turn == 0:
            assert usage.input_tokens_details.cached_tokens == 0
        else:  # only the new input, and the state covers the whole conversation before it
            assert fed == len(encoder.after_unknown(new).ids), turn
            assert usage.input_tokens_details.cached_tokens == len(
                encoder.tokenizer.encode_chat(history, add_generation_prompt=False)), turn
        if turn in (1, 19):  # the same words as the whole conversation fed from scratch
            assert made.output_text == fresh_reply(full_prefill_server, [*history, *new])
        history += [*new, reply_of(made)]
        previous = made.id


def test_two_branches_of_one_response_each_continue_only_their_own_line(
        client, encoder, full_prefill_server):
    root = client.responses.create(input=unique("My pet is a ferret."), **GREEDY)
    base = [user(client.responses.input_items.list(root.id).data[0].content[0].text),
            reply_of(root)]
    lines = {}
    for question in ("What is my pet?", "Tell me a number."):
        made = client.responses.create(input=question, previous_response_id=root.id, **GREEDY)
        assert made.usage.input_tokens_details.cached_tokens == len(
            encoder.tokenizer.encode_chat(base, add_generation_prompt=False))
        lines[question] = (made, [*base, user(question), reply_of(made)])
    for made, messages in lines.values():
        follow = client.responses.create(input="And then?", previous_response_id=made.id,
                                         **GREEDY)
        assert follow.output_text == fresh_reply(full_prefill_server,
                                                 [*messages, user("And then?")])
    assert client.responses.retrieve(root.id).id == root.id  # the parent stays for more


def test_streamed_events_are_openais_sequence_and_add_up_to_the_stored_response(client):
    first = client.responses.create(input=unique("I live in Bergen."), **GREEDY)
    events = list(client.responses.create(input="Where do I live?", stream=True,
                                          previous_response_id=first.id, **GREEDY))
    kinds = [e.type for e in events]
    last = "response.completed" if kinds[-1] == "response.completed" else "response.incomplete"
    deltas = kinds.count("response.output_text.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", last]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas > 0 and text == final.output_text == events[-4].text
    assert {e.item_id for e in events[3:-2]} == {final.output[0].id}
    assert final.usage.input_tokens_details.cached_tokens > 0
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_the_stream_helper_reassembles_the_response(client):
    # room for the whole reply: the helper needs response.completed, and a reply cut by
    # max_output_tokens ends with response.incomplete, as OpenAI's does
    whole = {**GREEDY, "max_output_tokens": 256}
    with client.responses.stream(input=unique("Say hello."), **whole) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and "".join(texts) == final.output_text


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(client):
    events = list(client.responses.create(input=unique("Tell me a long story."), stream=True,
                                          **{**GREEDY, "max_output_tokens": 2}))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_a_response_made_with_store_false_cannot_be_retrieved_or_continued(client):
    made = client.responses.create(input=unique("Not kept."), store=False, **GREEDY)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(input="Hi", previous_response_id=made.id, **GREEDY)
    assert e.value.body["param"] == "previous_response_id"


def test_unknown_and_deleted_ids_are_404_in_openais_shape(client, server):
    made = client.responses.create(input=unique("Delete me."), **GREEDY)
    assert client.responses.delete(made.id) is None  # the client returns nothing on success
    for response_id in ("resp_unknown", made.id):
        for call in (client.responses.retrieve, client.responses.delete,
                     client.responses.input_items.list):
            with pytest.raises(openai.NotFoundError) as e:
                call(response_id)
            assert e.value.body == {"message": f"Response with id '{response_id}' not found.",
                                    "type": "invalid_request_error", "param": None,
                                    "code": None}
        with pytest.raises(openai.NotFoundError) as e:
            client.responses.create(input="Hi", previous_response_id=response_id, **GREEDY)
        assert e.value.body["param"] == "previous_response_id"
    raw = httpx.get(f"{server.url}/v1/responses/resp_unknown")
    assert raw.status_code == 404 and set(raw.json()) == {"error"}


def test_input_items_keep_ids_and_page_both_ways(client):
    made = client.responses.create(input=[
        {"role": "developer", "content": "Answer in one word."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": unique("Colour?")}]},
        {"role": "assistant", "content": "Teal."},
        {"role": "user", "content": "Again?"}], **GREEDY)
    items = list(client.responses.input_items.list(made.id, order="asc"))
    assert [i.role for i in items] == ["developer", "user", "assistant", "user"]
    assert items[2].type == "message" and items[2].content[0].type == "output_text"
    assert len({i.id for i in items}) == 4
    newest_first = client.responses.input_items.list(made.id, limit=3)
    assert [i.id for i in newest_first.data] == [i.id for i in items[::-1][:3]]
    assert newest_first.has_more is True
    rest = client.responses.input_items.list(made.id, limit=3, after=newest_first.last_id)
    assert [i.id for i in rest.data] == [items[0].id] and rest.has_more is False


@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": "Hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input.0.type"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x",
                                         "schema": {"type": "string", "format": "uuid4x"}}}},
     "text.format"),
    ({"input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "format": "uuid4x"}}}}]},
     "tools.0.parameters"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.content.0.type"),
    ({"input": [{"type": "message", "content": "no role"}]}, "input.0.role"),
    ({"input": "Hi", "max_output_tokens": 10**6}, "max_output_tokens"),
    ({"input": "Hi", "background": True}, "background"),
    ({"input": "Hi", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
])
def test_bad_requests_are_400s_that_name_the_parameter(server, body, param):
    response = httpx.post(f"{server.url}/v1/responses", json={"model": MODEL_NAME, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 16}}}}
TOOLS = [{"type": "function", **WEATHER}]  # the Responses API's flat shape
CHAT_TOOLS = [{"type": "function", "function": WEATHER}]  # chat completions' shape
CALLING = dict(GREEDY, max_output_tokens=96, parallel_tool_calls=False)


def fresh_answer(server, messages: list[dict]) -> str:
    """The greedy reply, with the tools, to the whole conversation fed from scratch."""
    done = server.client().chat.completions.create(
        model=MODEL_NAME, messages=messages, tools=CHAT_TOOLS, tool_choice="none",
        temperature=0.0, max_tokens=12)
    return done.choices[0].message.content


def as_chat_call(item) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": item.call_id, "type": "function",
         "function": {"name": item.name, "arguments": item.arguments}}]}


def test_a_tool_call_round_trip_through_function_call_output(client, encoder,
                                                             full_prefill_server):
    asked = unique("What is the weather in Porto?")
    called = client.responses.create(input=asked, tools=TOOLS, tool_choice="required",
                                     **CALLING)
    (call,) = called.output
    assert (call.type, call.name, call.status) == ("function_call", "get_weather", "completed")
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}
    result = {"forecast": "sunny", "temperature": 21}
    output = {"type": "function_call_output", "call_id": call.call_id,
              "output": json.dumps(result)}
    answered = client.responses.create(input=[output], previous_response_id=called.id,
                                       tools=TOOLS, tool_choice="none", **GREEDY)
    conversation = [user(asked), as_chat_call(call),
                    {"role": "tool", "tool_call_id": call.call_id, "content": output["output"]}]
    # the call survived the chain: the state covers it exactly, only the output was fed ...
    usage = answered.usage
    assert usage.input_tokens_details.cached_tokens == len(encoder.tokenizer.encode_chat(
        conversation[:2], add_generation_prompt=False, tools=CHAT_TOOLS))
    assert usage.input_tokens - usage.input_tokens_details.cached_tokens == len(
        encoder.after_unknown(conversation[2:], tools=CHAT_TOOLS).ids)
    # ... and the answer is the answer to the whole conversation fed from scratch
    assert answered.output_text == fresh_answer(full_prefill_server, conversation)
    # the stored objects keep the call and its output
    assert client.responses.retrieve(called.id).output[0].model_dump() == call.model_dump()
    (item,) = client.responses.input_items.list(answered.id).data
    assert (item.type, item.call_id, item.output) == (
        "function_call_output", call.call_id, output["output"])


def test_a_history_with_function_call_items_is_the_same_conversation(client,
                                                                     full_prefill_server):
    asked = unique("Weather in Lyon?")
    call = {"type": "function_call", "call_id": "call_abc", "name": "get_weather",
            "arguments": '{"city": "Lyon"}'}
    output = {"type": "function_call_output", "call_id": "call_abc",
              "output": '{"forecast": "fog"}'}
    done = client.responses.create(input=[user(asked), call, output], tools=TOOLS,
                                   tool_choice="none", store=False, **GREEDY)
    conversation = [user(asked), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function",
         "function": {"name": "get_weather", "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": output["output"]}]
    assert done.output_text == fresh_answer(full_prefill_server, conversation)


def test_streamed_function_calls_are_openais_events(client):
    events = list(client.responses.create(input=unique("Weather in Kyoto?"), tools=TOOLS,
                                          tool_choice="required", stream=True, **CALLING))
    kinds = [e.type for e in events]
    pieces = kinds.count("response.function_call_arguments.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * pieces,
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    (call,) = final.output
    assert events[2].item.type == "function_call" and events[2].item.id == call.id
    assert events[2].item.arguments == "" and events[2].item.status == "in_progress"
    joined = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert joined == events[-3].arguments == call.arguments and json.loads(joined)
    assert events[-2].item.model_dump() == call.model_dump()
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_text_format_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "additionalProperties": False,
              "properties": {"name": {"type": "string", "maxLength": 12},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120},
                             "pet": {"enum": ["cat", "dog", "ferret"]}},
              "required": ["name", "age", "pet"]}
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": schema,
                      "strict": True}}
    for seed in range(3):
        made = client.responses.create(input=unique("A person as JSON."), text=fmt,
                                       model=MODEL_NAME, temperature=1.0,
                                       max_output_tokens=80, extra_body={"seed": seed})
        assert made.status == "completed"
        jsonschema.validate(json.loads(made.output_text), schema)
        assert made.text.format.type == "json_schema" and made.text.format.name == "person"
