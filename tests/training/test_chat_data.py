"""The synthetic chat data: deterministic, well-formed, and honest about held-out values."""

import re

import pytest

from training.chat_data import (
    FACT_KINDS,
    POOLS,
    generate_conversations,
    recall_probes,
)


def words(conversations) -> set[str]:
    text = " ".join(m["content"] for c in conversations for m in c)
    return set(re.findall(r"\w+", text))


def test_same_seed_same_conversations():
    assert generate_conversations(50, seed=7) == generate_conversations(50, seed=7)
    assert generate_conversations(50, seed=7) != generate_conversations(50, seed=8)
    assert recall_probes(20, 3, seed=1) == recall_probes(20, 3, seed=1)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_conversations_alternate_and_end_with_short_replies(split):
    for messages in generate_conversations(200, seed=0, split=split):
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        assert len(turns) >= 4
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in messages)
        assert all(len(m["content"].split()) <= 8 for m in turns if m["role"] == "assistant")


def test_value_pools_are_disjoint():
    seen: dict[str, str] = {}
    for kind in FACT_KINDS:
        for split in ("train", "heldout"):
            for value in POOLS[kind][split]:
                assert value not in seen, f"{value} in both {seen.get(value)} and {kind}/{split}"
                seen[value] = f"{kind}/{split}"


def test_heldout_values_never_appear_in_training_conversations():
    train_words = words(generate_conversations(3000, seed=0, split="train"))
    for kind in FACT_KINDS:
        assert not train_words & set(POOLS[kind]["heldout"]), kind


def test_heldout_conversations_use_heldout_values():
    heldout_words = words(generate_conversations(500, seed=0, split="heldout"))
    for kind in FACT_KINDS:
        assert not heldout_words & set(POOLS[kind]["train"]), kind
        assert heldout_words & set(POOLS[kind]["heldout"]), kind


def test_asked_facts_are_answered_with_exactly_the_told_value():
    # An assistant reply that is a fact value must be one the user told earlier in that chat.
    all_values = {v for kind in FACT_KINDS for split in POOLS[kind].values() for v in split}
    num_recalls = 0
    for messages in generate_conversations(500, seed=3):
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and message["content"] in all_values:
                earlier = " ".join(m["content"] for m in messages[:i] if m["role"] == "user")
                assert re.search(rf"\b{re.escape(message['content'])}\b", earlier)
                num_recalls += 1
    assert num_recalls > 200


@pytest.mark.parametrize("turns_back", [0, 1, 4])
def test_recall_probes_tell_then_fill_then_ask(turns_back):
    probes = recall_probes(100, turns_back, seed=5)
    assert len(probes) == 100
    assert {p["kind"] for p in probes} == set(FACT_KINDS)
    for probe in probes:
        messages, answer = probe["messages"], probe["answer"]
        assert probe["turns_back"] == turns_back
        assert answer in POOLS[probe["kind"]]["heldout"]
        assert len(messages) == 2 + 2 * turns_back + 1
        assert messages[-1]["role"] == "user" and messages[-1]["content"].endswith("?")
        assert re.search(rf"\b{re.escape(answer)}\b", messages[0]["content"])
        # The answer is only in the telling message: it has to be recalled, not copied nearby.
        assert all(answer not in m["content"] for m in messages[1:])


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        generate_conversations(1, seed=0, split="test")
    with pytest.raises(ValueError):
        recall_probes(1, -1, seed=0)
