"""The synthetic tool chats: deterministic, in the template's call format, arguments copied from
the conversation, answers that repeat the result; held-out probes never use training values."""

import json

import jsonschema
import pytest

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.tokenizer import Tokenizer
from server.tool_calls import parse_tool_calls
from training.chat_data import POOLS
from training.eval_tools import MAX_NEW_TOKENS, evaluate
from training.tool_data import HARD_TOOLS, TOOLS_BY_NAME, tool_chats, tool_probes
from training.train import encode_with_mask


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR)


def test_same_seed_same_chats_and_probes():
    assert tool_chats(30, 1) == tool_chats(30, 1) != tool_chats(30, 2)
    assert tool_probes(20, 1) == tool_probes(20, 1)


def test_calls_validate_copy_their_arguments_and_answers_repeat_results(tok):
    num_calls = num_no_call = 0
    for chat in tool_chats(300, 0):
        names = {t["function"]["name"] for t in chat.tools}
        calls = [m for m in chat.messages if m.get("tool_calls")]
        num_no_call += not calls
        for i, message in enumerate(chat.messages):
            if not message.get("tool_calls"):
                continue
            num_calls += 1
            call = message["tool_calls"][0]["function"]
            assert call["name"] in names
            args = json.loads(call["arguments"])
            spec = TOOLS_BY_NAME[call["name"]]
            jsonschema.validate(args, spec.definition()["function"]["parameters"])
            earlier = " ".join(m["content"] for m in chat.messages[:i] if m["role"] == "user")
            assert all(str(v) in earlier for v in args.values())
            result = json.loads(chat.messages[i + 1]["content"])
            assert chat.messages[i + 1]["tool_call_id"] == message["tool_calls"][0]["id"]
            assert all(str(v) in chat.messages[i + 2]["content"] for v in result.values())
            # the model learns exactly the text the grammar generates and the parser reads
            text = tok.apply_chat_template(chat.messages[: i + 1], add_generation_prompt=False,
                                           tools=chat.tools)
            reply = text[text.rindex("<|im_start|>assistant\n") + 22:-len("<|im_end|>\n")]
            assert [(c.name, c.arguments) for c in parse_tool_calls(reply)[1]] == [
                (call["name"], call["arguments"])]
        encode_with_mask(tok, chat.messages, chat.tools)  # append-only, boundaries exact
    assert num_calls > 250 and 10 < num_no_call < 100


def test_focused_chats_call_only_the_tools_copied_worst():
    chats = tool_chats(200, 0, focus_share=1.0)
    calls = [c["function"]["name"] for chat in chats for m in chat.messages
             for c in m.get("tool_calls", ())]
    assert len(calls) > 150 and set(calls) == set(HARD_TOOLS)
    for chat in chats:  # the hard tool is offered beside up to two others
        assert 1 <= len(chat.tools) <= 3
    unfocused = [c["function"]["name"] for chat in tool_chats(200, 0) for m in chat.messages
                 for c in m.get("tool_calls", ())]
    assert set(unfocused) - set(HARD_TOOLS)


def test_probes_use_held_out_values():
    train_values = {v for pool in POOLS.values() for v in pool["train"]}
    for probe in tool_probes(100, 3):
        args = probe["call"]["arguments"]
        assert not {str(v) for v in args.values()} & train_values
        assert probe["messages"][-1]["role"] == "user"
        if probe["from_fact"]:
            assert not any(str(v) in probe["messages"][-1]["content"] for v in args.values())


def test_the_evaluation_runs_through_the_chat_service():
    result = evaluate(n=2, num_controls=2, max_new_tokens=64)
    assert set(result["summary"]) == {"tool_call_valid", "tool_args_exact", "answer_from_tool",
                                      "text_when_no_tool_applies"}
    assert all(0.0 <= v <= 1.0 for v in result["summary"].values())


def test_the_evaluation_leaves_room_for_the_longest_expected_call(tok):
    """A call the turn's token limit cuts off does not parse: the evaluation must allow every
    expected call (and its end-of-turn token) of its probes."""
    longest = 0
    for probe in tool_probes(100, 4321):
        call = {"role": "assistant", "content": "", "tool_calls": [{
            "id": probe["call_id"], "type": "function", "function": {
                "name": probe["call"]["name"],
                "arguments": json.dumps(probe["call"]["arguments"])}}]}
        prompt = tok.encode_chat(probe["messages"], tools=probe["tools"])
        whole = tok.encode_chat([*probe["messages"], call], add_generation_prompt=False,
                                tools=probe["tools"])
        assert whole[:len(prompt)] == prompt
        end = list(tok.end_of_turn_ids)  # <|im_end|> (generated), then what the template adds
        reply = whole[len(prompt):]
        assert reply[-len(end):] == end
        longest = max(longest, len(reply) - len(end) + 1)
    assert 32 < longest <= MAX_NEW_TOKENS
