"""/v1/sessions: a session is a client-chosen id pointing at its conversation's latest state."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.protocol.common import OpenAIModel
from state_store import SessionInfo


class SessionObject(OpenAIModel):
    id: str
    object: Literal["session"] = "session"
    num_tokens: int = Field(description="tokens folded into the session's state")
    num_bytes: int = Field(description="bytes of the stored state: fixed by the model")
    updated_at: float


class SessionDeleted(OpenAIModel):
    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: bool = True


class ForkRequest(OpenAIModel):
    session_id: str | None = Field(None, min_length=1, max_length=256,
                                   description="id of the new session (default: generated)")


def session_object(info: SessionInfo) -> SessionObject:
    return SessionObject(id=info.session_id, num_tokens=info.num_tokens,
                         num_bytes=info.num_bytes, updated_at=info.updated_at)
