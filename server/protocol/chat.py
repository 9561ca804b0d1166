"""POST /v1/chat/completions: the request, its conversion into a chat turn, the responses."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from engine.sampling import TokenLogprob
from server.chat_turn import ChatTurn
from server.errors import bad_request
from server.protocol.common import Limits, OpenAIModel, SamplingFields, UsageInfo
from server.protocol.tools import ResponseFormat, ToolChoice, ToolDefinition, output_constraint
from server.token_text import TokenText

# OpenAI's developer role is the system role of models trained before it existed
ROLE_FOR_TEMPLATE = {"developer": "system"}
MAX_SESSION_ID = 256
_PLAIN_ROLES = frozenset(("system", "user", "assistant"))  # no renaming, no extra fields


# Messages are validated into plain dicts, not models: a client resends its whole history every
# turn, and building a model per message cost 4x the validation itself (1.4 vs 0.35 ms for
# 2,300 messages). Unknown keys are dropped, as on the models.
class ContentPart(TypedDict):
    type: str
    text: NotRequired[str | None]


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, kept verbatim (the template renders it as the model wrote it)


class ToolCall(TypedDict):
    id: Annotated[str, Field(max_length=256)]
    type: NotRequired[Literal["function"]]
    function: FunctionCall


class ChatMessage(TypedDict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: NotRequired[str | list[ContentPart] | None]
    name: NotRequired[Annotated[str | None, Field(max_length=256)]]
    tool_calls: NotRequired[list[ToolCall] | None]  # assistant
    tool_call_id: NotRequired[Annotated[str | None, Field(max_length=256)]]  # tool


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    session_id: str | None = Field(None, min_length=1, max_length=MAX_SESSION_ID,
                                   description="retserve: continue this session's state")

    def to_turn(self, tenant: str, limits: Limits, session_id: str | None,
                request_id: str) -> ChatTurn:
        if self.top_logprobs and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        constraint = output_constraint(self.tools, self.tool_choice, self.parallel_tool_calls,
                                       self.response_format)
        if constraint.grammar is not None and self.ignore_eos:
            raise bad_request("ignore_eos cannot be combined with tools or response_format",
                              "ignore_eos")
        max_tokens = self.max_completion_tokens or self.max_tokens
        num_logprobs = (self.top_logprobs or 0) if self.logprobs else None
        params = self.sampling_params(max_tokens, limits, num_logprobs)
        if constraint.grammar is not None:
            params = replace(params, grammar=constraint.grammar)
        return ChatTurn(tenant=tenant, messages=self.template_messages(),
                        params=params, n=self.check_n(limits), stop=self.stop_strings(),
                        session_id=self.session_id or session_id, request_id=request_id,
                        tools=constraint.tools, tool_call_mode=constraint.tool_call_mode)

    def template_messages(self) -> list[dict]:
        """Messages as the chat template takes them: a role and a string; the same
        conversation gives the same dicts however the client spelled it (content parts joined,
        null fields dropped), so its content key is the same too."""
        out = []
        for i, message in enumerate(self.messages):
            content, role = message.get("content"), message["role"]
            if type(content) is str and role in _PLAIN_ROLES and not message.get("name") \
                    and not message.get("tool_calls"):
                out.append({"role": role, "content": content})  # most messages: as they are
                continue
            if isinstance(content, list):
                texts = []
                for j, part in enumerate(content):
                    if part["type"] != "text" or part.get("text") is None:
                        raise bad_request(f"messages[{i}].content[{j}]: content part type "
                                          f"{part['type']!r} is not supported (text only)",
                                          f"messages.{i}.content.{j}.type")
                    texts.append(part["text"])
                content = "\n".join(texts)
            if content is None:
                if role != "assistant":
                    raise bad_request(f"messages[{i}].content is required", f"messages.{i}")
                content = ""
            entry = {"role": ROLE_FOR_TEMPLATE.get(role, role), "content": content}
            if message.get("name"):
                entry["name"] = message["name"]
            calls = message.get("tool_calls")
            if calls and role != "assistant":
                raise bad_request(f"messages[{i}].tool_calls: only assistant messages make "
                                  "tool calls", f"messages.{i}.tool_calls")
            if calls:  # the shape a reply's calls are saved in (same content key)
                entry["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["function"]["name"],
                                  "arguments": c["function"]["arguments"]}}
                    for c in calls]
            if role == "tool":
                if not message.get("tool_call_id"):
                    raise bad_request(f"messages[{i}].tool_call_id is required for a tool "
                                      "message", f"messages.{i}.tool_call_id")
                entry["tool_call_id"] = message["tool_call_id"]
            out.append(entry)
        return out


# responses --------------------------------------------------------------------------------


class TopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(OpenAIModel):
    content: list[TokenLogprobOut] | None = None


class ResponseMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: UsageInfo


def logprobs_content(logprobs: list[TokenLogprob] | None, token_text: TokenText
                     ) -> list[dict] | None:
    """Engine logprobs -> OpenAI's `logprobs.content` entries."""
    if logprobs is None:
        return None

    def entry(token_id: int, logprob: float) -> dict:
        raw = token_text.bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(raw)}

    return [{**entry(lp.token_id, lp.logprob),
             "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in logprobs]
