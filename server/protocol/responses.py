"""POST /v1/responses: the request, its input items as template messages, and the response
object with its output items and usage, in the shapes OpenAI returns (openai-python's
`types/responses`)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import Field

from server.chat_service import ChatTurn
from server.errors import APIError, bad_request
from server.protocol.chat import ROLE_FOR_TEMPLATE
from server.protocol.common import Limits, OpenAIModel, SamplingFields
from server.turn_stream import TurnStream

MAX_RESPONSE_ID = 256
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits
TEXT_PART_TYPES = {"input_text", "output_text", "text"}


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_not_found(response_id: str, param: str | None = None) -> APIError:
    """OpenAI's 404 for a response id it does not know (unknown, expired, deleted, another
    tenant's: the same answer, so an id of another tenant cannot be probed)."""
    return APIError(404, f"Response with id '{response_id}' not found.",
                    "invalid_request_error", param, None)


class InputContent(OpenAIModel):
    type: str
    text: str | None = None


class InputItem(OpenAIModel):
    """One item of `input`: a message (its `type` may be left out), a function_call or a
    function_call_output. Checked per type when turned into a template message."""

    type: str = "message"
    id: str | None = Field(None, max_length=MAX_RESPONSE_ID)
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[InputContent] | None = None
    call_id: str | None = Field(None, max_length=MAX_RESPONSE_ID)
    name: str | None = Field(None, max_length=256)
    arguments: str | None = None
    output: str | list[InputContent] | None = None
    status: str | None = None


class TextFormat(OpenAIModel):
    type: str = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(OpenAIModel):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponseRequest(SamplingFields):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=MAX_RESPONSE_ID)
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None

    def to_turn(self, tenant: str, limits: Limits, request_id: str) -> ChatTurn:
        self._check_supported(limits)
        params = self.sampling_params(self.max_output_tokens, limits, None)
        return ChatTurn(tenant=tenant, messages=self.template_messages(), params=params,
                        stop=self.stop_strings(), request_id=request_id)

    def _check_supported(self, limits: Limits) -> None:
        if self.n != 1:
            raise bad_request("n: one output per response", "n")
        if self.max_output_tokens is not None and self.max_output_tokens > limits.max_output_tokens:
            raise bad_request(f"max_output_tokens must be <= {limits.max_output_tokens}",
                              "max_output_tokens")
        if self.background:
            raise _unsupported("background responses are not supported", "background")
        if self.conversation is not None:
            raise _unsupported("conversations are not supported: continue a response with "
                               "previous_response_id", "conversation")
        if self.tools:
            raise _unsupported("tools are not supported by this server yet", "tools")
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type != "text":
            raise _unsupported(f"text.format {fmt.type!r} is not supported by this server yet",
                               "text.format")
        if self.metadata is not None:
            if len(self.metadata) > MAX_METADATA_PAIRS:
                raise bad_request(f"metadata: at most {MAX_METADATA_PAIRS} pairs", "metadata")
            if any(len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE
                   for k, v in self.metadata.items()):
                raise bad_request(f"metadata: keys of at most {MAX_METADATA_KEY} characters, "
                                  f"values of at most {MAX_METADATA_VALUE}", "metadata")

    def items(self) -> list[InputItem]:
        if isinstance(self.input, str):
            return [InputItem(role="user", content=self.input)]
        if not self.input:
            raise bad_request("input: at least one item", "input")
        return self.input

    def template_messages(self) -> list[dict]:
        """What the model is fed, as the chat template takes it: the instructions as a system
        message, then every input item. After a previous response the earlier instructions
        are in its state already; new ones are added (a state cannot drop what it was fed)."""
        messages = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        for i, item in enumerate(self.items()):
            messages.append(_template_message(i, item))
        return messages

    def input_items(self) -> list[dict]:
        """The input as OpenAI lists it (`GET /v1/responses/{id}/input_items`): every item
        with an id and a status."""
        out = []
        for i, item in enumerate(self.items()):
            text = _text_of(i, item.content, "content") if item.type == "message" else None
            if item.type == "message" and item.role == "assistant":
                out.append(message_item(item.id or new_item_id("msg"), text or "", "completed"))
            elif item.type == "message":
                out.append({"id": item.id or new_item_id("msg"), "type": "message",
                            "role": item.role, "status": "completed",
                            "content": [{"type": "input_text", "text": text or ""}]})
        return out


def _unsupported(message: str, param: str) -> APIError:
    return bad_request(message, param, "unsupported_parameter")


def _text_of(i: int, content: str | list[InputContent] | None, field: str) -> str | None:
    """A content field as one string: text parts joined (images and files refused)."""
    if content is None or isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PART_TYPES or part.text is None:
            raise bad_request(f"input[{i}].{field}[{j}]: content part type {part.type!r} is "
                              "not supported (text only)", f"input.{i}.{field}.{j}.type")
        texts.append(part.text)
    return "\n".join(texts)


def _template_message(i: int, item: InputItem) -> dict:
    if item.type != "message":
        raise _unsupported(f"input[{i}]: items of type {item.type!r} are not supported by this "
                           "server yet", f"input.{i}.type")
    if item.role is None:
        raise bad_request(f"missing required parameter: input[{i}].role", f"input.{i}.role",
                          "missing_required")
    text = _text_of(i, item.content, "content")
    if text is None:
        raise bad_request(f"missing required parameter: input[{i}].content",
                          f"input.{i}.content", "missing_required")
    return {"role": ROLE_FOR_TEMPLATE.get(item.role, item.role), "content": text}


# the response object -------------------------------------------------------------------------


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """An assistant message item; `text` None: just opened, no content part yet."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def response_usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


class ResponseDraft:
    """One response being made: its id, its item ids, and the response object at each stage
    (created, and completed from the finished turn, built once so the stored object, the
    returned one and the streamed one are the same)."""

    def __init__(self, body: ResponseRequest, model: str):
        self.body, self.model = body, model
        self.id = new_item_id("resp")
        self.message_id = new_item_id("msg")
        self.created_at = int(time.time())
        self.is_stored = False
        self._completed: dict | None = None

    def snapshot(self, status: str, output: list[dict], usage: dict | None = None,
                 error: dict | None = None, incomplete: str | None = None) -> dict:
        body = self.body
        fmt = body.text.format if body.text is not None and body.text.format else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None, "model": self.model, "output": output,
            "parallel_tool_calls": (True if body.parallel_tool_calls is None
                                    else body.parallel_tool_calls),
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": body.store,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": {"type": fmt.type} if fmt else {"type": "text"}},
            "tool_choice": body.tool_choice or "auto", "tools": body.tools or [],
            "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
            "usage": usage, "user": body.user, "metadata": body.metadata or {},
        }

    def created(self) -> dict:
        return self.snapshot("in_progress", [])

    def completed(self, stream: TurnStream) -> dict:
        """The finished response (status completed, or incomplete at max_output_tokens)."""
        if self._completed is None:
            choice, u = stream.choices[0], stream.usage
            is_cut = choice.finish_reason == "length"
            status = "incomplete" if is_cut else "completed"
            output = [message_item(self.message_id, choice.text, status)]
            self._completed = self.snapshot(
                status, output, response_usage(u.prompt_tokens, u.cached_tokens,
                                               u.completion_tokens),
                incomplete="max_output_tokens" if is_cut else None)
        return self._completed
