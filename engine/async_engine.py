"""The asyncio facade over an `LLMEngine` in this process: one background thread owns the
device and runs the loop (see `ProcessEngine` for the loop in a process of its own)."""

from __future__ import annotations

import threading

from engine.engine_client import EngineClient
from engine.engine_config import EngineConfig
from engine.engine_info import EngineInfo
from engine.engine_loop import EngineLoop
from engine.engine_stats import EngineStats
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.sequence import Request, Sequence


class AsyncEngine(EngineClient):
    """`generate()` streams a request's outputs; a background thread runs `LLMEngine.step()`
    and hands each step's outputs to the event loop in one callback."""

    def __init__(self, engine: LLMEngine):
        super().__init__()
        self.engine = engine
        self._info = engine.info
        self.core = EngineLoop(engine, self._deliver)
        self._thread: threading.Thread | None = None

    @classmethod
    def from_model(cls, model: RetNet, config: EngineConfig | None = None,
                   tokenizer=None) -> AsyncEngine:
        return cls(LLMEngine(model, config, tokenizer))

    @property
    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _prepare(self, request: Request) -> Sequence:
        return self.engine.make_sequence(request)  # detokenizer and grammar built here

    def _num_waiting(self) -> int:
        return self.engine.num_waiting + self.core.num_queued

    def _submit(self, command: tuple) -> None:
        self.core.submit(command)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self.core.run, name="retserve-engine",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._is_stopped = True
        self.core.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.engine.close()
        self._fail_streams(RuntimeError("the engine is shut down"))
