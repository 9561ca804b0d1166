"""One turn in flight: its choices' engine streams turned into deltas for the client.

Stop strings are cut here (the text after a match never leaves), `n` choices run side by side
from one prefilled state, a deadline aborts what is still running, and whoever stops iterating
(a client that went away) aborts the engine requests at once. When every choice has finished,
`on_complete` runs before the iteration ends, so a saved state is in the store before the
client sees the end of the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from engine.engine_client import EngineClient
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.sampling import TokenLogprob
from engine.sequence import Request
from engine.state import RetentionState
from server.errors import APIError, bad_request, overloaded, timed_out, unavailable
from server.stop_strings import StopMatcher
from server.tool_calls import ToolCall, ToolCallDelta, ToolCallFormatError, ToolCallParser
from server.turn_metrics import TurnMetrics


@dataclass
class ChoiceDelta:
    index: int
    text: str  # content (a tool call's text is in tool_calls)
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    # "stop" | "length" | "tool_calls" (stopped after calls) on a choice's last delta
    finish_reason: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int  # every token of the prompt, those a stored state covered included
    cached_tokens: int  # covered by a stored state: not fed again
    completion_tokens: int = 0


@dataclass
class Choice:
    index: int
    request: Request
    stop: StopMatcher
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    final_state: RetentionState | None = None  # after reply + end-of-turn (engine-fed)
    prompt_state: RetentionState | None = None  # after the prompt, when asked for
    is_stopped_by_string: bool = False
    last_token_time: float | None = None
    tool_parser: ToolCallParser | None = None  # when the output may hold tool calls

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [] if self.tool_parser is None else self.tool_parser.calls

    def reply_message(self) -> dict:
        """The reply as an assistant message, as a client sends it back in the next turn."""
        message = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.message_entry() for call in self.tool_calls]
        return message


class TurnStream:
    def __init__(self, engine: EngineClient, choices: list[Choice], usage: Usage,
                 metrics: TurnMetrics, *, prefill: Request | None = None,
                 deadline: float | None = None,
                 on_complete: Callable[[TurnStream], Awaitable[None]] | None = None,
                 on_close: Callable[[], None] | None = None):
        """`prefill`: a prefill-only request whose state every choice starts from (n > 1)."""
        self.engine, self.choices, self.usage, self.metrics = engine, choices, usage, metrics
        self.arrival = time.monotonic()
        self.first_token_time: float | None = None
        self.error: str | None = None  # why the turn failed, once it has
        self._prefill = prefill
        self._deadline = deadline
        self._on_complete, self._on_close = on_complete, on_close
        self._is_timed_out = self._is_closed = False
        self._running: set[str] = set()
        self._iterator = self._events()

    def __aiter__(self) -> AsyncIterator[ChoiceDelta]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        self._close()

    def __del__(self) -> None:
        # a response dropped before it was iterated (a client gone before the first byte)
        self._close()

    @property
    def finish_reasons(self) -> list[str | None]:
        return [c.finish_reason for c in self.choices]

    async def _events(self) -> AsyncIterator[ChoiceDelta]:
        timer = None
        if self._deadline is not None:
            timer = asyncio.get_running_loop().call_later(
                max(0.0, self._deadline - time.monotonic()), self._time_out)
        try:
            if self._prefill is not None:
                state = await self._run_prefill(self._prefill)
                for choice in self.choices:
                    choice.request.initial_state = state
            if len(self.choices) == 1:
                async for delta in self._run(self.choices[0]):
                    yield delta
            else:
                async for delta in self._merged():
                    yield delta
            if self._on_complete is not None:
                await self._on_complete(self)
            self._report("stop" if all(r == "stop" for r in self.finish_reasons) else
                         next(r for r in self.finish_reasons if r != "stop"))
        except APIError as e:
            self.error = e.code or e.type
            self._report("timeout" if self._is_timed_out else "error")
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._report("abort")
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._close()

    def _report(self, reason: str) -> None:
        self.metrics.finished(reason, time.monotonic() - self.arrival, self.usage.prompt_tokens,
                              self.usage.completion_tokens)

    def _time_out(self) -> None:
        self._is_timed_out = True
        for request_id in list(self._running):
            self.engine.abort(request_id)

    def _close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        for request_id in list(self._running):  # a consumer that left: free the slots now
            self.engine.abort(request_id)
        self._running.clear()
        if self._on_close is not None:
            self._on_close()

    def _start(self, request: Request):
        try:
            stream = self.engine.generate(request)
        except EngineOverloaded as e:
            raise overloaded(str(e)) from e
        except InvalidRequestError as e:
            raise bad_request(str(e)) from e
        self._running.add(request.request_id)
        return stream

    def _check_output(self, reason: str | None) -> None:
        if reason == "abort":
            if self._is_timed_out:
                raise timed_out("the request ran past its timeout")
            raise unavailable("the generation was stopped (the server is shutting down)")

    async def _next_outputs(self, request: Request):
        stream = self._start(request)
        try:
            async for output in stream:
                yield output
        except EngineOverloaded as e:
            raise overloaded(str(e)) from e
        except InvalidRequestError as e:
            raise bad_request(str(e)) from e
        except RuntimeError as e:  # the engine failed a step or is shut down
            raise unavailable(f"the engine could not finish the request: {e}") from e
        finally:
            self._running.discard(request.request_id)
            await stream.aclose()

    async def _run_prefill(self, request: Request) -> RetentionState:
        outputs = self._next_outputs(request)
        try:
            async for output in outputs:
                self._check_output(output.finish_reason)
                if output.finished:
                    return output.state
        finally:
            await outputs.aclose()
        raise unavailable("the prefill ended without a state")

    async def _run(self, choice: Choice) -> AsyncIterator[ChoiceDelta]:
        outputs = self._next_outputs(choice.request)
        try:
            async for delta in self._deltas(choice, outputs):
                yield delta
        finally:
            await outputs.aclose()  # leaving early (a stop string) aborts the engine request

    async def _deltas(self, choice: Choice, outputs) -> AsyncIterator[ChoiceDelta]:
        async for output in outputs:
            self._check_output(output.finish_reason)
            now = time.monotonic()
            if output.token_ids:
                if self.first_token_time is None:
                    self.first_token_time = now
                    self.metrics.first_token(now - self.arrival)
                elif choice.last_token_time is not None:
                    self.metrics.token_gap(now - choice.last_token_time)
                choice.last_token_time = now
            choice.token_ids += output.token_ids
            if output.prompt_state is not None:
                choice.prompt_state = output.prompt_state
            self.usage.completion_tokens += len(output.token_ids)
            text, calls = output.text, []
            if choice.tool_parser is not None:  # stop strings apply to content, not calls
                text, calls = self._parse_calls(choice.tool_parser, text, output.finished)
            text, is_stopped = choice.stop.push(text)
            reason = "stop" if is_stopped else output.finish_reason
            if output.finished:
                choice.final_state = output.state
                timings = output.timings
                if timings is not None and timings.scheduled is not None:
                    self.metrics.queued(timings.scheduled - timings.arrival)
                if not is_stopped:
                    text += choice.stop.flush()
            if reason == "stop" and choice.tool_calls:
                reason = "tool_calls"
            choice.is_stopped_by_string = is_stopped
            choice.finish_reason = reason
            choice.text_parts.append(text)
            yield ChoiceDelta(choice.index, text, output.token_ids, output.logprobs, reason,
                              calls)
            if reason is not None:
                return

    @staticmethod
    def _parse_calls(parser: ToolCallParser, text: str, is_finished: bool
                     ) -> tuple[str, list[ToolCallDelta]]:
        try:
            text, calls = parser.push(text)
        except ToolCallFormatError as e:  # the grammar guarantees the format: a server bug
            raise unavailable(f"the model's tool call could not be parsed: {e}") from e
        if is_finished:
            parser.finish()
        return text, calls

    async def _merged(self) -> AsyncIterator[ChoiceDelta]:
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(choice: Choice) -> None:
            try:
                async for delta in self._run(choice):
                    queue.put_nowait(delta)
                queue.put_nowait(done)
            except Exception as e:  # handed to the consumer, which raises it
                queue.put_nowait(e)

        tasks = [asyncio.create_task(pump(c)) for c in self.choices]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
