"""POST /v1/responses: the request and its input items as the chat template takes them (in the
shapes of openai-python's `types/responses`). Tools, tool_choice and text.format become the same
output constraint as on chat completions (server/protocol/tools.py)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from server.chat_turn import ChatTurn
from server.errors import APIError, bad_request
from server.protocol.chat import ROLE_FOR_TEMPLATE
from server.protocol.common import Limits, OpenAIModel, SamplingFields
from server.protocol.tools import (
    FunctionDefinition,
    FunctionName,
    JsonSchemaFormat,
    NamedToolChoice,
    OutputConstraint,
    ResponseFormat,
    ToolDefinition,
    output_constraint,
)

MAX_RESPONSE_ID = 256
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits
TEXT_PART_TYPES = {"input_text", "output_text", "text"}
# chat completions' names of the fields a constraint error may name -> this API's names
_PARAMS = (("response_format.json_schema", "text.format"), ("response_format", "text.format"),
           (".function.", "."))


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


class FunctionTool(OpenAIModel):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, max_length=64)
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
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None

    def to_turn(self, tenant: str, limits: Limits, request_id: str) -> ChatTurn:
        self._check_supported(limits)
        constraint = self.constraint()
        if constraint.grammar is not None and self.ignore_eos:
            raise bad_request("ignore_eos cannot be combined with tools or text.format",
                              "ignore_eos")
        params = self.sampling_params(self.max_output_tokens, limits, None)
        if constraint.grammar is not None:
            params = replace(params, grammar=constraint.grammar)
        return ChatTurn(tenant=tenant, messages=self.template_messages(), params=params,
                        stop=self.stop_strings(), request_id=request_id,
                        tools=constraint.tools, tool_call_mode=constraint.tool_call_mode)

    def constraint(self) -> OutputConstraint:
        """Tools, tool_choice and text.format as chat completions' fields, checked there."""
        try:
            return output_constraint(self._tool_definitions(), self._tool_choice(),
                                     self.parallel_tool_calls, self._response_format())
        except APIError as e:
            for theirs, ours in _PARAMS:
                e.param = e.param and e.param.replace(theirs, ours)
                e.message = e.message.replace(theirs, ours)
            raise

    def _tool_definitions(self) -> list[ToolDefinition] | None:
        if not self.tools:
            return None
        out = []
        for i, tool in enumerate(self.tools):
            if tool.type != "function":
                raise _unsupported(f"tools[{i}]: tools of type {tool.type!r} are not supported "
                                   "(function tools only)", f"tools.{i}.type")
            if tool.name is None:
                raise bad_request(f"missing required parameter: tools[{i}].name",
                                  f"tools.{i}.name", "missing_required")
            out.append(ToolDefinition(type="function", function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.parameters,
                strict=tool.strict)))
        return out

    def _tool_choice(self) -> str | NamedToolChoice | None:
        choice = self.tool_choice
        if not isinstance(choice, dict):
            return choice
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise _unsupported("tool_choice: a mode (none, auto, required) or "
                               '{"type": "function", "name": ...}', "tool_choice")
        return NamedToolChoice(type="function", function=FunctionName(name=choice["name"]))

    def _response_format(self) -> ResponseFormat | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type != "json_schema":
            return None if fmt is None else ResponseFormat(type=fmt.type)
        if fmt.name is None:
            raise bad_request("missing required parameter: text.format.name",
                              "text.format.name", "missing_required")
        return ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(
            name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict))

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
        message, then every input item (function calls join the assistant message before them,
        as the model wrote them; a call's output is a tool message). After a previous response
        the earlier instructions are in its state already; new ones are added (a state cannot
        drop what it was fed)."""
        messages = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        for i, item in enumerate(self.items()):
            if item.type == "function_call":
                call = {"id": _required(i, item.call_id, "call_id"), "type": "function",
                        "function": {"name": _required(i, item.name, "name"),
                                     "arguments": _required(i, item.arguments, "arguments")}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif item.type == "function_call_output":
                messages.append({"role": "tool",
                                 "tool_call_id": _required(i, item.call_id, "call_id"),
                                 "content": _required(i, _text_of(i, item.output, "output"),
                                                      "output")})
            elif item.type == "message":
                role = _required(i, item.role, "role")
                messages.append({"role": ROLE_FOR_TEMPLATE.get(role, role),
                                 "content": _required(i, _text_of(i, item.content, "content"),
                                                      "content")})
            else:
                raise _unsupported(f"input[{i}]: items of type {item.type!r} are not supported",
                                   f"input.{i}.type")
        return messages

    def input_items(self) -> list[dict]:
        """The input as OpenAI lists it (`GET /v1/responses/{id}/input_items`): every item
        with an id and a status."""
        out = []
        for i, item in enumerate(self.items()):
            if item.type == "function_call":
                out.append({"id": item.id or new_item_id("fc"), "type": "function_call",
                            "status": "completed", "call_id": item.call_id, "name": item.name,
                            "arguments": item.arguments})
            elif item.type == "function_call_output":
                out.append({"id": item.id or new_item_id("fco"),
                            "type": "function_call_output", "status": "completed",
                            "call_id": item.call_id,
                            "output": _text_of(i, item.output, "output")})
            elif item.role == "assistant":
                out.append({"id": item.id or new_item_id("msg"), "type": "message",
                            "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "annotations": [],
                                         "text": _text_of(i, item.content, "content")}]})
            else:
                out.append({"id": item.id or new_item_id("msg"), "type": "message",
                            "role": item.role, "status": "completed",
                            "content": [{"type": "input_text",
                                         "text": _text_of(i, item.content, "content")}]})
        return out


def _unsupported(message: str, param: str) -> APIError:
    return bad_request(message, param, "unsupported_parameter")


def _required(i: int, value, field: str):
    if value is None:
        raise bad_request(f"missing required parameter: input[{i}].{field}",
                          f"input.{i}.{field}", "missing_required")
    return value


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
