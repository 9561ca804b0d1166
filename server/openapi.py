"""What the OpenAPI schema says beyond the routes' own models: every refusal in OpenAI's error
shape with the statuses a route can answer (FastAPI's default 422 is never sent: validation
errors are 400s), and streams as `text/event-stream`. A client generated from the schema, or a
fuzzer checking answers against it, then sees what the server really sends."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: a parameter, the JSON or the body",
    401: "Missing or unknown API key",
    404: "Unknown model, session or response",
    408: "The request body did not arrive in time",
    409: "Conflict: the session moved or exists already",
    413: "The request body is too large",
    429: "Overloaded: retry after Retry-After seconds",
    503: "Loading, draining, or the state store cannot answer: retry",
    504: "The request ran past its time limit",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}

# what any /v1 route may answer: bad input, a key, and a server that is loading or draining
API_ERRORS = (400, 401, 503)
# and a route that reads a body: its size and time limits
BODY_ERRORS = (*API_ERRORS, 408, 413)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented as an OpenAI error."""
    docs: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        doc: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status in (429, 503):
            doc["headers"] = _RETRY_AFTER
        docs[status] = doc
    return docs


# one Server-Sent Event: `data:` a JSON chunk (or [DONE]); `event:` names it on /v1/responses
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                            "id": {"type": "string"}, "retry": {"type": "integer"}}}


def streamed(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON, or Server-Sent Events with `stream: true`."""
    return {200: {"description": description,
                  "content": {"text/event-stream": {"schema": SSE_EVENT}}}}


def _operation(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _links_from_id(noun: str, param: str, base: str, operations) -> dict:
    """Links from an answer's `id` to the operations on `base` + a suffix path."""
    return {f"{verb}{noun}{suffix}": {
        "operationRef": _operation(f"{base}{{{param}}}{suffix_path}", method),
        "parameters": {param: "$response.body#/id"}}
        for verb, method, suffix, suffix_path in operations}


# what an answer's id opens next (OpenAPI links): a client, or a stateful fuzzer, can follow
# a created response or a forked session to the operations on it
_GET_DELETE = (("Get", "get", "", ""), ("Delete", "delete", "", ""))
LINKS = {
    ("/v1/responses", "post"): _links_from_id(
        "Response", "response_id", "/v1/responses/",
        (*_GET_DELETE, ("List", "get", "InputItems", "/input_items"))),
    ("/v1/sessions/{session_id}/fork", "post"): _links_from_id(
        "Session", "session_id", "/v1/sessions/",
        (*_GET_DELETE, ("Fork", "post", "Fork", "/fork"))),
}


def install_openapi(app: FastAPI) -> None:
    """The app's schema without FastAPI's 422 validation answers (this server sends 400s),
    with the links between operations."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            paths = schema.get("paths", {})
            for path in paths.values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for (path, method), links in LINKS.items():
                paths[path][method]["responses"]["200"]["links"] = links
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
