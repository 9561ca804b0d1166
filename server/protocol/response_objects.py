"""The response object of /v1/responses and its output items (an assistant message, function
calls), in the shapes OpenAI returns (openai-python's `types/responses`)."""

from __future__ import annotations

import time

from server.protocol.responses import ResponseRequest, new_item_id
from server.tool_calls import ToolCall
from server.turn_stream import TurnStream


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """An assistant message item; `text` None: just opened, no content part yet."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str
                       ) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def response_usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


class ResponseDraft:
    """One response being made: its id, its items' ids, and the response object at each stage
    (created, and completed from the finished turn, built once so the stored object, the
    returned one and the streamed one are the same)."""

    def __init__(self, body: ResponseRequest, model: str):
        self.body, self.model = body, model
        self.id = new_item_id("resp")
        self.message_id = new_item_id("msg")
        self.created_at = int(time.time())
        self.is_stored = False
        self._call_item_ids: dict[str, str] = {}  # call id -> its output item's id
        self._completed: dict | None = None

    def call_item_id(self, call_id: str) -> str:
        return self._call_item_ids.setdefault(call_id, new_item_id("fc"))

    def call_item(self, call: ToolCall, status: str = "completed") -> dict:
        return function_call_item(self.call_item_id(call.id), call.id, call.name,
                                  call.arguments, status)

    def snapshot(self, status: str, output: list[dict], usage: dict | None = None,
                 error: dict | None = None, incomplete: str | None = None) -> dict:
        body = self.body
        fmt = body.text.format if body.text is not None else None
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
            "text": {"format": (fmt.model_dump(by_alias=True, exclude_none=True) if fmt
                                else {"type": "text"})},
            "tool_choice": body.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
            "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
            "usage": usage, "user": body.user, "metadata": body.metadata or {},
        }

    def created(self) -> dict:
        return self.snapshot("in_progress", [])

    def completed(self, stream: TurnStream) -> dict:
        """The finished response: its text as a message (none when it only called tools),
        then its calls; status completed, or incomplete at max_output_tokens."""
        if self._completed is None:
            choice, u = stream.choices[0], stream.usage
            is_cut = choice.finish_reason == "length"
            status = "incomplete" if is_cut else "completed"
            output = [self.call_item(call) for call in choice.tool_calls]
            if choice.text or not output:
                output.insert(0, message_item(self.message_id, choice.text, status))
            self._completed = self.snapshot(
                status, output, response_usage(u.prompt_tokens, u.cached_tokens,
                                               u.completion_tokens),
                incomplete="max_output_tokens" if is_cut else None)
        return self._completed
