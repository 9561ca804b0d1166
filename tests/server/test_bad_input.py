"""Every kind of bad input gets a 4xx in OpenAI's error shape, never a 500, never a hang; and
unknown OpenAI fields are accepted and ignored."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server_process import MODEL_NAME

OK_MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(**fields) -> dict:
    return {"model": MODEL_NAME, "messages": OK_MESSAGES, "max_tokens": 2, **fields}


def assert_error(response: httpx.Response, status: int, param: str | None = None,
                 code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


BAD_CHAT_BODIES = {
    "no model": ({"messages": OK_MESSAGES}, "model"),
    "no messages": ({"model": MODEL_NAME}, "messages"),
    "empty messages": (chat(messages=[]), "messages"),
    "messages not a list": (chat(messages="hi"), "messages"),
    "bad role": (chat(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
    "no content": (chat(messages=[{"role": "user"}]), "messages.0"),
    "content a number": (chat(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    "image part": (chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), "messages.0.content.0.type"),
    "temperature high": (chat(temperature=3), "temperature"),
    "temperature negative": (chat(temperature=-1), "temperature"),
    "temperature text": (chat(temperature="hot"), "temperature"),
    "top_p zero": (chat(top_p=0), "top_p"),
    "max_tokens zero": (chat(max_tokens=0), "max_tokens"),
    "max_tokens 2^63": (chat(max_tokens=2**63), "max_tokens"),
    "max_tokens over the limit": (chat(max_tokens=10**6), "max_tokens"),
    "n zero": (chat(n=0), "n"),
    "n ten thousand": (chat(n=10_000), "n"),
    "top_logprobs 21": (chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    "top_logprobs alone": (chat(top_logprobs=2), "top_logprobs"),
    "logit_bias not a token": (chat(logit_bias={"abc": 1}), "logit_bias"),
    "logit_bias out of vocab": (chat(logit_bias={"999999": 1}), "logit_bias"),
    "logit_bias too strong": (chat(logit_bias={"5": 1000}), "logit_bias"),
    "seventeen stop strings": (chat(stop=[f"s{i}" for i in range(17)]), "stop"),
    "stop a number": (chat(stop=5), "stop"),
    "seed 2^64": (chat(seed=2**64), "seed"),
    "presence_penalty 3": (chat(presence_penalty=3), "presence_penalty"),
    "empty session id": (chat(session_id=""), "session_id"),
    "long session id": (chat(session_id="x" * 300), "session_id"),
    "unknown response_format": (chat(response_format={"type": "xml"}), "response_format.type"),
    "tool without a function": (chat(tools=[{"type": "function"}]), "tools.0.function"),
    "unsupported schema": (chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"not": {}}}}), "response_format.json_schema"),
}


@pytest.mark.parametrize("name", list(BAD_CHAT_BODIES))
def test_bad_chat_bodies_are_400s_naming_the_parameter(http, name):
    body, param = BAD_CHAT_BODIES[name]
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


def test_malformed_json_and_non_objects_are_400s(http):
    for raw in (b"{", b"not json", b"[1, 2]", b"null", b'"text"', b""):
        response = http.post("/v1/chat/completions", content=raw,
                             headers={"content-type": "application/json"})
        assert_error(response, 400)


def test_unknown_model_is_a_404_model_not_found(http):
    response = http.post("/v1/chat/completions", json=chat(model="gpt-9"))
    assert_error(response, 404, "model", "model_not_found")
    assert_error(http.get("/v1/models/gpt-9"), 404, "model", "model_not_found")


def test_a_prompt_over_the_limit_is_a_400(http):
    long = [{"role": "user", "content": "word " * 70_000}]
    assert_error(http.post("/v1/chat/completions", json=chat(messages=long)), 400, "messages",
                 "context_length_exceeded")


def test_unknown_sessions_are_404s(http):
    for method, path in (("GET", "/v1/sessions/nope"), ("DELETE", "/v1/sessions/nope"),
                         ("POST", "/v1/sessions/nope/fork")):
        assert_error(http.request(method, path), 404, "session_id", "session_not_found")


def test_unknown_routes_and_methods_keep_the_shape(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def test_bad_completion_prompts_are_400s(http):
    base = {"model": MODEL_NAME, "max_tokens": 2}
    for prompt in (["one", "two"], [10**7], "", []):
        response = http.post("/v1/completions", json={**base, "prompt": prompt})
        assert_error(response, 400)
    assert_error(http.post("/v1/completions", json={**base, "prompt": "x", "suffix": "y"}),
                 400, "suffix")


def test_unknown_openai_fields_are_accepted_and_ignored(http):
    body = chat(store=False, metadata={"a": "b"}, service_tier="auto", parallel_tool_calls=True,
                reasoning_effort="low", prediction=None, modalities=["text"],
                some_future_field={"x": 1})
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_server_is_healthy_after_all_of_it(http):
    assert http.get("/health").status_code == 200
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200


def test_lone_surrogates_are_400s_wherever_they_hide(http):
    surrogate = "\ud800"
    bodies = [chat(messages=[{"role": "user", "content": f"hi {surrogate}"}]),
              chat(messages=[{"role": "user", "content": [{"type": "text",
                                                           "text": surrogate}]}]),
              chat(messages=[{"role": "user", "content": "hi", "name": surrogate}]),
              chat(stop=[surrogate]), chat(session_id=surrogate), chat(user=surrogate),
              {"model": MODEL_NAME, "prompt": surrogate, "max_tokens": 2}]
    for body in bodies:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        # json.dumps writes the lone surrogate as the escape "\ud800", as a client would
        assert_error(http.post(path, content=json.dumps(body),
                               headers={"content-type": "application/json"}), 400)


def test_a_lone_surrogate_is_refused_however_the_body_spells_it(http):
    """As an escape, as the bytes json.loads lets through, in UTF-16: a 400 naming the field;
    a surrogate pair (an emoji as escapes) is a character like any other."""
    escaped = json.dumps(chat(messages=[{"role": "user", "content": "hi \ud800"}]))
    raw = escaped.replace("\\ud800", "\ud800")
    as_bytes, in_utf16 = (raw.encode(codec, "surrogatepass") for codec in ("utf-8", "utf-16-le"))
    for content in (escaped.encode(), as_bytes, in_utf16):
        assert_error(http.post("/v1/chat/completions", content=content,
                               headers={"content-type": "application/json"}), 400,
                     param="messages.0.content")
    pair = json.dumps(chat(messages=[{"role": "user", "content": "hi \U0001F600"}]))
    assert "\\ud83d\\ude00" in pair
    assert http.post("/v1/chat/completions", content=pair,
                     headers={"content-type": "application/json"}).status_code == 200


def test_every_route_with_a_body_refuses_lone_surrogates():
    """The check lives on the routers (their route class), not on the models: a route added
    with a body must get it too, or surrogates reach the tokenizer, the keys and the logs."""
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    import server.routes
    from server.unicode_route import UnicodeCheckedRoute

    with_body = [route for info in pkgutil.iter_modules(server.routes.__path__)
                 for route in importlib.import_module(f"server.routes.{info.name}").router.routes
                 if isinstance(route, APIRoute) and route.body_field is not None]
    assert {r.path for r in with_body} >= {"/v1/chat/completions", "/v1/completions",
                                           "/v1/responses", "/v1/sessions/{session_id}/fork"}
    assert all(isinstance(r, UnicodeCheckedRoute) for r in with_body), [
        r.path for r in with_body if not isinstance(r, UnicodeCheckedRoute)]
