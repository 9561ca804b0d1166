"""What an API request constrains its output to, as an llguidance grammar (engine/constraints.py
enforces it): a JSON schema (`response_format`, `text.format`), any JSON object, or the tool-call
format of the chat template (`tools` + `tool_choice`).

JSON is compact and in one canonical layout (`{"a": 1, "b": [2, 3]}`: json.dumps' separators,
no other whitespace), the layout the model's chat template writes tool arguments in, so a tiny
model cannot wander off into whitespace. A schema llguidance cannot enforce is refused with the
reason (the keyword it does not implement), never generated unconstrained.

The tool-call format is the chat template's (training/train_tokenizer.py): calls one per line,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Porto"}}
    </tool_call>

`required` or a named function: the output is calls (one, or several with parallel tool calls)
whose arguments validate against their function's parameters. `auto`: either such calls or text
that does not start with `<` (so text is never a malformed call). server/tool_calls.py parses
the same format back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import llguidance

from engine.constraints import grammar_error

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CALL_OPEN, CALL_CLOSE, CALL_SEPARATOR = "<tool_call>\n", "\n</tool_call>", "\n"
NAME_KEY, ARGUMENTS_KEY = '{"name": ', ', "arguments": '  # around the name in a call's JSON
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


class UnsupportedGrammar(ValueError):
    """A schema or tool definition that cannot be enforced; `param` names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FunctionSpec:
    """One function a model may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: Mapping[str, Any]


def json_schema_grammar(schema: Mapping[str, Any], param: str = "response_format") -> str:
    """The grammar of JSON values that validate against `schema`; UnsupportedGrammar if
    llguidance refuses any part of it."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema(_with_layout(schema, param))
    _check(grammar, param)
    return grammar


def json_object_grammar() -> str:
    """Any JSON object (`response_format: {"type": "json_object"}`)."""
    return json_schema_grammar({"type": "object"})


def tool_call_grammar(functions: Sequence[FunctionSpec], choice: str = "auto",
                      parallel: bool = True, param: str = "tools",
                      text_schema: Mapping[str, Any] | None = None) -> str:
    """Calls of `functions` in the template's format. `choice`: "auto" (text or calls),
    "required" (calls), "none" (text only), or a function's name (calls of that one only).
    Text is free (but for a leading `<`) or, with `text_schema`, JSON of that schema."""
    for i, f in enumerate(functions):  # one at a time: the error names the function
        where = f"{param}.{i}.function.parameters"
        if f.parameters.get("type", "object") != "object":
            raise UnsupportedGrammar(f"{where}: arguments must be a JSON object (type "
                                     f"\"object\"), not {f.parameters.get('type')!r}", where)
        json_schema_grammar(f.parameters, where)
    if choice not in ("auto", "required", "none"):
        functions = [f for f in functions if f.name == choice]
        if not functions:
            raise UnsupportedGrammar(f"tool_choice names {choice!r}, which is not in tools",
                                     "tool_choice")
    lines = ["start: " + {"auto": "text | calls", "none": "text"}.get(choice, "calls")]
    if choice in ("auto", "none"):
        lines.append("text: /[^<][\\s\\S]*/" if text_schema is None else
                     f"text: %json {json.dumps(_with_layout(text_schema, 'response_format'))}")
    if choice != "none":
        names = " | ".join(f"fn_{i}" for i in range(len(functions)))
        lines += ["calls: call" + (' ("\\n" call)*' if parallel else ""),
                  f"call: {_literal(CALL_OPEN + NAME_KEY)} ({names}) {_literal('}' + CALL_CLOSE)}"]
    for i, f in enumerate(functions if choice != "none" else ()):
        # arguments the function did not declare are refused unless its schema allows them
        # (JSON schema's default allows any: a small model then invents keys)
        schema = {"type": "object", "additionalProperties": False,
                  **_with_layout(f.parameters, param)}
        lines += [f"fn_{i}: {_literal(json.dumps(f.name) + ARGUMENTS_KEY)} args_{i}",
                  f"args_{i}: %json {json.dumps(schema)}"]
    grammar = llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n")
    _check(grammar, param)
    return grammar


def _with_layout(schema: Mapping[str, Any], param: str) -> dict:
    if not isinstance(schema, Mapping):
        raise UnsupportedGrammar(f"{param}: a JSON schema must be an object", param)
    return {**schema, "x-guidance": JSON_LAYOUT}


def _literal(text: str) -> str:
    return json.dumps(text)  # a Lark string literal: the same escapes


def _check(grammar: str, param: str) -> None:
    error = grammar_error(grammar)
    if error is not None:
        raise UnsupportedGrammar(f"{param}: cannot be enforced: {error}", param)
