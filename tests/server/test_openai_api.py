"""The chat API through the official `openai` client, against a real server: streaming and not,
follow-up turns reuse the stored state and say exactly what a full prefill says, n choices,
stop strings, logprobs, completions."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.server.conftest import unique, user
from tests.server_process import MODEL_NAME

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=24)



def test_models_lists_the_served_model_with_its_state_size(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    card = client.models.retrieve(MODEL_NAME)
    assert card.state_bytes > 0 and card.kv_cache_bytes_per_token > 0


def test_streamed_chunks_are_openais_and_add_up_to_the_whole_reply(client):
    messages = [user(unique("My name is Ingrid."))]
    whole = client.chat.completions.create(messages=messages, **GREEDY)
    chunks = list(client.chat.completions.create(messages=messages, stream=True,
                                                 stream_options={"include_usage": True},
                                                 **GREEDY))
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == (
        whole.usage.total_tokens)


def test_follow_up_turns_reuse_the_state_and_match_a_full_prefill(client, full_prefill_server):
    plain = full_prefill_server.client()
    messages = [{"role": "system", "content": "You are brief."},
                user(unique("My favourite colour is teal."))]
    for turn, question in enumerate(["What is my favourite colour?", "Tell me a number.",
                                     "And my colour again?"]):
        reused = client.chat.completions.create(messages=messages, **GREEDY)
        fresh = plain.chat.completions.create(messages=messages, **GREEDY)
        assert reused.choices[0].message.content == fresh.choices[0].message.content, turn
        assert reused.usage.prompt_tokens == fresh.usage.prompt_tokens
        assert fresh.usage.prompt_tokens_details.cached_tokens == 0
        cached = reused.usage.prompt_tokens_details.cached_tokens
        assert (cached > 0) == (turn > 0), (turn, cached)
        messages += [{"role": "assistant", "content": reused.choices[0].message.content},
                     user(question)]


def test_streamed_follow_up_reports_cached_tokens(client):
    messages = [user(unique("I live in Bergen."))]
    first = client.chat.completions.create(messages=messages, **GREEDY)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 user("Where do I live?")]
    chunks = list(client.chat.completions.create(
        messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY))
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == first.usage.total_tokens + 1
    assert usage.prompt_tokens > usage.prompt_tokens_details.cached_tokens


def test_n_choices_prefill_once_and_each_is_a_full_choice(client):
    messages = [user(unique("Say something."))]
    greedy = client.chat.completions.create(messages=messages, **GREEDY)
    three = client.chat.completions.create(messages=messages, n=3, **GREEDY)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {greedy.choices[0].message.content}
    sampled = client.chat.completions.create(messages=messages, n=3, seed=7, model=MODEL_NAME,
                                             temperature=1.5, max_tokens=16)
    again = client.chat.completions.create(messages=messages, n=3, seed=7, model=MODEL_NAME,
                                           temperature=1.5, max_tokens=16)
    texts = [c.message.content for c in sampled.choices]
    assert texts == [c.message.content for c in again.choices]  # seeded: repeatable
    assert len(set(texts)) > 1  # and the choices are different draws
    assert sampled.usage.prompt_tokens == greedy.usage.prompt_tokens
    streamed = list(client.chat.completions.create(messages=messages, n=3, seed=7,
                                                   model=MODEL_NAME, temperature=1.5,
                                                   max_tokens=16, stream=True))
    by_index = {i: "".join(c.choices[0].delta.content or "" for c in streamed
                           if c.choices and c.choices[0].index == i) for i in range(3)}
    assert [by_index[i] for i in range(3)] == texts


def test_stop_strings_never_reach_the_client_even_across_tokens(client):
    messages = [user(unique("Tell me about your day in a few sentences."))]
    # 40 tokens whatever the model says (a reply may end after a word or two)
    long = dict(model=MODEL_NAME, temperature=0.0, max_tokens=40,
                extra_body={"ignore_eos": True})
    full = client.chat.completions.create(messages=messages, **long).choices[0].message.content
    assert len(full) > 12, full
    stop = full[5:9]  # four characters from inside the reply: they span token boundaries
    cut = full[: full.index(stop)]
    answer = client.chat.completions.create(messages=messages, stop=[stop, "zzzz"], **long)
    assert answer.choices[0].message.content == cut
    assert answer.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(messages=messages, stop=stop, stream=True,
                                                 **long))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


def test_logprobs_name_each_token_with_its_bytes_and_alternatives(client):
    reply = client.chat.completions.create(messages=[user(unique("Hello!"))], logprobs=True,
                                           top_logprobs=3, **GREEDY)
    content = reply.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob - 1e-6
               for t in content)  # greedy: the chosen token is the best one
    text = bytes(b for t in content for b in t.bytes).decode("utf-8", errors="replace")
    # the tokens spell the reply; special tokens (a tiny model may emit <|im_start|> mid-reply)
    # have their bytes in logprobs but no text in the content, as in vLLM
    assert reply.choices[0].message.content in re.sub(r"<\|[a-z_]+\|>", "", text)


def test_completions_raw_prompt_streaming_and_not(client):
    prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    whole = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12,
                                      temperature=0.0, logprobs=2)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert len(whole.choices[0].logprobs.tokens) == whole.usage.completion_tokens
    streamed = list(client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12,
                                              temperature=0.0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    echoed = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=4,
                                       temperature=0.0, echo=True)
    assert echoed.choices[0].text.startswith("Hello")


def test_a_session_carries_the_conversation_with_only_new_messages(server, client):
    session_id = f"s-{uuid.uuid4().hex}"
    extra = {"session_id": session_id}
    client.chat.completions.create(messages=[user(unique("My pet is a ferret named Olo."))],
                                   extra_body=extra, **GREEDY)
    info = client.get(f"/sessions/{session_id}", cast_to=dict)
    assert info["num_tokens"] > 0 and info["num_bytes"] > 0
    second = client.chat.completions.create(messages=[user("What is my pet called?")],
                                            extra_body=extra, **GREEDY)
    assert second.usage.prompt_tokens_details.cached_tokens == info["num_tokens"]
    grown = client.get(f"/sessions/{session_id}", cast_to=dict)
    assert grown["num_tokens"] > info["num_tokens"]
    assert grown["num_bytes"] == info["num_bytes"]  # a fixed size, whatever the length
    # the header works too, and a fork continues the same state under a new id
    fork = client.post(f"/sessions/{session_id}/fork", body={"session_id": session_id + "-b"},
                       cast_to=dict)
    assert fork["id"] == session_id + "-b" and fork["num_tokens"] == grown["num_tokens"]
    third = client.chat.completions.create(messages=[user("Again, the pet?")],
                                           extra_headers={"X-Session-Id": fork["id"]},
                                           **GREEDY)
    assert third.usage.prompt_tokens_details.cached_tokens == grown["num_tokens"]
    client.delete(f"/sessions/{session_id}", cast_to=dict)
    import openai

    with pytest.raises(openai.NotFoundError):
        client.get(f"/sessions/{session_id}", cast_to=dict)
