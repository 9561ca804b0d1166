"""A chat service in this process, without HTTP: what `retserve chat` (no --url) and
`retserve eval recall` run on. States go through a store as record bytes, as on a server."""

from __future__ import annotations

from pathlib import Path

from engine.async_engine import AsyncEngine
from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model import RetNet
from engine.tokenizer import Tokenizer
from server.chat_service import ChatService, ServiceOptions
from state_store import ConversationStore, HotCache, open_store


def local_service(model_dir: str | Path | None = None, *, model: RetNet | None = None,
                  store_url: str = "memory://", namespace: str = "rs", max_num_seqs: int = 8,
                  hot_cache_bytes: int = 0, options: ServiceOptions | None = None
                  ) -> ChatService:
    """A service on the model in `model_dir` (default: the shipped one), or on `model` with
    that directory's tokenizer. No hot cache by default: every turn decodes its state from the
    stored record bytes."""
    model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    tokenizer = Tokenizer.from_dir(model_dir)
    model = model if model is not None else load_model(model_dir)
    config = EngineConfig(max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max(2048, 8 * max_num_seqs))
    engine = AsyncEngine(LLMEngine(model, config, tokenizer))
    store = open_store(store_url)
    conversations = ConversationStore(
        store, engine.info.model_fingerprint, namespace=namespace,
        hot_cache=HotCache(hot_cache_bytes) if hot_cache_bytes else None)
    return ChatService(engine, tokenizer, conversations, options)


async def close_service(service: ChatService) -> None:
    service.engine.shutdown()
    if service.conversations is not None:
        await service.conversations.store.close()
