"""The asyncio side of an engine whose loop runs elsewhere (a thread: `AsyncEngine`; a process
of its own: `ProcessEngine`): `generate()` streams a request's outputs, `abort()` ends one."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from engine.engine_info import EngineInfo
from engine.engine_stats import EngineStats
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.sequence import Request, RequestOutput


class EngineClient(ABC):
    def __init__(self) -> None:
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_stopped = False

    @property
    @abstractmethod
    def info(self) -> EngineInfo: ...

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    def shutdown(self) -> None:
        """Stops the engine; open streams end with an error. Call from the event loop."""

    @abstractmethod
    def _prepare(self, request: Request) -> object:
        """Validates the request now (InvalidRequestError); what the "add" command carries."""

    @abstractmethod
    def _num_waiting(self) -> int:
        """Requests queued for a slot, those submitted and not yet seen by the engine too."""

    @abstractmethod
    def _submit(self, command: tuple) -> None:
        """Hands ("add", payload) or ("abort", request id) to the engine; safe from __del__."""

    @abstractmethod
    def _start(self) -> None:
        """Starts what delivers outputs to `_deliver` (once, on the first stream)."""

    @property
    def pid(self) -> int | None:
        """The engine process's id; None where the engine runs in this process."""
        return None

    @property
    def is_alive(self) -> bool:
        """Whether the engine can still take requests (False once shut down or gone)."""
        return not self._is_stopped

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Validates now (InvalidRequestError, EngineOverloaded); the request is queued when the
        iterator is first awaited and aborted if the iterator is closed before it finishes."""
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        if not request.admitted and self._num_waiting() >= self.info.config.max_waiting:
            raise EngineOverloaded("the waiting queue is full")
        return self._stream(request.request_id, self._prepare(request))

    async def _stream(self, request_id: str, payload: object) -> AsyncIterator[RequestOutput]:
        self._ensure_started()
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._submit(("add", payload))
        is_finished = False
        error = None
        try:
            while True:
                item = error or await stream.get()
                if isinstance(item, BaseException):
                    is_finished = True
                    raise item
                # a consumer that fell behind takes what piled up as one output: per-output
                # work (an SSE event, a socket write) then stops competing with the engine
                while not item.finished and not stream.empty():
                    later = stream.get_nowait()
                    if isinstance(later, BaseException):
                        error = later
                        break
                    item = item.merged(later)
                is_finished = item.finished
                yield item
                if is_finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not is_finished:
                self._submit(("abort", request_id))

    def abort(self, request_id: str) -> None:
        """Ends a request; its stream receives a final output with finish_reason "abort"."""
        self._submit(("abort", request_id))

    def _ensure_started(self) -> None:
        if self._is_stopped:
            raise RuntimeError("the engine is shut down")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._start()

    def _deliver(self, items: list) -> None:
        """From the thread that receives outputs: onto the event loop, in one callback."""
        if items:
            self._on_loop(self._dispatch, items)

    def _on_loop(self, callback, arg) -> None:
        """Runs callback(arg) on the event loop, from any thread; nothing before the first
        stream (nobody listens yet) or once the loop is closed (nobody listens any more)."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(callback, arg)
            except RuntimeError:  # the event loop is closed
                pass

    def _dispatch(self, items: list) -> None:
        for item in items:
            if isinstance(item, RequestOutput):
                stream = self._streams.get(item.request_id)
                if stream is not None:
                    stream.put_nowait(item)
            else:
                request_id, error = item
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.put_nowait(error)

    def _fail_streams(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)
