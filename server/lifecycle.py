"""Where the server is in its life: loading the model, ready, draining after SIGTERM. Counts the
API requests in flight, so a drain knows when the last one has finished."""

from __future__ import annotations

import asyncio
import time


class Lifecycle:
    LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"

    def __init__(self) -> None:
        self.phase = self.LOADING
        self.failure: str | None = None
        self.num_in_flight = 0
        self.started = time.time()
        self._idle: asyncio.Event | None = None

    @property
    def is_draining(self) -> bool:
        return self.phase == self.DRAINING

    def enter(self) -> None:
        self.num_in_flight += 1

    def leave(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0 and self._idle is not None:
            self._idle.set()

    def begin_drain(self) -> None:
        self.phase = self.DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        """True once no API request is in flight; False if `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while self.num_in_flight > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return self.num_in_flight == 0
        return True
