"""`response_format` through the official `openai` client against a real server: every output
parses and validates against its schema whatever the seed, streamed or not; what cannot be
enforced is a 400 naming it, never an unconstrained generation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

# bounded (lengths, ranges, item counts), so that a model that never saw JSON still ends
SCHEMAS = {
    "nested objects": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "address": {"type": "object", "additionalProperties": False,
                        "properties": {"city": {"type": "string", "maxLength": 12},
                                       "zip": {"type": "integer", "minimum": 1000,
                                               "maximum": 9999}},
                        "required": ["city", "zip"]},
        },
        "required": ["name", "address"],
    },
    "arrays of enums": {
        "type": "object", "additionalProperties": False,
        "properties": {"colours": {"type": "array", "minItems": 1, "maxItems": 4,
                                   "items": {"enum": ["red", "green", "blue"]}},
                       "ok": {"type": "boolean"}},
        "required": ["colours", "ok"],
    },
    "optional fields and numbers": {
        "type": "object", "additionalProperties": False,
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "note": {"type": "string", "maxLength": 10}},
        "required": ["id"],
    },
    "array of objects": {
        "type": "array", "maxItems": 3,
        "items": {"type": "object", "additionalProperties": False,
                  "properties": {"kind": {"enum": ["cat", "dog"]},
                                 "age": {"type": "integer", "minimum": 0, "maximum": 30}},
                  "required": ["kind", "age"]},
    },
    "anyOf and const": {
        "anyOf": [{"type": "object", "additionalProperties": False,
                   "properties": {"type": {"const": "point"},
                                  "x": {"type": "integer", "minimum": -9, "maximum": 9}},
                   "required": ["type", "x"]},
                  {"type": "string", "maxLength": 8}],
    },
}


def schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema",
            "json_schema": {"name": name.replace(" ", "_"), "schema": schema, "strict": True}}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_seed_gives_json_that_validates(client, name):
    schema = SCHEMAS[name]

    def ask(seed: int):
        return client.chat.completions.create(
            model=MODEL_NAME, messages=[user(unique("Answer in JSON."))], temperature=1.0,
            seed=seed, n=3, max_tokens=300, response_format=schema_format(name, schema))

    with ThreadPoolExecutor(4) as pool:  # concurrent: the rows share decode steps
        responses = list(pool.map(ask, range(4)))
    outputs = [c for r in responses for c in r.choices]
    assert len(outputs) == 12
    for choice in outputs:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_mode_gives_an_object(client):
    response = client.chat.completions.create(
        model=MODEL_NAME, messages=[user("Give me a JSON object.")], temperature=0.0,
        max_tokens=200, response_format={"type": "json_object"})
    content = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert content.startswith("{")


def test_streamed_json_joins_into_the_same_document(client):
    fields = dict(model=MODEL_NAME, messages=[user(unique("JSON, please."))], temperature=0.0,
                  max_tokens=300, response_format=schema_format("x", SCHEMAS["nested objects"]))
    whole = client.chat.completions.create(**fields).choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **fields)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), SCHEMAS["nested objects"])


def test_a_json_reply_is_a_stored_turn_like_any(client):
    messages = [user(unique("Describe a pet in JSON."))]
    fields = dict(model=MODEL_NAME, temperature=0.0, max_tokens=300,
                  response_format=schema_format("pets", SCHEMAS["array of objects"]))
    first = client.chat.completions.create(messages=messages, **fields)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 user("Another one.")]
    second = client.chat.completions.create(messages=messages, **fields)
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens
    jsonschema.validate(json.loads(second.choices[0].message.content),
                        SCHEMAS["array of objects"])


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "object", "not": {"required": ["a"]}}, "not"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"$ref": "#/definitions/missing"}, "missing"),
])
def test_unsupported_schema_features_are_400s_naming_them(client, schema, keyword):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], max_tokens=5,
                                       response_format=schema_format("bad", schema))
    error = caught.value.body
    assert error["param"] == "response_format.json_schema" and keyword in error["message"]
    assert error["code"] == "unsupported_parameter"


@pytest.mark.parametrize("response_format, param", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "maximum": 99}}}, None),  # a bare integer
])
def test_response_format_shapes(client, response_format, param):
    call = dict(model=MODEL_NAME, messages=[user("x")], max_tokens=8,
                response_format=response_format)
    if param is None:
        content = client.chat.completions.create(**call).choices[0].message.content
        assert content.lstrip("-").isdigit()
        return
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**call)
    assert caught.value.body["param"] == param
