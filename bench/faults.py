"""Faults under load: streaming clients hold conversations against two replicas sharing one
Redis while Redis is killed and restarted, a replica is sent SIGTERM (it drains) and restarted,
and the other is killed with SIGKILL and restarted. Then every conversation takes more turns.

Every request is sorted by what its client saw: `completed` (the stream ended with a finish
reason), `failed` with a clear error (an HTTP error, an error event in the stream, a refused or
cut connection), or `lost` (no answer within the bound, or a stream that ended with neither a
finish reason nor an error). Afterwards every state record in Redis is read back: it must
decode (no half-written record), and a record of a conversation a client knows must equal
that conversation fed whole through the model (a recomputation), tensor by tensor."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from dataclasses import dataclass, field

import httpx
import openai
import redis
import torch

from bench.redis_process import RedisServer
from bench.server_process import MODEL_NAME, ServerProcess
from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.tokenizer import Tokenizer
from server.auth import ANONYMOUS_TENANT
from server.state_records import state_from_record
from state_store import RecordError, decode_record, open_store
from state_store.keys import content_keys

MAX_TOKENS = 8
REQUEST_BOUND = 60.0  # seconds; a request without an answer by then is lost
TOPICS = ("boats", "rivers", "bread", "trains", "owls", "glass", "maps", "tea")


@dataclass
class FaultReport:
    completed: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    lost: collections.Counter = field(default_factory=collections.Counter)
    conversations: int = 0
    conversations_continued: int = 0  # every turn after the faults completed
    faults: list[dict] = field(default_factory=list)
    records_read: int = 0
    records_refused: int = 0  # did not decode: half-written or corrupt
    records_verified: int = 0  # equal to the recomputation
    records_wrong: int = 0  # decoded, known conversation, different state
    records_unmatched: int = 0  # decoded; no client saw that reply whole (a cut stream)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"completed": self.completed, "failed_with_error": sum(self.failed.values()),
                "failed_by_reason": dict(self.failed), "lost": sum(self.lost.values()),
                "lost_by_reason": dict(self.lost), "conversations": self.conversations,
                "conversations_continued": self.conversations_continued,
                "faults": self.faults, "records_read": self.records_read,
                "records_refused": self.records_refused,
                "records_verified": self.records_verified, "records_wrong": self.records_wrong,
                "records_unmatched": self.records_unmatched, "seconds": round(self.seconds, 1)}


class Conversation:
    def __init__(self, index: int):
        self.index = index
        self.messages: list[dict] = []  # every turn that completed, with its reply
        self.num_turns = 0
        self.topic = f"{TOPICS[index % len(TOPICS)]} ({uuid.uuid4().hex[:6]})"

    def next_question(self) -> dict:
        return {"role": "user", "content": f"Tell me about {self.topic}, part {self.num_turns}."}


async def stream_turn(client: openai.AsyncOpenAI, messages: list[dict]
                      ) -> tuple[str, str | None]:
    """('completed', reply) | ('failed', reason) | ('lost', reason)."""
    parts: list[str] = []
    finish = None
    try:
        async with asyncio.timeout(REQUEST_BOUND):
            stream = await client.chat.completions.create(
                model=MODEL_NAME, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0,
                stream=True)
            async for chunk in stream:
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
    except TimeoutError:
        return "lost", "no answer in time"
    except openai.APIStatusError as e:  # an HTTP error or an error event in the stream
        return "failed", f"http {e.status_code}" if e.status_code else "error event"
    except openai.APIError as e:
        return "failed", type(e).__name__  # refused or cut connection: the client knows
    if finish is None:
        return "lost", "stream ended without a finish reason"
    return "completed", "".join(parts)


class FaultRun:
    def __init__(self, redis_server: RedisServer, replicas: list[ServerProcess],
                 num_clients: int = 32, turns_after: int = 2, pause: float = 2.0,
                 think: float = 1.0):
        """`pause`: seconds of load before each fault; `think`: seconds a client waits
        between turns (a person reading the reply)."""
        self.redis, self.replicas = redis_server, replicas
        self.num_clients, self.turns_after, self.pause = num_clients, turns_after, pause
        self.think = think
        self.report = FaultReport()
        self.conversations = [Conversation(i) for i in range(num_clients)]

    async def run(self) -> FaultReport:
        start = time.monotonic()
        stop = asyncio.Event()
        clients = [self.replicas[i].async_client(timeout=REQUEST_BOUND)
                   for i in range(len(self.replicas))]
        talking = [asyncio.create_task(self._talk(c, clients, stop))
                   for c in self.conversations]
        await self._faults()
        stop.set()
        await asyncio.gather(*talking)
        after = await asyncio.gather(*[self._continue(c, clients) for c in self.conversations])
        self.report.conversations = len(self.conversations)
        self.report.conversations_continued = sum(after)
        for client in clients:
            await client.close()
        self.report.seconds = time.monotonic() - start
        return self.report

    def _count(self, outcome: str, detail: str | None) -> None:
        if outcome == "completed":
            self.report.completed += 1
        elif outcome == "failed":
            self.report.failed[detail] += 1
        else:
            self.report.lost[detail] += 1

    async def _turn(self, conversation: Conversation, client: openai.AsyncOpenAI) -> bool:
        question = conversation.next_question()
        outcome, detail = await stream_turn(client, [*conversation.messages, question])
        self._count(outcome, detail)
        if outcome != "completed":
            return False  # the conversation goes on without that turn
        conversation.messages += [question, {"role": "assistant", "content": detail}]
        conversation.num_turns += 1
        return True

    async def _talk(self, conversation: Conversation, clients, stop: asyncio.Event) -> None:
        attempt = conversation.index
        while not stop.is_set():
            is_done = await self._turn(conversation, clients[attempt % len(clients)])
            attempt += 1  # the next turn, or the retry of this one, goes to the other replica
            await asyncio.sleep(self.think if is_done else 0.2)

    async def _continue(self, conversation: Conversation, clients) -> bool:
        results = []
        for i in range(self.turns_after):
            results.append(await self._turn(conversation, clients[i % len(clients)]))
        return all(results)

    async def _faults(self) -> None:
        first, second = self.replicas[0], self.replicas[-1]
        await self._fault("redis SIGKILL", self.redis.kill)
        await self._fault("redis restart", self.redis.start)
        await self._fault("replica 0 SIGTERM (drains)", lambda: first.stop(signal.SIGTERM))
        await self._fault("replica 0 restart", first.start)
        await self._fault("replica 1 SIGKILL", lambda: second.stop(signal.SIGKILL))
        await self._fault("replica 1 restart", second.start)
        await asyncio.sleep(self.pause)

    async def _fault(self, name: str, act) -> None:
        await asyncio.sleep(self.pause)
        started = time.monotonic()
        await asyncio.to_thread(act)
        self.report.faults.append({"fault": name, "completed_before": self.report.completed,
                                   "seconds": round(time.monotonic() - started, 2)})


def verify_records(report: FaultReport, redis_url: str, namespace: str,
                   conversations: list[Conversation], server_url: str) -> None:
    """Every record under `namespace` decodes and, where its conversation is known, equals
    that conversation fed whole through the model."""
    fingerprint = httpx.get(f"{server_url}/version").json()["model_fingerprint"]
    known: dict[str, tuple[int, int]] = {}  # content key -> (conversation, messages covered)
    for c in conversations:
        for i, key in enumerate(content_keys(ANONYMOUS_TENANT, fingerprint, c.messages)):
            if c.messages[i]["role"] == "assistant":
                known[key] = (c.index, i + 1)
    with redis.Redis.from_url(redis_url) as raw:
        record_keys = [k.decode() for k in raw.scan_iter(match=f"{namespace}:*:c:*", count=1000)]
    values = asyncio.run(_read_all(redis_url, record_keys))
    model = load_model()
    stored: dict[int, dict[int, object]] = collections.defaultdict(dict)
    for key, data in zip(record_keys, values, strict=True):
        if data is None:
            continue  # expired between the scan and the read (a retired parent)
        report.records_read += 1
        try:
            state = state_from_record(decode_record(data, fingerprint), model.config)
        except RecordError:
            report.records_refused += 1
            continue
        where = known.get(key.rpartition(":c:")[2])
        if where is None:
            report.records_unmatched += 1
        else:
            stored[where[0]][where[1]] = state
    tokenizer = Tokenizer.from_dir(DEFAULT_MODEL_DIR)
    for index, states in stored.items():
        for is_same in _recompute(model, tokenizer, conversations[index].messages, states):
            if is_same:
                report.records_verified += 1
            else:
                report.records_wrong += 1


def _recompute(model, tokenizer, messages: list[dict], states: dict):
    """Whether each stored state of one conversation equals its recomputation; all
    conversation, fed through the model once: each prefix continues the last (the rendering
    of a conversation extends the rendering of its prefixes), checked against a whole
    prefill where it does not."""
    reference, fed = None, []
    for num_messages in sorted(states):
        ids = tokenizer.encode_chat(messages[:num_messages], add_generation_prompt=False)
        with torch.inference_mode():
            if ids[:len(fed)] == fed and reference is not None:
                _, reference = model.prefill(torch.tensor([ids[len(fed):]]), reference,
                                             return_logits=False)
            else:
                _, reference = model.prefill(torch.tensor([ids]), return_logits=False)
        fed = ids
        mine = states[num_messages]
        yield int(mine.num_tokens[0]) == len(ids) and all(
            torch.allclose(a, b, atol=2e-4, rtol=1e-4)
            for a, b in zip(mine.tensors, reference.tensors, strict=True))


async def _read_all(redis_url: str, record_keys: list[str]) -> list[bytes | None]:
    store = open_store(redis_url)
    try:
        return [await store.get(key) for key in record_keys]
    finally:
        await store.close()

