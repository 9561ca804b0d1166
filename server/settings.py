"""Server settings: one pydantic-settings object. Environment variables `RETSERVE_<FIELD>`, and
the flags of `retserve serve` (which override them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.checkpoint import DEFAULT_MODEL_DIR


def default_data_dir() -> Path:
    """Where the embedded store lives: survives restarts, per user (XDG)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "retserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETSERVE_", extra="forbid", frozen=True,
                                      protected_namespaces=())

    # listening
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # the model
    model: Path = Field(DEFAULT_MODEL_DIR, description="checkpoint directory")
    served_model_name: str | None = Field(None, description="model id clients use "
                                          "(default: the checkpoint directory's name)")
    device: str | None = Field(None, description="cuda or cpu (default: cuda when present)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")
    # the engine
    max_num_seqs: int = Field(64, ge=1, le=4096, description="conversations decoding at once")
    max_waiting: int = Field(256, ge=0, description="queued requests before 429")
    max_prompt_tokens: int = Field(65536, ge=1, description="tokens one request may feed")
    max_output_tokens: int = Field(4096, ge=1, description="largest max_tokens a request may ask")
    default_max_tokens: int = Field(512, ge=1)
    max_n: int = Field(16, ge=1, le=256, description="largest n (choices per request)")
    request_timeout: float = Field(600.0, gt=0, description="seconds a request may run")
    engine_process: bool = Field(True, description="run the engine in a process of its own "
                                 "(off: in a thread of the server's, sharing its GIL)")
    stream_interval: int = Field(1, ge=1, le=64, description="tokens per streamed chunk after "
                                 "the first: above 1, less serving work per token")
    keepalive_seconds: float = Field(10.0, gt=0, description="SSE comment on a stream idle "
                                     "this long (keeps proxies from closing it)")
    # the state store
    data_dir: Path = Field(default_factory=default_data_dir)
    store_url: str | None = Field(None, description="redis://, redis+sentinel://, "
                                  "redis+cluster://, sqlite:///path or memory:// "
                                  "(default: sqlite in data_dir)")
    store_namespace: str = Field("rs", pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                                 description="key prefix: deployments sharing a Redis apart")
    store_timeout: float = Field(1.0, gt=0, description="seconds per store call")
    state_ttl: float = Field(7 * 86400.0, gt=0, description="expiry of stored states, seconds")
    parent_grace: float = Field(120.0, gt=0, description="seconds a state stays after a turn "
                                "extends it (to regenerate the last reply)")
    state_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    hot_cache_mb: int = Field(256, ge=0, description="in-process cache of recent states")
    reuse_states: bool = Field(True, description="continue from stored states (off: every "
                               "turn prefills its whole conversation)")
    # stored responses (/v1/responses, store: true): one state record each
    response_ttl: float = Field(30 * 86400.0, gt=0, description="seconds a stored response "
                                "lives after it is made")
    max_responses_per_tenant: int = Field(1000, ge=1, description="stored responses a tenant "
                                          "keeps; storing one more deletes its oldest")
    # what one client may send (each refusal closes its connection)
    max_request_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body "
                                   "(413 above)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="largest request line and "
                                  "headers together (431 above)")
    header_timeout: float = Field(10.0, gt=0, description="seconds a request's headers may "
                                  "take to arrive (408 after)")
    body_timeout: float = Field(30.0, gt=0, description="seconds a request's body may take "
                                "to arrive (408 after)")
    # access
    api_keys: SecretStr | None = Field(None, description="comma-separated KEY or KEY:TENANT")
    api_keys_file: Path | None = Field(None, description="file of lines KEY [TENANT]")
    # operation
    playground: bool = Field(True, description="serve the chat page at / (off: the API alone)")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get after "
                                 "SIGTERM")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens must be <= max_output_tokens")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} does not exist")
        return self

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'state.db'}"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.resolve().name
