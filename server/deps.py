"""Shared route dependencies as Annotated aliases: settings, the loaded runtime, the tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from server.errors import unavailable
from server.runtime import Runtime
from server.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    if runtime is None:
        lifecycle = request.app.state.lifecycle
        if lifecycle.failure:
            raise unavailable(f"the model failed to load: {lifecycle.failure}", retry_after=60)
        raise unavailable("the model is still loading")
    return runtime


def get_tenant(request: Request,
               authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant of the request's API key (401 in OpenAI's shape when keys are configured and
    this one is missing or unknown)."""
    return request.app.state.api_keys.tenant_for(authorization)


def get_session_header(x_session_id: Annotated[str | None, Header(max_length=256)] = None
                       ) -> str | None:
    return x_session_id or None


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
TenantDep = Annotated[str, Depends(get_tenant)]
SessionHeaderDep = Annotated[str | None, Depends(get_session_header)]
