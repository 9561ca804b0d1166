"""`retserve chat`: a terminal chat. With `--url`, a client of a running retserve server; without,
the same chat service in this process. Either way the conversation is a session: each turn sends
only its new message, and the stored state carries the rest."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.sampling import SamplingParams

OnText = Callable[[str], None] | None


class LocalChat:
    """A session on an in-process ChatService."""

    def __init__(self, service, system: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0):
        self.service = service
        self.session_id = f"chat-{uuid.uuid4().hex}"
        self.pending = [{"role": "system", "content": system}] if system else []
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        self.num_cached_tokens = 0  # of the last turn: tokens it did not have to feed

    async def reply(self, user_text: str, on_text: OnText = None) -> str:
        from server.chat_turn import ChatTurn

        messages = [*self.pending, {"role": "user", "content": user_text}]
        stream = await self.service.start_chat(ChatTurn("local", messages, self.params,
                                                        session_id=self.session_id))
        parts = []
        async for delta in stream:
            parts.append(delta.text)
            if on_text and delta.text:
                on_text(delta.text)
        self.pending = []
        self.num_cached_tokens = stream.usage.cached_tokens
        return "".join(parts)


class RemoteChat:
    """A session on a retserve server, over its OpenAI-compatible streaming API."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 system: str | None = None, max_tokens: int = 128, temperature: float = 0.0):
        import httpx

        self.client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=600.0, headers={
            "Authorization": f"Bearer {api_key}"} if api_key else {})
        self.model = model
        self.session_id = f"chat-{uuid.uuid4().hex}"
        self.pending = [{"role": "system", "content": system}] if system else []
        self.max_tokens, self.temperature = max_tokens, temperature
        self.num_cached_tokens = 0

    async def reply(self, user_text: str, on_text: OnText = None) -> str:
        if self.model is None:
            self.model = (await self._get("/v1/models"))["data"][0]["id"]
        body = {"model": self.model, "stream": True, "session_id": self.session_id,
                "messages": [*self.pending, {"role": "user", "content": user_text}],
                "max_tokens": self.max_tokens, "temperature": self.temperature,
                "stream_options": {"include_usage": True}}
        parts = []
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(_error_message(response))
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk.get("usage"):
                    self.num_cached_tokens = chunk["usage"]["prompt_tokens_details"][
                        "cached_tokens"]
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content") or ""
                    parts.append(text)
                    if on_text and text:
                        on_text(text)
        self.pending = []
        return "".join(parts)

    async def _get(self, path: str) -> dict:
        response = await self.client.get(path)
        if response.status_code != 200:
            raise RuntimeError(_error_message(response))
        return response.json()

    async def close(self) -> None:
        await self.client.aclose()


def _error_message(response) -> str:
    try:
        return f"{response.status_code}: {response.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal (with a server: --url)")
    p.add_argument("--url", default=None, help="a retserve server, e.g. http://127.0.0.1:8000 "
                   "(default: run the model in this process)")
    p.add_argument("--api-key", default=None, help="API key for --url")
    p.add_argument("--model", default=None, help="checkpoint directory (in-process) or model "
                   "id (--url)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.set_defaults(func=_run)


def _run(args) -> int:
    return asyncio.run(_chat(args))


async def _chat(args) -> int:
    kwargs = dict(system=args.system, max_tokens=args.max_tokens, temperature=args.temperature)
    if args.url:
        chat, where = RemoteChat(args.url, args.model, args.api_key, **kwargs), args.url
    else:
        from server.local_service import local_service

        where = args.model or str(DEFAULT_MODEL_DIR)
        chat = LocalChat(local_service(where, max_num_seqs=4), **kwargs)
    interactive = sys.stdin.isatty()
    print(f"retserve chat: {where} (empty line or Ctrl-D to quit)", file=sys.stderr)
    try:
        while True:
            try:
                line = await asyncio.to_thread(input, "you> " if interactive else "")
            except EOFError:
                break
            if not line.strip():
                break
            print("bot> ", end="", flush=True)
            try:
                await chat.reply(line, on_text=lambda t: print(t, end="", flush=True))
            except RuntimeError as e:
                print(f"\nretserve chat: {e}", file=sys.stderr)
                return 1
            print(f"   [{chat.num_cached_tokens} tokens reused]" if interactive else "")
    finally:
        await _close(chat)
    return 0


async def _close(chat) -> None:
    if isinstance(chat, RemoteChat):
        await chat.close()
    else:
        from server.local_service import close_service

        await close_service(chat.service)
