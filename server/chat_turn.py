"""A chat turn as the service takes it, and the plan of what it starts from and feeds."""

from __future__ import annotations

from dataclasses import dataclass

from engine.sampling import SamplingParams
from engine.state import RetentionState
from server.turn_encoding import TurnTokens
from state_store import SessionInfo


@dataclass(frozen=True)
class ChatTurn:
    tenant: str
    messages: list[dict]  # role + content (strings), as the chat template takes them
    params: SamplingParams  # with the output's grammar, if any (server/grammar.py)
    n: int = 1
    stop: tuple[str, ...] = ()
    session_id: str | None = None
    request_id: str = ""
    tools: list[dict] | None = None  # function definitions the template renders
    # parse tool calls from the output: "auto" (text or calls), "calls" (calls only), or None
    tool_call_mode: str | None = None

    @property
    def key_messages(self) -> list[dict]:
        """The messages as content keys see them: tools render with the conversation's start,
        so they key with its first message (without tools: the messages themselves)."""
        if not self.tools or not self.messages:
            return self.messages
        return [{**self.messages[0], "tools": self.tools}, *self.messages[1:]]


@dataclass
class TurnPlan:
    """What a turn starts from and feeds, and where its result goes."""

    turn: ChatTurn
    tokens: TurnTokens
    state: RetentionState | None  # the stored state it continues, or None (fed from scratch)
    base_key: str | None = None  # a session's conversation, known only by its key
    parent_key: str | None = None  # the stored state this turn extends
    session: SessionInfo | None = None
    # content key of the conversation through turn.messages: the reply's key chains on it
    messages_key: str | None = None
