"""The asyncio facade over `LLMEngine`: generate / abort; one background thread owns the device."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

import torch

from engine.engine_config import EngineConfig
from engine.engine_stats import EngineStats
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.sequence import Request, RequestOutput, Sequence

logger = logging.getLogger(__name__)


class AsyncEngine:
    """asyncio facade: `generate()` streams a request's outputs; a background thread runs
    `LLMEngine.step()` and hands each step's outputs to the event loop in one callback."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", Sequence) | ("abort", id)
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._is_stopped = False
        self._held: dict[str, RequestOutput] = {}  # engine thread: outputs not yet delivered

    @classmethod
    def from_model(cls, model: RetNet, config: EngineConfig | None = None,
                   tokenizer=None) -> AsyncEngine:
        return cls(LLMEngine(model, config, tokenizer))

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Validates now (InvalidRequestError, EngineOverloaded); the request is queued when the
        iterator is first awaited and aborted if the iterator is closed before it finishes."""
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        if not request.admitted and self.engine.num_waiting + self._inbox.qsize() \
                >= self.engine.config.max_waiting:
            raise EngineOverloaded("the waiting queue is full")
        return self._stream(self.engine.make_sequence(request))

    async def _stream(self, seq: Sequence) -> AsyncIterator[RequestOutput]:
        self._ensure_started()
        request_id = seq.request_id
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._submit(("add", seq))
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

    def _submit(self, command: tuple) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    def _ensure_started(self) -> None:
        if self._is_stopped:
            raise RuntimeError("the engine is shut down")
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="retserve-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stops the engine thread; open streams end with an error. Call from the event loop."""
        self._is_stopped = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.engine.close()
        for stream in self._streams.values():
            stream.put_nowait(RuntimeError("the engine is shut down"))

    def _run(self) -> None:
        if self.engine.config.num_threads:
            torch.set_num_threads(self.engine.config.num_threads)
        while not self._is_stopped:
            self._wakeup.clear()
            delivered = self._drain_inbox()
            if not self.engine.has_unfinished_requests():
                if delivered:
                    self._deliver(delivered)
                self._wakeup.wait()
                continue
            try:
                delivered += self._hold_back(self.engine.step())
            except Exception as e:  # a bug or device error: fail what is running, keep serving
                logger.exception("engine step failed")
                self._held.clear()
                delivered += [(output.request_id, e) for output in self.engine.abort_all()]
            if delivered:
                self._deliver(delivered)

    def _drain_inbox(self) -> list:
        delivered = []
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return delivered
            if kind == "add":
                try:
                    self.engine.add_sequence(payload)
                except (EngineOverloaded, InvalidRequestError) as e:
                    delivered.append((payload.request_id, e))
            else:
                held = self._held.pop(payload, None)
                output = self.engine.abort_request(payload)
                if output is not None:
                    delivered.append(output if held is None else held.merged(output))

    def _hold_back(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """With a stream interval, a running request's tokens after its first are joined into
        one output per `stream_interval` of them; a finished one takes what was held."""
        interval = self.engine.config.stream_interval
        if interval == 1:  # nothing is ever held
            return outputs
        ready = []
        for output in outputs:
            held = self._held.pop(output.request_id, None)
            if held is not None:
                output = held.merged(output)
            is_first = output.num_generated_tokens == len(output.token_ids)
            if output.finished or is_first or len(output.token_ids) >= interval:
                ready.append(output)
            else:
                self._held[output.request_id] = output
        return ready

    def _deliver(self, items: list) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
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
