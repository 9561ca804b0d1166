"""/v1/sessions/{id}: what a session holds, delete it, fork it (a new id, the same state)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Path

from server.deps import RuntimeDep, TenantDep
from server.errors import APIError, not_found, unavailable
from server.openapi import API_ERRORS, BODY_ERRORS, error_responses
from server.protocol.sessions import (
    ForkRequest,
    SessionDeleted,
    SessionObject,
    session_object,
)
from server.unicode_route import UnicodeCheckedRoute
from state_store import ConflictError, RecordError, StateStoreError

router = APIRouter(tags=["sessions"], responses=error_responses(*API_ERRORS, 404),
                   route_class=UnicodeCheckedRoute)
SessionId = Annotated[str, Path(min_length=1, max_length=256)]


def _store_error(e: Exception) -> APIError:
    return unavailable(f"the state store cannot answer now: {type(e).__name__}")


def _missing(session_id: str) -> APIError:
    return not_found(f"no session {session_id!r}", "session_id", "session_not_found")


@router.get("/v1/sessions/{session_id}", response_model=SessionObject)
async def get_session(session_id: SessionId, runtime: RuntimeDep, tenant: TenantDep):
    try:
        info = await runtime.conversations.get_session(tenant, session_id)
    except RecordError:
        info = None  # an unreadable pointer is no session
    except StateStoreError as e:
        raise _store_error(e) from e
    if info is None:
        raise _missing(session_id)
    return session_object(info)


@router.delete("/v1/sessions/{session_id}", response_model=SessionDeleted)
async def delete_session(session_id: SessionId, runtime: RuntimeDep, tenant: TenantDep):
    try:
        existed = await runtime.conversations.delete_session(tenant, session_id)
    except StateStoreError as e:
        raise _store_error(e) from e
    if not existed:
        raise _missing(session_id)
    return SessionDeleted(id=session_id)


@router.post("/v1/sessions/{session_id}/fork", response_model=SessionObject,
             responses=error_responses(*BODY_ERRORS, 409))
async def fork_session(session_id: SessionId, runtime: RuntimeDep, tenant: TenantDep,
                       body: Annotated[ForkRequest | None, Body()] = None):
    new_id = (body.session_id if body is not None else None) or f"sess-{uuid.uuid4().hex}"
    try:
        info = await runtime.conversations.fork_session(tenant, session_id, new_id)
    except LookupError as e:
        raise _missing(session_id) from e
    except ConflictError as e:
        raise APIError(409, f"session {new_id!r} exists already", "invalid_request_error",
                       "session_id", "session_exists") from e
    except RecordError as e:
        raise _missing(session_id) from e
    except StateStoreError as e:
        raise _store_error(e) from e
    return session_object(info)
