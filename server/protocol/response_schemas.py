"""The shapes /v1/responses answers with, for the OpenAPI schema: the routes build plain dicts
(server/protocol/response_objects.py), these models say what those dicts hold so a client or a
fuzzer can check them. Extra keys are allowed, as in OpenAI's own objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class OutputText(_Open):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class MessageItem(_Open):
    id: str
    type: Literal["message"]
    status: str
    role: str
    content: list[OutputText]


class FunctionCallItem(_Open):
    id: str
    type: Literal["function_call"]
    status: str
    call_id: str
    name: str
    arguments: str


class ResponseUsage(_Open):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(_Open):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[MessageItem | FunctionCallItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float
    usage: ResponseUsage | None
    metadata: dict[str, str]


class ResponseDeleted(_Open):
    id: str
    object: Literal["response"]
    deleted: bool


class InputItemList(_Open):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
