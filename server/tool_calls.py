"""Tool calls out of a model's output, in the chat template's format (server/grammar.py):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Porto"}}
    </tool_call>

The grammar guarantees the format, so this is a parser of that language, not a search in free
text: after "auto"'s first character the output is either text (anything but `<`) or calls, and
a call is the fixed opening, a JSON string (the name), the fixed key, one JSON object (the
arguments, streamed as it grows), the fixed closing. Arguments are kept as the exact text the
model wrote, so the reply re-renders to the same tokens.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from server.grammar import ARGUMENTS_KEY, CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR, NAME_KEY

_CALL_HEAD = CALL_OPEN + NAME_KEY
_CALL_TAIL = "}" + CALL_CLOSE


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as generated

    def message_entry(self) -> dict:
        """As in an assistant message's `tool_calls` (OpenAI's shape, the template's input)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallDelta:
    """A piece of a streamed call: the first carries id and name, later ones argument text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def chunk_entry(self) -> dict:
        """As in a streamed chunk's `delta.tool_calls`."""
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallFormatError(ValueError):
    """Output that is not in the call format (a grammar was not enforced)."""


@dataclass
class ToolCallParser:
    """Feeds on an output's text deltas; splits them into content text and call deltas.
    `calls_only`: the output is calls (tool_choice required or named), else text or calls."""

    calls_only: bool = False
    calls: list[ToolCall] = field(default_factory=list)
    _mode: str = "start"  # start | text | head | name | arguments | tail | between
    _buffer: str = ""
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False

    @property
    def is_calling(self) -> bool:
        return self._mode not in ("start", "text")

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """(content text, call deltas) that `text` completes."""
        if self._mode == "text":
            return text, []
        self._buffer += text
        deltas: list[ToolCallDelta] = []
        while self._buffer and self._step(deltas):
            pass
        if self._mode == "text":
            content, self._buffer = self._buffer, ""
            return content, deltas
        return "", deltas

    def finish(self) -> list[ToolCall]:
        """The complete calls (an unfinished last one, cut by max_tokens, is dropped)."""
        if self._mode in ("arguments", "tail"):
            self.calls.pop()
            self._mode = "between"
        return self.calls

    def _step(self, deltas: list[ToolCallDelta]) -> bool:
        """Consumes what it can of the buffer; False when it needs more text."""
        mode, buffer = self._mode, self._buffer
        if mode == "start":
            if not self.calls_only and not buffer.startswith("<"):
                self._mode = "text"
                return False
            self._mode = "head"
            return True
        if mode in ("head", "between"):
            literal = _CALL_HEAD if mode == "head" else CALL_SEPARATOR
            if len(buffer) < len(literal):
                self._expect(literal.startswith(buffer), literal)
                return False
            self._expect(buffer.startswith(literal), literal)
            self._buffer = buffer[len(literal):]
            self._mode = "name" if mode == "head" else "head"
            return True
        if mode == "name":
            end = _string_end(buffer)
            if end is None or len(buffer) < end + len(ARGUMENTS_KEY):
                return False
            self._expect(buffer[end:].startswith(ARGUMENTS_KEY), ARGUMENTS_KEY)
            call = ToolCall(new_call_id(), json.loads(buffer[:end]), "")
            self.calls.append(call)
            deltas.append(ToolCallDelta(len(self.calls) - 1, "", call.id, call.name))
            self._buffer = buffer[end + len(ARGUMENTS_KEY):]
            self._mode, self._depth = "arguments", 0
            return True
        if mode == "arguments":
            end = self._scan_json(buffer)
            piece = buffer if end is None else buffer[:end]
            self.calls[-1].arguments += piece
            deltas.append(ToolCallDelta(len(self.calls) - 1, piece))
            self._buffer = "" if end is None else buffer[end:]
            if end is not None:
                self._mode = "tail"
            return end is not None
        if mode == "tail":
            if len(buffer) < len(_CALL_TAIL):
                self._expect(_CALL_TAIL.startswith(buffer), _CALL_TAIL)
                return False
            self._expect(buffer.startswith(_CALL_TAIL), _CALL_TAIL)
            self._buffer = buffer[len(_CALL_TAIL):]
            self._mode = "between"
            return True
        raise AssertionError(mode)

    def _scan_json(self, text: str) -> int | None:
        """Where the arguments' JSON value ends in `text` (continuing the scan), or None."""
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None

    def _expect(self, ok: bool, literal: str) -> None:
        if not ok:
            raise ToolCallFormatError(f"expected {literal!r} in a tool call, got "
                                      f"{self._buffer[:40]!r}")


def _string_end(text: str) -> int | None:
    """End (exclusive) of the JSON string `text` starts with, or None if it is not complete."""
    escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i + 1
    return None


def parse_tool_calls(text: str, calls_only: bool = False) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole output."""
    parser = ToolCallParser(calls_only)
    content, _ = parser.push(text)
    return content, parser.finish()
