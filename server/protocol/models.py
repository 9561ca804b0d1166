"""GET /v1/models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.protocol.common import OpenAIModel


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "retserve"
    max_model_len: int | None = Field(None, description="tokens one request may feed")
    state_bytes: int | None = Field(None, description="retserve: bytes of one conversation's "
                                    "stored state, whatever its length")
    kv_cache_bytes_per_token: int | None = Field(
        None, description="retserve: bytes a transformer with this model's layers and hidden "
        "size (fp16) would add to its KV cache per token: computed, for comparison")


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
