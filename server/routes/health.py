"""Liveness, readiness, version and metrics: what orchestrators and gateways poll."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server import __version__

router = APIRouter(tags=["operations"])


class Status(BaseModel):
    status: str
    error: str | None = None


class Readiness(Status):
    store: str
    store_backend: str
    in_flight: int
    reason: str | None = None


class Version(BaseModel):
    version: str
    model: str
    model_fingerprint: str | None = None


def _status_docs(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, 503: {"model": Status, "description": "loading, failed or "
                                         "draining"}}


@router.get("/health", summary="Liveness: 200 once the model is loaded, 503 while it loads",
            responses=_status_docs(Status))
async def health(request: Request) -> JSONResponse:
    lifecycle = request.app.state.lifecycle
    runtime = request.app.state.runtime
    if runtime is None:
        return JSONResponse({"status": lifecycle.phase, "error": lifecycle.failure},
                            status_code=503)
    if not runtime.engine.is_alive and not lifecycle.is_draining:  # restart me
        return _engine_stopped()
    return JSONResponse({"status": "ok"})


def _engine_stopped() -> JSONResponse:
    return JSONResponse({"status": "failed", "error": "the engine has stopped"},
                        status_code=503)


@router.get("/ready", summary="Readiness: 200 when requests can be served (the body says if the "
            "store is degraded); 503 while loading or draining",
            responses=_status_docs(Readiness))
async def ready(request: Request) -> JSONResponse:
    lifecycle, runtime = request.app.state.lifecycle, request.app.state.runtime
    if runtime is None or lifecycle.is_draining:
        return JSONResponse({"status": lifecycle.phase, "error": lifecycle.failure},
                            status_code=503)
    if not runtime.engine.is_alive:
        return _engine_stopped()
    problem = await runtime.check_store()
    body = {"status": "ready", "store": "ok" if problem is None else "degraded",
            "store_backend": runtime.store.backend,
            "in_flight": lifecycle.num_in_flight}
    if problem is not None:
        body["reason"] = f"state store unreachable ({problem}): turns are served without "\
                         "reuse (full prefill)"
    return JSONResponse(body)


@router.get("/version", responses={200: {"model": Version}})
async def version(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    body = {"version": __version__, "model": request.app.state.settings.model_name}
    if runtime is not None:
        body["model_fingerprint"] = runtime.service.model_fingerprint
    return JSONResponse(body)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
