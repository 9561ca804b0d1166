"""One tool-call format in three places: the chat template writes it, the grammar generates
exactly it, the parser reads it back (streamed in any pieces) to the text it came from."""

from __future__ import annotations

import json

import llguidance
import pytest

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.tokenizer import Tokenizer
from server.grammar import FunctionSpec, UnsupportedGrammar, tool_call_grammar
from server.tool_calls import ToolCallFormatError, ToolCallParser, parse_tool_calls
from training.tool_data import TOOLS, call_message

FUNCTIONS = [FunctionSpec(t.name, t.definition()["function"]["parameters"]) for t in TOOLS]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def ll_tokenizer(tok):
    return llguidance.LLTokenizer(tok.to_json(), eos_token=sorted(tok.stop_token_ids))


def reply_text(tok, message: dict) -> str:
    """What the template writes for an assistant message, between its header and its end."""
    before = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    after = tok.apply_chat_template([{"role": "user", "content": "hi"}, message],
                                    add_generation_prompt=False)
    return after[len(before):-len("<|im_end|>\n")]


def accepts(ll_tokenizer, grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    return matcher.consume_tokens(ll_tokenizer.tokenize_str(text)) and matcher.is_accepting()


CALLS = [
    [("get_weather", {"city": "Porto"})],
    [("send_message", {"name": "Anika", "text": "see you at 5 \"sharp\""})],
    [("square", {"number": 12}), ("get_time", {"city": "Kyoto"})],
]


@pytest.mark.parametrize("calls", CALLS)
def test_the_grammar_generates_what_the_template_writes(tok, ll_tokenizer, calls):
    message = {"role": "assistant", "content": "", "tool_calls": [
        call_message(next(t for t in TOOLS if t.name == name), args, f"call_{i}")
        ["tool_calls"][0] for i, (name, args) in enumerate(calls)]}
    text = reply_text(tok, message)
    assert accepts(ll_tokenizer, tool_call_grammar(FUNCTIONS, "auto"), text)
    assert accepts(ll_tokenizer, tool_call_grammar(FUNCTIONS, "required"), text)
    assert accepts(ll_tokenizer, tool_call_grammar(FUNCTIONS, calls[0][0]), text) == (
        len({name for name, _ in calls}) == 1)
    assert accepts(ll_tokenizer, tool_call_grammar(FUNCTIONS, "auto", parallel=False),
                   text) == (len(calls) == 1)
    assert not accepts(ll_tokenizer, tool_call_grammar(FUNCTIONS, "none"), text)
    content, parsed = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    # re-rendered from the parsed calls: the same text, so the same tokens
    again = {"role": "assistant", "content": "",
             "tool_calls": [c.message_entry() for c in parsed]}
    assert reply_text(tok, again) == text


def test_arguments_outside_the_schema_are_not_generated(ll_tokenizer):
    grammar = tool_call_grammar(FUNCTIONS, "auto")
    good = '<tool_call>\n{"name": "square", "arguments": {"number": 4}}\n</tool_call>'
    assert accepts(ll_tokenizer, grammar, good)
    for bad in (good.replace("4", '"4"'), good.replace("square", "cube"),
                good.replace('{"number": 4}', '{"number": 4, "x": 1}'),
                good.replace('{"number": 4}', "{}"), good.replace(": 4", ":4"),
                "<b>text that looks like markup</b>"):
        assert not accepts(ll_tokenizer, grammar, bad), bad
    assert accepts(ll_tokenizer, grammar, "Plain text, <b>with</b> markup inside.")


def test_a_schema_that_cannot_be_enforced_names_the_function():
    bad = [*FUNCTIONS, FunctionSpec("f", {"type": "object", "not": {}})]
    with pytest.raises(UnsupportedGrammar) as caught:
        tool_call_grammar(bad, "auto")
    assert caught.value.param == f"tools.{len(FUNCTIONS)}.function.parameters"
    assert "not" in str(caught.value)


STREAM = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Por\\"to}"}}\n'
          '</tool_call>\n<tool_call>\n{"name": "square", "arguments": {"number": 3, '
          '"x": [1, {"a": "]"}]}}\n</tool_call>')


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, len(STREAM)])
def test_streamed_pieces_of_any_size_give_the_same_calls(size):
    parser = ToolCallParser()
    content, deltas = "", []
    for i in range(0, len(STREAM), size):
        text, new = parser.push(STREAM[i:i + size])
        content, deltas = content + text, deltas + new
    calls = parser.finish()
    assert content == ""
    assert [(c.name, c.arguments) for c in calls] == [
        ("get_weather", '{"city": "Por\\"to}"}'),
        ("square", '{"number": 3, "x": [1, {"a": "]"}]}')]
    heads = [d for d in deltas if d.id is not None]
    assert [(d.index, d.id, d.name) for d in heads] == [
        (i, c.id, c.name) for i, c in enumerate(calls)]
    for i, call in enumerate(calls):
        assert "".join(d.arguments for d in deltas if d.index == i) == call.arguments
    assert heads[0].chunk_entry()["type"] == "function"
    assert set(deltas[1].chunk_entry()) == {"index", "function"}


def test_text_passes_through_and_a_cut_call_is_dropped():
    assert parse_tool_calls("Hello <there>") == ("Hello <there>", [])
    assert parse_tool_calls(STREAM[:70])[1] == []
    one = STREAM[:STREAM.index("</tool_call>") + len("</tool_call>")]
    assert [c.name for c in parse_tool_calls(one + "\n<tool_call>\n{")[1]] == ["get_weather"]
    with pytest.raises(ToolCallFormatError):
        parse_tool_calls("<tool_call>\n[]")
    with pytest.raises(ToolCallFormatError):
        parse_tool_calls("Hello", calls_only=True)
