"""The turn seam without HTTP: a stored state is exactly the state of its conversation fed from
scratch (also when a stop string cut the reply), resuming from it through the real Redis gives
the tokens of an uninterrupted run, and a conversation at rest holds one or two records however
many turns it had."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import torch

from engine.checkpoint import load_model
from engine.sampling import SamplingParams
from engine.sequence import Request
from server.chat_service import PROMPT_STATE_MIN, ServiceOptions
from server.chat_turn import ChatTurn
from server.local_service import close_service, local_service
from server.state_records import state_from_record
from server.turn_metrics import TurnMetrics
from tests.server.conftest import delete_namespace, unique, user

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
async def make_service(model, redis_url):
    """Services on the real Redis, each test in a namespace of its own; no in-process cache,
    so every turn reads its state back from the record bytes."""
    made, namespace = [], f"t{uuid.uuid4().hex[:12]}"

    def make(**options):
        service = local_service(model=model, store_url=redis_url, namespace=namespace,
                                options=ServiceOptions(**options))
        made.append(service)
        return service

    yield make
    for service in made:
        await close_service(service)
    delete_namespace(redis_url, namespace)


async def turn(service, messages, params=GREEDY, **fields):
    stream = await service.start_chat(ChatTurn("t", list(messages), params, **fields))
    deltas = [d async for d in stream]
    return stream, deltas


def reply_text(stream) -> str:
    return stream.choices[0].text


async def assert_state_is_the_conversation_fed_whole(service, model, messages):
    """The stored record for `messages` (ending with a reply) == a prefill of their tokens."""
    found = await service.conversations.lookup("t", messages)
    assert found is not None and found[0] == len(messages)
    stored = state_from_record(found[1], model.config)
    ids = service.tokenizer.encode_chat(messages, add_generation_prompt=False)
    with torch.inference_mode():
        _, reference = model.prefill(torch.tensor([ids]))
    assert stored.num_tokens.item() == len(ids)
    for mine, theirs in zip(stored.tensors, reference.tensors, strict=True):
        torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4)


async def test_resuming_from_redis_gives_the_tokens_of_an_uninterrupted_run(make_service, model):
    service = make_service()
    messages = [user(unique("My name is Ingrid and I live in Bergen."))]

    async def run():
        first, _ = await turn(service, messages)
        told = [*messages, {"role": "assistant", "content": reply_text(first)}]
        second, _ = await turn(service, [*told, user("Where do I live?")])
        # the same conversation as one prompt, straight through the engine
        ids = service.tokenizer.encode_chat([*told, user("Where do I live?")])
        outputs = service.engine.generate(Request("whole", ids, GREEDY))
        whole = [t async for out in outputs for t in out.token_ids]
        return told, first, second, whole

    told, first, second, whole = await run()
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == first.usage.prompt_tokens + len(
        service.tokenizer.encode(reply_text(first))) + len(service.encoder.end_of_turn_ids)
    assert second.choices[0].token_ids == whole
    await assert_state_is_the_conversation_fed_whole(service, model, told)


async def test_a_reply_cut_by_a_stop_string_is_stored_as_its_text(make_service, model):
    service = make_service()
    messages = [user(unique("Tell me about your day."))]
    long = SamplingParams(temperature=0.0, max_tokens=40)

    async def run():
        free, _ = await turn(service, messages, long)
        text = reply_text(free)
        stop = text[6:9]
        cut, _ = await turn(service, messages, long, stop=(stop,))
        return text, stop, cut

    text, stop, cut = await run()
    assert reply_text(cut) == text[: text.index(stop)] and stop not in reply_text(cut)
    await assert_state_is_the_conversation_fed_whole(
        service, model, [*messages, {"role": "assistant", "content": reply_text(cut)}])


async def test_every_choice_is_stored_and_the_session_follows_the_first(make_service, model):
    service = make_service()
    messages = [user(unique("Say anything."))]
    sampled = SamplingParams(temperature=1.5, seed=3, max_tokens=10)

    async def run():
        stream, _ = await turn(service, messages, sampled, n=3, session_id="forks")
        session = await service.conversations.get_session("t", "forks")
        return stream, session

    stream, session = await run()
    replies = [c.text for c in stream.choices]
    assert len(set(replies)) > 1
    for text in replies:
        await assert_state_is_the_conversation_fed_whole(
            service, model, [*messages, {"role": "assistant", "content": text}])
    first_key = service.conversations.content_keys(
        "t", [*messages, {"role": "assistant", "content": replies[0]}])[-1]
    assert session.content_key == first_key


def record_keys(redis_url: str, service) -> list[bytes]:
    namespace = service.conversations.namespace
    with redis.Redis.from_url(redis_url) as client:
        return [k for k in client.scan_iter(match=f"{namespace}:*") if b":c:" in k]


@pytest.mark.parametrize("with_session", [False, True], ids=["resent-history", "session"])
async def test_a_conversation_at_rest_holds_one_or_two_records_after_50_turns(make_service,
                                                                        redis_url,
                                                                        with_session):
    service = make_service(parent_grace=0.5)
    short = SamplingParams(temperature=0.0, max_tokens=6)

    async def run():
        history, hits = [], []
        session = f"rest-{uuid.uuid4().hex}" if with_session else None
        for i in range(50):
            new = [user(f"Turn {i}: say ok.")]
            stream, _ = await turn(service, new if session else [*history, *new], short,
                                   session_id=session)
            hits.append(stream.usage.cached_tokens > 0)
            history += [*new, {"role": "assistant", "content": reply_text(stream)}]
        await asyncio.sleep(1.0)  # the grace period of the last parents runs out
        return hits

    hits = await run()
    assert hits == [False] + [True] * 49
    assert 1 <= len(record_keys(redis_url, service)) <= 2


class Refeeds(TurnMetrics):
    """Records the tokens of each refeed the service reports."""

    def __init__(self):
        self.tokens: list[int] = []

    def state_refeed(self, num_tokens: int) -> None:
        self.tokens.append(num_tokens)


async def test_with_reuse_off_a_reply_is_never_fed_again(make_service):
    """A sampled reply whose tokens are not its text's own tokens is fed again (from the state
    before the turn) to store the exact state; with reuse off nothing is stored, so nothing is
    fed but the prompt."""
    sampled = SamplingParams(max_tokens=48, temperature=1.0, seed=3, ignore_eos=True)
    messages = [user(unique("Tell me a story."))]
    fed, counted = {}, {}
    for reuse in (True, False):
        service = make_service(reuse_states=reuse)
        service.metrics = counted[reuse] = Refeeds()
        stream, _ = await turn(service, messages, sampled)
        # the prompt's last token is fed by the first decode step
        prompt = len(service.tokenizer.encode_chat(messages)) - 1
        fed[reuse] = service.engine.stats().num_prefill_tokens - prompt
    assert fed[True] > 48  # refed: the sampled tokens are not the text's (past its end)
    # the whole turn, counted for /metrics
    assert counted[True].tokens == [fed[True]] and counted[False].tokens == []
    assert fed[False] == 0


async def test_a_long_prompt_is_not_fed_again_with_its_reply(make_service, model):
    """A reply fed again for an exact stored state starts from the state after the prompt
    (kept for prompts of PROMPT_STATE_MIN tokens or more), and the stored state is still the
    conversation fed whole."""
    service = make_service()
    service.metrics = counted = Refeeds()
    messages = [user(unique("Remember these words: " + " ".join(["kettle", "marble"] * 60)))]
    prompt = len(service.tokenizer.encode_chat(messages))
    assert prompt >= PROMPT_STATE_MIN
    stream, _ = await turn(service, messages, SamplingParams(max_tokens=24, temperature=1.0,
                                                             seed=5, ignore_eos=True))
    told = [*messages, {"role": "assistant", "content": reply_text(stream)}]
    whole = len(service.tokenizer.encode_chat(told, add_generation_prompt=False))
    assert counted.tokens == [whole - prompt]  # the reply and its end of turn, not the prompt
    await assert_state_is_the_conversation_fed_whole(service, model, told)
