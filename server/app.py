"""The FastAPI app: assembled here, nothing heavy at import. The lifespan starts loading the
model in a thread and returns at once, so /health can answer 503 while it loads; the runtime
(engine, store, chat service) lands on app.state when ready."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from server import __version__
from server.auth import ApiKeys
from server.body_limit import BodyLimitMiddleware
from server.errors import install_error_handlers
from server.lifecycle import Lifecycle
from server.metrics import ServerMetrics
from server.middleware import RequestMiddleware
from server.openapi import install_openapi
from server.routes import chat, completions, health, models, playground, responses, sessions
from server.runtime import Runtime
from server.settings import Settings
from server.streaming import ClientDisconnected

logger = logging.getLogger("retserve.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    lifecycle = Lifecycle()
    metrics = ServerMetrics(settings.model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(_load(app, settings, lifecycle, metrics))
        try:
            yield
        finally:
            loading.cancel()
            runtime = app.state.runtime
            if runtime is not None:
                await runtime.close()

    app = FastAPI(title="retserve", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible chat over RetNet: each conversation is one "
                  "fixed-size state, stored between turns, so a follow-up turn feeds only its "
                  "new tokens.")
    app.state.settings = settings
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.api_keys = ApiKeys.parse(
        settings.api_keys.get_secret_value() if settings.api_keys else None,
        settings.api_keys_file)
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it: the client left

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       timeout=settings.body_timeout)
    app.add_middleware(RequestMiddleware, lifecycle=lifecycle, metrics=metrics)  # outermost
    for module in (chat, completions, responses, models, sessions, health):
        app.include_router(module.router)
    if settings.playground:
        playground.install(app)
    install_openapi(app)
    return app


async def _load(app: FastAPI, settings: Settings, lifecycle: Lifecycle,
                metrics: ServerMetrics) -> None:
    try:
        app.state.runtime = await asyncio.to_thread(Runtime.build, settings, metrics)
    except Exception as e:  # reported by /health and every request; the process stays up
        logger.exception("the model failed to load")
        lifecycle.phase, lifecycle.failure = Lifecycle.FAILED, f"{type(e).__name__}: {e}"
        return
    # what loading made lives as long as the process: out of the collector's sight, so the
    # collections a request's many small objects trigger (a long history is thousands of
    # messages) do not walk it every time
    gc.collect()
    gc.freeze()
    if not lifecycle.is_draining:
        lifecycle.phase = Lifecycle.READY
