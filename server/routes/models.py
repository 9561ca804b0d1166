"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import RuntimeDep, TenantDep
from server.errors import not_found
from server.openapi import API_ERRORS, error_responses
from server.protocol.models import ModelCard, ModelList
from server.runtime import Runtime

router = APIRouter(tags=["models"], responses=error_responses(*API_ERRORS))


def check_model(runtime: Runtime, name: str) -> str:
    """The served name for a request's `model`; 404 in OpenAI's shape for any other."""
    served = runtime.settings.model_name
    if name != served:
        raise not_found(f"the model {name!r} does not exist; this server serves {served!r}",
                        "model", "model_not_found")
    return served


def _card(runtime: Runtime) -> ModelCard:
    config = runtime.engine.info.model_config
    return ModelCard(id=runtime.settings.model_name, created=runtime.created,
                     max_model_len=runtime.settings.max_prompt_tokens,
                     state_bytes=runtime.state_bytes,
                     kv_cache_bytes_per_token=2 * config.num_layers * config.hidden_size * 2)


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep, _: TenantDep) -> ModelList:
    return ModelList(data=[_card(runtime)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard,
            responses=error_responses(404))
async def get_model(model_id: str, runtime: RuntimeDep, _: TenantDep) -> ModelCard:
    check_model(runtime, model_id)
    return _card(runtime)
