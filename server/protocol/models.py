"""GET /v1/models."""

from __future__ import annotations

from typing import Literal

from server.protocol.common import OpenAIModel


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "retserve"
    max_model_len: int | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
