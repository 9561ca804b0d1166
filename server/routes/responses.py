"""/v1/responses: create (streaming as OpenAI's event sequence, or not), retrieve, delete, and
list a response's input items.

A stored response (`store: true`, the default) is the state after it, saved under its id as
the turn completes, before the client sees the end: `previous_response_id` continues from that
state and feeds only the new input, whatever the history's length.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from server.auth import tenant_hash
from server.deps import RuntimeDep, TenantDep
from server.errors import APIError, bad_request, unavailable
from server.openapi import API_ERRORS, BODY_ERRORS, error_responses, streamed
from server.protocol.response_objects import ResponseDraft
from server.protocol.response_schemas import InputItemList, ResponseDeleted, ResponseObject
from server.protocol.responses import MAX_RESPONSE_ID, ResponseRequest, response_not_found
from server.response_events import ResponseEvents
from server.routes.models import check_model
from server.runtime import Runtime
from server.streaming import log_turn, run_until_disconnect, sse_response
from server.turn_stream import TurnStream
from server.unicode_route import UnicodeCheckedRoute
from state_store import RecordError, StateRecord, StateStoreError
from state_store.responses import StoredResponse

router = APIRouter(tags=["responses"], responses=error_responses(*API_ERRORS, 404),
                   route_class=UnicodeCheckedRoute)
ResponseId = Annotated[str, Path(min_length=1, max_length=MAX_RESPONSE_ID)]


def _store_error(e: Exception) -> APIError:
    return unavailable(f"the state store cannot answer now: {type(e).__name__}")


async def _stored(runtime: Runtime, tenant: str, response_id: str) -> StoredResponse:
    try:
        stored = await runtime.responses.get(tenant, response_id)
    except StateStoreError as e:
        raise _store_error(e) from e
    if stored is None:
        raise response_not_found(response_id)
    return stored


async def _previous_state(runtime: Runtime, tenant: str, response_id: str) -> StateRecord:
    """The state a response continues: unknown, expired, deleted, another tenant's or
    unreadable are one 404, as OpenAI answers."""
    try:
        stored = await runtime.responses.get(tenant, response_id)
        record = None if stored is None else await runtime.responses.load_state(tenant, stored)
    except RecordError:
        record = None  # refused and counted by the store
    except StateStoreError as e:  # the state is nowhere else: no way to serve the turn
        raise _store_error(e) from e
    if record is None:
        raise _previous_not_found(response_id)
    return record


def _previous_not_found(response_id: str) -> APIError:
    error = response_not_found(response_id, "previous_response_id")
    error.message = f"Previous response with id '{response_id}' not found."
    return error


@router.post("/v1/responses", summary="Create a model response (OpenAI's Responses API); "
             "stream: true answers with its event sequence over SSE",
             responses={200: {"model": ResponseObject, **streamed("The response, or its "
                                                                   "events")[200]},
                        **error_responses(*BODY_ERRORS, 404, 429, 504)})
async def create_response(body: ResponseRequest, request: Request, runtime: RuntimeDep,
                          tenant: TenantDep):
    model = check_model(runtime, body.model)
    turn = body.to_turn(tenant, runtime.limits, request.state.request_id)
    items = body.input_items()
    start = None
    if body.previous_response_id is not None:
        start = await _previous_state(runtime, tenant, body.previous_response_id)
    draft = ResponseDraft(body, model)
    stream: TurnStream | None = None

    async def keep(record: StateRecord | None) -> None:
        # runs as the turn completes (the stream is assigned by then), before its end is sent
        if record is not None:
            await runtime.responses.save(tenant, draft.id, draft.completed(stream), items,
                                         record)
            draft.is_stored = True

    try:
        stream = await runtime.service.start_from_state(turn, start,
                                                        keep if body.store else None)
    except APIError as e:
        if e.code == "state_refused":  # a record of another model: not one to continue
            raise _previous_not_found(body.previous_response_id) from e
        raise
    log = request.state.log_fields
    log["tenant"] = tenant_hash(tenant)
    if body.stream:
        return sse_response(_events(stream, draft, log), runtime.settings.keepalive_seconds)
    return await run_until_disconnect(request, _complete(stream, draft, log))


def _final(draft: ResponseDraft, stream: TurnStream) -> dict:
    final = draft.completed(stream)
    if draft.body.store and not draft.is_stored:
        final = {**final, "store": False}  # asked for, but it could not be stored
    return final


async def _complete(stream: TurnStream, draft: ResponseDraft, log: dict) -> dict:
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()
        log_turn(log, stream)
    return _final(draft, stream)


async def _events(stream: TurnStream, draft: ResponseDraft, log: dict):
    events = ResponseEvents(draft)
    try:
        for event in events.start():
            yield event
        async for delta in stream:
            for event in events.delta(delta):
                yield event
        for event in events.finish(_final(draft, stream)):
            yield event
    except APIError as e:  # after the stream started: the error travels as events
        for event in events.fail(e):
            yield event
    finally:
        await stream.aclose()
        log_turn(log, stream)


@router.get("/v1/responses/{response_id}", summary="A stored response",
            responses={200: {"model": ResponseObject}})
async def get_response(response_id: ResponseId, runtime: RuntimeDep, tenant: TenantDep):
    return (await _stored(runtime, tenant, response_id)).response


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response and its state",
               responses={200: {"model": ResponseDeleted}})
async def delete_response(response_id: ResponseId, runtime: RuntimeDep, tenant: TenantDep):
    try:
        existed = await runtime.responses.delete(tenant, response_id)
    except StateStoreError as e:
        raise _store_error(e) from e
    if not existed:
        raise response_not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items",
            summary="The input items of a stored response, paginated",
            responses={200: {"model": InputItemList}})
async def list_input_items(response_id: ResponseId, runtime: RuntimeDep, tenant: TenantDep,
                           after: Annotated[str | None, Query(max_length=256)] = None,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc"):
    items = (await _stored(runtime, tenant, response_id)).input_items
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(f"after: no input item {after!r} in this response", "after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
