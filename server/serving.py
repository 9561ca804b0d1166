"""Running the app under uvicorn with a graceful drain: on SIGTERM (or Ctrl-C) the server stays
up, /ready turns 503 and new API requests get 503, requests in flight run to the end (their
states are saved as usual) for up to `drain_timeout` seconds; then uvicorn stops and the process
exits 0. A second signal stops at once."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from server.http_guard import GuardedHttpProtocol
from server.lifecycle import Lifecycle
from server.settings import Settings

logger = logging.getLogger("retserve.serving")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_timeout: float):
        super().__init__(config)
        self.lifecycle, self.drain_timeout = lifecycle, drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        # uvicorn's own handler would stop accepting at once and re-raise the signal at exit
        if self.lifecycle.is_draining or self._loop is None:
            logger.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            AppStatus.should_exit = True
            return
        logger.info("%s: draining %d requests in flight (up to %.0f s)",
                    signal.Signals(sig).name, self.lifecycle.num_in_flight, self.drain_timeout)
        self.lifecycle.begin_drain()
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        finished = await self.lifecycle.wait_idle(self.drain_timeout)
        if not finished:
            logger.warning("drain timeout: %d requests still in flight are cut",
                           self.lifecycle.num_in_flight)
        AppStatus.should_exit = True  # ends streams still open
        self.should_exit = True


def serve(app: FastAPI, settings: Settings) -> None:
    protocol = GuardedHttpProtocol.with_limits(settings.max_header_bytes, settings.header_timeout)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=5, timeout_keep_alive=30,
                            http=protocol)
    DrainingServer(config, app.state.lifecycle, settings.drain_timeout).run()
