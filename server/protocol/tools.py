"""OpenAI's tool and structured-output fields (chat completions; the Responses API reuses
them), and their conversion into what a turn needs: the tool definitions the chat template
renders, the grammar the output must match (server/grammar.py), and how to parse the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from server.errors import bad_request
from server.grammar import (
    EMPTY_PARAMETERS,
    FunctionSpec,
    UnsupportedGrammar,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from server.protocol.common import OpenAIModel

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128


class FunctionDefinition(OpenAIModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(OpenAIModel):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


@dataclass(frozen=True)
class OutputConstraint:
    """What a request's tools and format ask of the turn."""

    tools: list[dict] | None  # function definitions for the chat template (None: no tools)
    grammar: str | None  # the output's grammar (None: free text)
    tool_call_mode: str | None  # "auto" (text or calls), "calls" (calls only), None (no calls)


def output_constraint(tools: list[ToolDefinition] | None, tool_choice: ToolChoice | None,
                      parallel_tool_calls: bool | None,
                      response_format: ResponseFormat | None) -> OutputConstraint:
    """The constraint of a request (400 naming the field for what cannot be enforced)."""
    try:
        text_grammar = format_grammar(response_format)
        if not tools:
            if tool_choice not in (None, "none"):
                raise bad_request("tool_choice needs tools", "tool_choice")
            return OutputConstraint(None, text_grammar, None)
        functions = function_specs(tools)
        definitions = [tool.model_dump(exclude_none=True) for tool in tools]
        choice = tool_choice or "auto"
        if isinstance(choice, NamedToolChoice):
            choice = choice.function.name
        if choice == "none":  # tools shown, never called: text (never a call's opening)
            grammar = text_grammar or tool_call_grammar([], "none")
            return OutputConstraint(definitions, grammar, None)
        text_schema = _format_schema(response_format)
        grammar = tool_call_grammar(functions, choice, parallel_tool_calls is not False,
                                    text_schema=text_schema)
        return OutputConstraint(definitions, grammar, "auto" if choice == "auto" else "calls")
    except UnsupportedGrammar as e:
        raise bad_request(str(e), e.param, "unsupported_parameter") from e


def function_specs(tools: list[ToolDefinition]) -> list[FunctionSpec]:
    if len(tools) > MAX_TOOLS:
        raise bad_request(f"tools: at most {MAX_TOOLS} functions", "tools")
    seen = set()
    specs = []
    for i, tool in enumerate(tools):
        name = tool.function.name
        if not FUNCTION_NAME.fullmatch(name):
            raise bad_request(f"tools[{i}].function.name must be 1-64 letters, digits, '_' or "
                              f"'-', got {name!r}", f"tools.{i}.function.name")
        if name in seen:
            raise bad_request(f"tools: two functions are named {name!r}",
                              f"tools.{i}.function.name")
        seen.add(name)
        specs.append(FunctionSpec(name, tool.function.parameters or EMPTY_PARAMETERS))
    return specs


def format_grammar(response_format: ResponseFormat | None) -> str | None:
    """The grammar of `response_format` (None for text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json_object_grammar()
    return json_schema_grammar(_format_schema(response_format), "response_format.json_schema")


def _format_schema(response_format: ResponseFormat | None) -> dict | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    spec = response_format.json_schema
    if spec is None:
        raise UnsupportedGrammar("response_format json_schema needs a json_schema object",
                                 "response_format.json_schema")
    return spec.schema_ if spec.schema_ is not None else {}
