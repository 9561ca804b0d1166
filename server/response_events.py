"""A response's streamed events, in OpenAI's sequence: response.created, response.in_progress,
then per output item (opened when its first piece arrives) output_item.added, its content
(a message: content_part.added, output_text.delta..., output_text.done, content_part.done; a
function call: function_call_arguments.delta..., function_call_arguments.done) and
output_item.done; last response.completed (or response.incomplete), or error +
response.failed. Every event carries its sequence_number."""

from __future__ import annotations

import itertools
import json

from server.errors import APIError
from server.protocol.response_objects import (
    ResponseDraft,
    function_call_item,
    message_item,
    output_text,
)
from server.tool_calls import ToolCallDelta
from server.turn_stream import ChoiceDelta


class ResponseEvents:
    def __init__(self, draft: ResponseDraft):
        self.draft = draft
        self._numbers = itertools.count()
        self._num_items = 0
        self._text: list[str] | None = None  # the open message's text, while it is open
        self._call: dict | None = None  # the open function call item, while it is open

    def event(self, kind: str, **fields) -> dict:
        """One SSE event (`event:` + `data:`), numbered."""
        data = {"type": kind, **fields, "sequence_number": next(self._numbers)}
        return {"event": kind, "data": json.dumps(data, ensure_ascii=False)}

    def start(self) -> list[dict]:
        created = self.draft.created()
        return [self.event("response.created", response=created),
                self.event("response.in_progress", response=created)]

    def delta(self, delta: ChoiceDelta) -> list[dict]:
        out = []
        if delta.text:
            if self._text is None:
                out += self._close("completed") + self._open_message()
            self._text.append(delta.text)
            out.append(self.event("response.output_text.delta", **self._text_at(),
                                  delta=delta.text, logprobs=[]))
        for piece in delta.tool_calls:
            if piece.id is not None:
                out += self._close("completed") + self._open_call(piece)
            if piece.arguments:
                self._call["arguments"] += piece.arguments
                out.append(self.event("response.function_call_arguments.delta",
                                      **self._call_at(), delta=piece.arguments))
        return out

    def finish(self, final: dict) -> list[dict]:
        """Closes what is open (a call the final output lacks was cut: incomplete) and ends
        with the final response."""
        status = final["status"]
        if self._call is not None:
            is_kept = any(item["id"] == self._call["id"] for item in final["output"])
            out = self._close("completed" if is_kept else "incomplete")
        else:
            out = self._close(status)
        if self._num_items == 0:  # nothing was generated: the empty message
            out += self._open_message() + self._close(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, self.event(kind, response=final)]

    def fail(self, error: APIError) -> list[dict]:
        failed = self.draft.snapshot("failed", [], error={"code": "server_error",
                                                          "message": error.message})
        return [self.event("error", code=error.code or error.type, message=error.message,
                           param=error.param),
                self.event("response.failed", response=failed)]

    # items ----------------------------------------------------------------------------------

    def _text_at(self) -> dict:
        return {"item_id": self.draft.message_id, "output_index": self._num_items - 1,
                "content_index": 0}

    def _call_at(self) -> dict:
        return {"item_id": self._call["id"], "output_index": self._num_items - 1}

    def _open_message(self) -> list[dict]:
        self._num_items += 1
        self._text = []
        return [self.event("response.output_item.added", output_index=self._num_items - 1,
                           item=message_item(self.draft.message_id, None, "in_progress")),
                self.event("response.content_part.added", **self._text_at(),
                           part=output_text(""))]

    def _open_call(self, piece: ToolCallDelta) -> list[dict]:
        self._num_items += 1
        self._call = function_call_item(self.draft.call_item_id(piece.id), piece.id,
                                        piece.name, "", "in_progress")
        return [self.event("response.output_item.added", output_index=self._num_items - 1,
                           item=self._call)]

    def _close(self, status: str) -> list[dict]:
        out = []
        if self._text is not None:
            text = "".join(self._text)
            out = [self.event("response.output_text.done", **self._text_at(), text=text,
                              logprobs=[]),
                   self.event("response.content_part.done", **self._text_at(),
                              part=output_text(text)),
                   self.event("response.output_item.done", output_index=self._num_items - 1,
                              item=message_item(self.draft.message_id, text, status))]
            self._text = None
        elif self._call is not None:
            call = {**self._call, "status": status}
            out = [self.event("response.function_call_arguments.done", **self._call_at(),
                              name=call["name"], arguments=call["arguments"]),
                   self.event("response.output_item.done", output_index=self._num_items - 1,
                              item=call)]
            self._call = None
        return out
