"""The turn seam: the one place where a chat turn happens. HTTP routes, `retserve chat` and
`retserve eval recall` all call it; nothing else talks to both the store and the engine.

    render the messages -> longest stored prefix (or the session's state) -> encode only the
    continuation -> EngineClient.generate -> the template's end-of-turn tokens fed -> the state
    saved under the key of the conversation including the reply -> the session pointer moved

The reply's text is the one rule for what was said: the streamed text deltas joined, stop
strings cut. A state is saved only if it is exactly the state of its conversation fed from
scratch (the tokens fed equal the tokens the template and tokenizer give for the conversation
with that reply); when they differ (a stop string cut the reply, the model produced a
non-canonical tokenisation) the turn's tokens are fed again from its starting state, by the
same rule. Store trouble never fails a turn: it is counted, and the turn runs without reuse.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from engine.dtypes import dtype_from_name
from engine.engine_client import EngineClient
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.state import RetentionState
from engine.tokenizer import ChatTemplateError, Tokenizer
from server.chat_turn import ChatTurn, TurnPlan
from server.errors import APIError, bad_request, not_found, overloaded, unavailable
from server.state_records import record_from_state, state_from_record
from server.stop_strings import StopMatcher
from server.tool_calls import ToolCallParser
from server.turn_encoding import TurnEncoder, TurnTokens
from server.turn_metrics import NO_METRICS, TurnMetrics
from server.turn_stream import Choice, TurnStream, Usage
from state_store import (
    ConflictError,
    ConversationStore,
    RecordError,
    SessionInfo,
    StateRecord,
    StateStoreError,
)

logger = logging.getLogger("retserve.chat")
# A turn fed at least this many tokens keeps the state after them (a ~300 kB copy) while it
# runs, so that a reply fed again for an exact stored state skips the prompt: below it, feeding
# the prompt again costs less than holding the copy.
PROMPT_STATE_MIN = 128
# what a turn started from a given state hands its exact end state to (a stored response)
KeepState = Callable[[StateRecord | None], Awaitable[None]]


@dataclass(frozen=True)
class ServiceOptions:
    max_prompt_tokens: int = 65536
    max_active: int | None = None  # turns in flight (running + waiting); beyond: 429
    request_timeout: float | None = None
    parent_grace: float = 120.0  # seconds a state stays after a turn extends it
    state_dtype: str = "float32"  # of stored states
    reuse_states: bool = True


class ChatService:
    def __init__(self, engine: EngineClient, tokenizer: Tokenizer,
                 conversations: ConversationStore | None = None,
                 options: ServiceOptions | None = None, metrics: TurnMetrics = NO_METRICS):
        self.engine = engine
        self.tokenizer = tokenizer
        self.encoder = TurnEncoder(tokenizer)
        self.conversations = conversations
        self.options = options or ServiceOptions()
        self.metrics = metrics
        info = engine.info
        self.model_config = info.model_config
        self.model_fingerprint = info.model_fingerprint
        self._pool_dtype = info.state_dtype
        self._state_dtype = dtype_from_name(self.options.state_dtype)
        self.num_active = 0
        self.last_store_error: tuple[float, str] | None = None  # (unix time, what failed)

    # turns ---------------------------------------------------------------------------------

    async def start_chat(self, turn: ChatTurn) -> TurnStream:
        """Plans the turn and queues it; iterate the stream for its deltas. Raises APIError
        (400 bad messages or prompt too long, 404 an expired session state, 429 overloaded)
        before anything is generated."""
        self._admit()
        try:
            plan = await self._plan(turn)
            return self._stream(plan)
        except BaseException:
            self._release()
            raise

    async def start_completion(self, prompt_ids: list[int], params: SamplingParams, n: int = 1,
                               stop: tuple[str, ...] = (), request_id: str = "") -> TurnStream:
        """A raw prompt: no conversation, nothing stored."""
        self._admit()
        try:
            self._check_prompt_length(len(prompt_ids))
            turn = ChatTurn("", [], params, n, stop, None, request_id)
            plan = TurnPlan(turn, TurnTokens(list(prompt_ids), None, "raw"), None)
            return self._stream(plan, save=False)
        except BaseException:
            self._release()
            raise

    async def start_from_state(self, turn: ChatTurn, start: StateRecord | None,
                               keep: KeepState | None = None) -> TurnStream:
        """A turn over `turn.messages` alone, continuing the state in `start` (None: fed from
        scratch): no lookup, no content key, no session. What a stored response continues
        from. With `keep`, the record of the exact state after the turn (None when it cannot
        be made) is handed to it before the stream ends; store errors it raises are counted.
        Raises APIError 404 for a record this model cannot use, 400 for a template that needs
        the earlier text."""
        self._admit()
        try:
            state = await self._state_of(start)
            if start is not None and state is None:
                raise not_found("the stored state cannot be used by this model", None,
                                "state_refused")
            if state is None:
                tokens = await self._encode(self.encoder.whole, turn.messages, tools=turn.tools)
            else:
                tokens = await self._encode(self.encoder.after_unknown, turn.messages,
                                            tools=turn.tools)
                if tokens is None:
                    raise bad_request("this model's chat template needs the whole "
                                      "conversation to continue a stored state")
            self._check_prompt_length(len(tokens.ids))
            cached = 0 if state is None else int(state.num_tokens[0])
            self.metrics.prefix_lookup(cached + len(tokens.ids), cached)
            return self._stream(TurnPlan(turn, tokens, state), save=False, keep=keep)
        except BaseException:
            self._release()
            raise

    def _admit(self) -> None:
        limit = self.options.max_active
        if limit is not None and self.num_active >= limit:
            raise overloaded(f"{self.num_active} requests are in flight; retry shortly")
        self.num_active += 1

    def _release(self) -> None:
        self.num_active -= 1

    def _check_prompt_length(self, num_tokens: int) -> None:
        if num_tokens > self.options.max_prompt_tokens:
            raise bad_request(f"the prompt needs {num_tokens} new tokens, more than this "
                              f"server's limit of {self.options.max_prompt_tokens}", "messages",
                              "context_length_exceeded")

    # planning -------------------------------------------------------------------------------

    async def _plan(self, turn: ChatTurn) -> TurnPlan:
        messages, tools = turn.messages, turn.tools
        conv = self.conversations if self.options.reuse_states else None
        session = base_key = parent_key = record = None
        covered = 0
        keys = conv.content_keys(turn.tenant, turn.key_messages) if conv is not None else []
        if conv is not None and turn.session_id is not None:
            session = await self._session(turn)
        if session is not None:
            if session.content_key in keys:  # the whole conversation, resent
                covered = keys.index(session.content_key) + 1
                parent_key = session.content_key
            elif not any(m["role"] == "assistant" for m in messages):  # only the new turn
                base_key = parent_key = session.content_key
            # else: an edited history; found below like any conversation
            if parent_key is not None:
                record = await self._session_state(turn, parent_key)
        if record is None and base_key is None and conv is not None:
            found = await self._guard("lookup", conv.lookup(turn.tenant, turn.key_messages,
                                                            keys))
            if found is not None:
                covered, record = found
                parent_key = keys[covered - 1]
        state = await self._state_of(record)
        if state is None and base_key is not None:
            raise not_found(f"the stored state of session {turn.session_id!r} has expired; send "
                            "the whole conversation", "session_id", "session_state_expired")
        tokens = None
        if state is not None:
            tokens = (self.encoder.after_unknown(messages, tools=tools) if base_key is not None
                      else await self._encode(self.encoder.after, messages[:covered], messages,
                                              tools=tools))
            if tokens is None and base_key is not None:
                raise bad_request("this model's chat template needs the whole conversation to "
                                  "continue it: send every message", "session_id")
        if tokens is None:  # nothing stored, or the template cannot continue the stored text
            state, parent_key = None, None
            tokens = await self._encode(self.encoder.whole, messages, tools=tools)
        self._check_prompt_length(len(tokens.ids))
        cached = 0 if state is None else int(state.num_tokens[0])
        self.metrics.prefix_lookup(cached + len(tokens.ids), cached)
        if conv is None:
            messages_key = None
        elif base_key is None:
            messages_key = keys[-1] if keys else None
        else:  # a session's new messages chain on its conversation
            messages_key = conv.content_keys(turn.tenant, messages, base_key)[-1]
        return TurnPlan(turn, tokens, state, base_key, parent_key, session, messages_key)

    async def _encode(self, fn, *args, **kwargs) -> TurnTokens | None:
        rendered = args[-1]
        if fn == self.encoder.after and self.encoder.is_history_free:
            rendered = rendered[len(args[0]):]  # the new messages alone are rendered
        try:
            if sum(len(m.get("content") or "") for m in rendered) > 65536:
                # long texts to render: off the event loop
                return await asyncio.to_thread(fn, *args, **kwargs)
            return fn(*args, **kwargs)
        except ChatTemplateError as e:
            raise bad_request(f"messages: {e}", "messages") from e

    async def _session(self, turn: ChatTurn) -> SessionInfo | None:
        """The session's pointer; a store that cannot answer fails a request that sends only
        its new messages (its conversation lives only in the store)."""
        try:
            return await self.conversations.get_session(turn.tenant, turn.session_id)
        except RecordError:
            return None  # an unreadable pointer is no session
        except (StateStoreError, OSError, TimeoutError) as e:
            self._store_failed("session", e)
            if any(m["role"] == "assistant" for m in turn.messages):
                return None  # the whole conversation is here: serve it by full prefill
            raise self._store_down(turn, e) from e

    async def _session_state(self, turn: ChatTurn, content_key: str) -> StateRecord | None:
        try:
            return await self.conversations.load(turn.tenant, content_key)
        except RecordError:
            return None  # refused and counted by the store: as good as expired
        except (StateStoreError, OSError, TimeoutError) as e:
            self._store_failed("load", e)
            raise self._store_down(turn, e) from e

    @staticmethod
    def _store_down(turn: ChatTurn, error: BaseException) -> APIError:
        return unavailable(f"the state store cannot be reached, so session "
                           f"{turn.session_id!r} cannot be continued now: retry, or send the "
                           f"whole conversation ({type(error).__name__})")

    async def _state_of(self, record: StateRecord | None) -> RetentionState | None:
        if record is None:
            return None
        try:
            return await asyncio.to_thread(state_from_record, record, self.model_config,
                                           self._pool_dtype)
        except RecordError as e:
            self.conversations.stats.refuse(e.reason)
            logger.warning("stored state refused: %s", e)
            return None

    async def _guard(self, operation: str, call):
        """A store call whose failure the turn survives: None (a refused record is a miss,
        counted by the store; a failing store is counted here)."""
        try:
            return await call
        except RecordError:
            return None
        except ConflictError:
            raise
        except (StateStoreError, OSError, TimeoutError) as e:
            self._store_failed(operation, e)
            return None

    def _store_failed(self, operation: str, error: BaseException) -> None:
        self.last_store_error = (time.time(), f"{operation}: {type(error).__name__}: {error}")
        self.metrics.store_error(operation)
        logger.warning("state store %s failed, serving without it: %s", operation, error)

    # generation -----------------------------------------------------------------------------

    def _stream(self, plan: TurnPlan, save: bool = True, keep: KeepState | None = None
                ) -> TurnStream:
        turn = plan.turn
        request_id = turn.request_id or uuid.uuid4().hex
        ids = plan.tokens.ids
        save = keep is not None or (save and self.conversations is not None
                                    and self.options.reuse_states)
        trailing = self.encoder.end_of_turn_ids if save else ()
        prefill = None
        start_ids, start_state = ids, plan.state
        if turn.n > 1 and len(ids) > 1:  # prefill once, every choice continues a copy
            prefill = Request(f"{request_id}-prefill", ids[:-1], initial_state=plan.state,
                              prefill_only=True)
            start_ids, start_state = ids[-1:], None
        choices = []
        for i in range(turn.n):
            params = turn.params
            if turn.n > 1 and params.seed is not None:
                params = replace(params, seed=params.seed + i)  # n different draws, repeatable
            request = Request(f"{request_id}-{i}", start_ids, params, initial_state=start_state,
                              return_state=save, trailing_ids=trailing,
                              admitted=prefill is not None or i > 0,
                              return_prompt_state=save and len(start_ids) >= PROMPT_STATE_MIN)
            parser = (None if turn.tool_call_mode is None else
                      ToolCallParser(calls_only=turn.tool_call_mode == "calls"))
            choices.append(Choice(i, request, StopMatcher(turn.stop), tool_parser=parser))
        cached = 0 if plan.state is None else int(plan.state.num_tokens[0])
        timeout = self.options.request_timeout
        on_complete = None
        if keep is not None:
            on_complete = lambda stream: self._keep(plan, stream, keep)
        elif save:
            on_complete = lambda stream: self._save(plan, stream)
        return TurnStream(
            self.engine, choices, Usage(cached + len(ids), cached), self.metrics,
            prefill=prefill, deadline=None if timeout is None else time.monotonic() + timeout,
            on_complete=on_complete, on_close=self._release)

    # saving ---------------------------------------------------------------------------------

    async def _save(self, plan: TurnPlan, stream: TurnStream) -> None:
        """Every choice's state under its conversation's key, the session moved to the first
        choice, then the parent retired. Without a session, failures are counted and the turn
        still succeeds (the client resends its history). With one, the server is the only
        keeper of the conversation, so a turn whose state cannot be stored or whose pointer
        cannot move fails (503, or 409 when a concurrent turn moved it): the session keeps
        the conversation before the turn, and the client retries it."""
        turn, conv = plan.turn, self.conversations
        if any(c.finish_reason not in ("stop", "length", "tool_calls") for c in stream.choices):
            return
        keys, first_record = [], None
        for choice in stream.choices:
            reply = choice.reply_message()
            # (no key: reuse is off, and the exact state, maybe a refeed, would go nowhere)
            state = None if plan.messages_key is None else \
                await self._exact_state(plan, choice, reply)
            if state is None:
                keys.append(None)
                continue
            record = await asyncio.to_thread(record_from_state, state, self.model_fingerprint,
                                             self._state_dtype)
            keys.append(await self._guard("save", conv.save(
                turn.tenant, [reply], record, base_key=plan.messages_key)))
            if choice.index == 0:
                first_record = record
        if turn.session_id is not None:
            await self._move_session(plan, keys[0], first_record)
        if plan.parent_key is not None and any(keys):
            await self._guard("retire", conv.retire(turn.tenant, plan.parent_key,
                                                    self.options.parent_grace))

    async def _move_session(self, plan: TurnPlan, key: str | None,
                            record: StateRecord | None) -> None:
        turn = plan.turn
        if key is None:
            raise unavailable(f"the state after this turn could not be stored, so session "
                              f"{turn.session_id!r} still holds the conversation before it; "
                              "retry the turn")
        previous = plan.session.content_key if plan.session is not None else None
        try:
            await self.conversations.set_session(turn.tenant, turn.session_id, key, previous,
                                                 record=record)
        except (ConflictError, LookupError) as e:
            raise APIError(409, f"session {turn.session_id!r} moved during this turn (a "
                           "concurrent request); it holds that request's conversation: retry",
                           "invalid_request_error", "session_id", "session_conflict") from e
        except (StateStoreError, OSError, TimeoutError) as e:
            self._store_failed("session", e)
            raise unavailable(f"session {turn.session_id!r} could not be moved to this turn's "
                              "state (the state store failed); retry the turn") from e

    async def _keep(self, plan: TurnPlan, stream: TurnStream, keep: KeepState) -> None:
        """The first choice's exact state, as a record, handed to `keep`."""
        choice, record = stream.choices[0], None
        if choice.finish_reason in ("stop", "length", "tool_calls"):
            state = await self._exact_state(plan, choice, choice.reply_message())
            if state is not None:
                record = await asyncio.to_thread(record_from_state, state,
                                                 self.model_fingerprint, self._state_dtype)
        await self._guard("save", keep(record))

    async def _exact_state(self, plan: TurnPlan, choice: Choice, reply: Mapping
                           ) -> RetentionState | None:
        """The state of the conversation with this reply, exactly as fed from scratch."""
        try:
            expected = self.encoder.reply(plan.tokens, plan.turn.messages, reply)
        except ChatTemplateError:
            return None
        if expected is None:
            return None
        body = choice.token_ids
        if choice.finish_reason == "stop" and body and body[-1] in self.tokenizer.stop_token_ids:
            body = body[:-1]  # the engine does not feed a stop token; the end of turn follows
        fed = [*plan.tokens.ids, *body, *self.encoder.end_of_turn_ids]
        if choice.final_state is not None and fed == expected:
            return choice.final_state
        if len(expected) > self.options.max_prompt_tokens:
            return None
        start, ids = plan.state, expected
        prompt = plan.tokens.ids
        if choice.prompt_state is not None and expected[:len(prompt)] == prompt:
            start, ids = choice.prompt_state, expected[len(prompt):]  # the reply alone
        self.metrics.state_refeed(len(ids))
        return await self._feed(start, ids)

    async def _feed(self, state: RetentionState | None, ids: list[int]
                    ) -> RetentionState | None:
        request = Request(f"refeed-{uuid.uuid4().hex}", ids, initial_state=state,
                          prefill_only=True, admitted=True)
        stream = self.engine.generate(request)
        try:
            async for output in stream:
                if output.finished:
                    return output.state if output.finish_reason != "abort" else None
        finally:
            await stream.aclose()
        return None
