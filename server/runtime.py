"""The long-lived objects of a running server, built once from the settings: model, tokenizer,
engine, state store and the chat service that joins them."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

from engine.async_engine import AsyncEngine
from engine.dtypes import dtype_from_name
from engine.engine_client import EngineClient
from engine.engine_config import EngineConfig
from engine.engine_process import EngineLaunch, ProcessEngine
from engine.llm_engine import LLMEngine
from engine.tokenizer import Tokenizer
from server.chat_service import ChatService, ServiceOptions
from server.logs import configure_logging
from server.malloc_tuning import tune_malloc
from server.metrics import ServerMetrics
from server.protocol.common import Limits
from server.settings import Settings
from server.token_text import TokenText
from state_store import ConversationStore, HotCache, StateStore, StoreUnavailable, open_store
from state_store.responses import ResponseStore

logger = logging.getLogger("retserve.runtime")
STORE_DEGRADED_SECONDS = 30.0  # a store error this recent keeps /ready at "degraded"


def engine_process_setup(log_format: str, log_level: str) -> None:
    """The engine process's start-up: the server's malloc tuning and log lines (one format in
    the server's output, JSON included)."""
    tune_malloc()
    configure_logging(log_format, log_level)


@dataclass
class Runtime:
    settings: Settings
    tokenizer: Tokenizer
    engine: EngineClient
    store: StateStore
    conversations: ConversationStore
    service: ChatService
    token_text: TokenText
    limits: Limits
    created: int
    responses: ResponseStore | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: ServerMetrics) -> Runtime:
        """Loads the model and opens the store (blocking: call it off the event loop)."""
        if settings.num_threads:  # process-wide, at start-up (the engine thread sets its own)
            torch.set_num_threads(settings.num_threads)
        tokenizer = Tokenizer.from_dir(settings.model)
        config = EngineConfig(
            max_num_seqs=settings.max_num_seqs, max_waiting=settings.max_waiting,
            max_num_batched_tokens=max(2048, 2 * settings.max_num_seqs + 512),
            device=settings.device, dtype=settings.dtype, num_threads=settings.num_threads,
            stream_interval=settings.stream_interval)
        # before the engine: a store URL that cannot be opened leaves no engine running
        store = open_store(settings.resolved_store_url, default_ttl=settings.state_ttl,
                           timeout=settings.store_timeout)
        if settings.engine_process:
            engine: EngineClient = ProcessEngine(EngineLaunch(
                str(settings.model.resolve()), config, str(settings.model.resolve()),
                setup=functools.partial(engine_process_setup, settings.log_format,
                                        settings.log_level)))
        else:
            engine = AsyncEngine(LLMEngine.from_checkpoint(settings.model, config, tokenizer))
        info = engine.info
        hot_cache = HotCache(settings.hot_cache_mb * 2**20) if settings.hot_cache_mb else None
        conversations = ConversationStore(store, info.model_fingerprint, hot_cache=hot_cache,
                                          namespace=settings.store_namespace,
                                          ttl=settings.state_ttl)
        options = ServiceOptions(
            max_prompt_tokens=settings.max_prompt_tokens,
            max_active=settings.max_num_seqs + settings.max_waiting,
            request_timeout=settings.request_timeout, parent_grace=settings.parent_grace,
            state_dtype=settings.state_dtype, reuse_states=settings.reuse_states)
        service = ChatService(engine, tokenizer, conversations, options, metrics)
        limits = Limits(max_output_tokens=settings.max_output_tokens,
                        default_max_tokens=settings.default_max_tokens, max_n=settings.max_n,
                        vocab_size=info.model_config.vocab_size)
        responses = ResponseStore(store, info.model_fingerprint, ttl=settings.response_ttl,
                                  max_per_tenant=settings.max_responses_per_tenant,
                                  namespace=settings.store_namespace, hot_cache=hot_cache)
        runtime = cls(settings, tokenizer, engine, store, conversations, service,
                      TokenText(tokenizer, settings.model / "tokenizer.json"), limits,
                      int(time.time()), responses)
        metrics.attach(engine.stats, store.stats.snapshot, runtime.state_bytes,
                       runtime.is_store_up, engine.pid)
        logger.info("loaded %s (%s, fingerprint %s), %d state slots of %d bytes, store %s",
                    settings.model_name, settings.model, info.model_fingerprint[:12],
                    info.num_slots, runtime.state_bytes, store.backend)
        return runtime

    @property
    def state_bytes(self) -> int:
        """Bytes of one conversation's stored state: fixed by the model, whatever its length."""
        itemsize = torch.finfo(dtype_from_name(self.settings.state_dtype)).bits // 8
        return self.engine.info.model_config.state_numel * itemsize

    def is_store_up(self) -> bool:
        failed = self.service.last_store_error
        return failed is None or time.time() - failed[0] > STORE_DEGRADED_SECONDS

    async def check_store(self) -> str | None:
        """None if the store answers now, else why not."""
        try:
            await self.store.get(f"{self.settings.store_namespace}:ready-probe")
        except (StoreUnavailable, OSError, TimeoutError) as e:
            return f"{type(e).__name__}: {e}"
        except Exception as e:  # an error reply: the store is there but unwell
            return f"{type(e).__name__}: {e}"
        return None

    async def close(self) -> None:
        self.engine.shutdown()
        await self.store.close()
