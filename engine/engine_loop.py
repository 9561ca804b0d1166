"""The loop that drives an `LLMEngine` wherever it runs (AsyncEngine's thread, the engine
process): commands in through a thread-safe inbox, each step's outputs out through `deliver`."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import torch

from engine.errors import EngineOverloaded, InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.sequence import RequestOutput, Sequence

logger = logging.getLogger(__name__)

# what `deliver` receives: outputs, and (request id, error) for a request that failed
Delivery = list[RequestOutput | tuple[str, BaseException]]


class EngineLoop:
    """Commands: ("add", Sequence or checked Request), ("abort", request id). `run()` steps
    while there is work, waits while there is none; `deliver` gets what each round made, and an
    empty list each time the loop goes idle."""

    def __init__(self, engine: LLMEngine, deliver: Callable[[Delivery], None]):
        self.engine = engine
        self._deliver = deliver
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # reentrant: safe from __del__
        self._wakeup = threading.Event()
        self._is_stopped = False
        self._held: dict[str, RequestOutput] = {}  # outputs not yet delivered (stream interval)
        self.num_added = 0  # "add" commands taken from the inbox

    @property
    def num_queued(self) -> int:
        """Commands submitted and not yet taken."""
        return self._inbox.qsize()

    @property
    def num_held(self) -> int:
        """Outputs held back for the stream interval."""
        return len(self._held)

    def submit(self, command: tuple) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    def stop(self) -> None:
        """`run()` returns after the round it is in."""
        self._is_stopped = True
        self._wakeup.set()

    def run(self) -> None:
        if self.engine.config.num_threads:  # torch's thread count is the calling thread's
            torch.set_num_threads(self.engine.config.num_threads)
        while not self._is_stopped:
            self._wakeup.clear()
            delivered = self._drain_inbox()
            if not self.engine.has_unfinished_requests():
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

    def _drain_inbox(self) -> Delivery:
        delivered: Delivery = []
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return delivered
            if kind == "add":
                self.num_added += 1
                try:
                    seq = payload if isinstance(payload, Sequence) else \
                        self.engine.make_sequence(payload, is_checked=True)
                    self.engine.add_sequence(seq)
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
