"""Grammar-constrained decoding in the engine: every output matches its grammar, forced tokens
reach the state exactly, and a row with a grammar changes nothing for the rows beside it."""

import json

import jsonschema
import llguidance
import pytest
import torch

from engine.checkpoint import DEFAULT_MODEL_DIR, load_model
from engine.constraints import GrammarError, grammar_error
from engine.engine_config import EngineConfig
from engine.errors import InvalidRequestError
from engine.llm_engine import LLMEngine
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.tokenizer import Tokenizer

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "maxItems": 3,
                 "items": {"type": "object", "required": ["kind"], "additionalProperties": False,
                           "properties": {"kind": {"enum": ["cat", "dog", "fish"]}}}},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


def json_grammar(schema: dict) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)


def lark(source: str) -> str:
    return llguidance.LLMatcher.grammar_from_lark(source)


@pytest.fixture(scope="module")
def chat_model():
    return load_model(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR)


@pytest.fixture
def make_chat_engine(chat_model, chat_tokenizer):
    num_threads = torch.get_num_threads()

    def make(**overrides):
        settings = dict(device="cpu", max_num_seqs=16, num_threads=1)
        settings.update(overrides)
        torch.set_num_threads(settings["num_threads"])
        return LLMEngine(chat_model, EngineConfig(**settings), chat_tokenizer)

    yield make
    torch.set_num_threads(num_threads)


def prompt(tokenizer, text: str = "Describe a person as JSON.") -> list[int]:
    return tokenizer.encode_chat([{"role": "user", "content": text}])


def run(engine, requests):
    results = engine.generate(requests)
    return {rid: ([t for o in outs for t in o.token_ids], "".join(o.text for o in outs),
                  outs[-1]) for rid, outs in results.items()}


@pytest.mark.parametrize("forced_tokens", ["prefill", "decode"])
def test_every_sampled_output_parses_and_validates(make_chat_engine, chat_tokenizer,
                                                   forced_tokens):
    engine = make_chat_engine(forced_tokens=forced_tokens)
    grammar = json_grammar(PERSON)
    requests = [Request(f"r{seed}", prompt(chat_tokenizer), SamplingParams(
        temperature=1.2, seed=seed, max_tokens=300, grammar=grammar)) for seed in range(12)]
    for _, text, final in run(engine, requests).values():
        assert final.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)
    assert engine.stats().num_forced_tokens > 0


def test_forced_tokens_fed_like_prompt_tokens_or_through_decode_steps_agree(
        make_chat_engine, chat_tokenizer):
    grammar = json_grammar(PERSON)
    requests = [Request(f"r{seed}", prompt(chat_tokenizer), SamplingParams(
        temperature=0.0 if seed == 0 else 1.0, seed=seed, max_tokens=300, grammar=grammar))
        for seed in range(4)]
    by_prefill = run(make_chat_engine(forced_tokens="prefill"), requests)
    by_decode = run(make_chat_engine(forced_tokens="decode"), requests)
    assert {k: v[0] for k, v in by_prefill.items()} == {k: v[0] for k, v in by_decode.items()}


def test_a_row_with_a_grammar_does_not_change_the_other_rows(make_chat_engine, chat_tokenizer):
    plain = [Request(f"p{i}", prompt(chat_tokenizer, f"What is {i} plus {i}?"), SamplingParams(
        temperature=0.0 if i % 2 else 0.8, seed=i, max_tokens=24)) for i in range(6)]
    constrained = [Request(f"c{i}", prompt(chat_tokenizer), SamplingParams(
        temperature=1.0, seed=i, max_tokens=200, grammar=json_grammar(PERSON))) for i in range(5)]
    alone = run(make_chat_engine(), plain)
    mixed = run(make_chat_engine(), constrained[:3] + plain + constrained[3:])
    assert {k: v[0] for k, v in alone.items()} == {k: mixed[k][0] for k in alone}


def test_the_final_state_is_prompt_output_and_trailing_fed_from_scratch(
        make_chat_engine, chat_model, chat_tokenizer):
    # forced tokens are fed by prefill pieces, sampled ones by decode steps: the state after
    # them must be the state of the same tokens fed in one go
    engine = make_chat_engine()
    p = prompt(chat_tokenizer)
    trailing = tuple(chat_tokenizer.end_of_turn_ids)
    final = engine.generate([Request("s", p, SamplingParams(
        temperature=0.7, seed=3, max_tokens=300, grammar=json_grammar(PERSON)),
        return_state=True, trailing_ids=trailing)])["s"]
    ids = [t for o in final for t in o.token_ids]
    assert final[-1].finish_reason == "stop"
    assert ids[-1] not in chat_tokenizer.stop_token_ids  # the grammar ended: no stop sampled
    fed = p + ids + list(trailing)
    assert final[-1].state.num_tokens.item() == len(fed)
    with torch.inference_mode():
        _, reference = chat_model.prefill(torch.tensor([fed]))
    torch.testing.assert_close(final[-1].state.kv, reference.kv, atol=1e-4, rtol=1e-4)


def test_a_fully_forced_grammar_samples_once_and_forces_the_rest(make_chat_engine,
                                                                 chat_tokenizer):
    engine = make_chat_engine()
    ids, text, final = run(engine, [Request("f", prompt(chat_tokenizer), SamplingParams(
        temperature=1.0, seed=1, max_tokens=50, grammar=lark('start: "The answer is 42."'),
        logprobs=2))])["f"]
    assert text == "The answer is 42." and final.finish_reason == "stop"
    assert engine.stats().num_forced_tokens == len(ids) - 1
    logprobs = [lp for o in engine.generate([Request("g", prompt(chat_tokenizer), SamplingParams(
        max_tokens=50, grammar=lark('start: "The answer is 42."'), logprobs=2))])["g"]
        for lp in o.logprobs or []]
    assert len(logprobs) == len(ids) and all(lp.logprob == 0.0 for lp in logprobs[1:])


def test_alternatives_and_the_end_are_the_grammars_choice(make_chat_engine, chat_tokenizer):
    engine = make_chat_engine()
    grammar = lark('start: "yes" | "no" | "maybe later"')
    requests = [Request(f"r{seed}", prompt(chat_tokenizer, "Well?"), SamplingParams(
        temperature=1.5, seed=seed, max_tokens=20, grammar=grammar)) for seed in range(10)]
    texts = {text for _, text, final in run(engine, requests).values()
             if final.finish_reason == "stop"}
    assert texts and texts <= {"yes", "no", "maybe later"}


def test_max_tokens_cuts_forced_tokens(make_chat_engine, chat_tokenizer):
    engine = make_chat_engine()
    ids, _, final = run(engine, [Request("f", prompt(chat_tokenizer), SamplingParams(
        max_tokens=3, grammar=lark('start: "The answer is forty-two, of course."')))])["f"]
    assert len(ids) == 3 and final.finish_reason == "length"


def test_bad_grammars_are_refused_with_the_reason(make_chat_engine, chat_tokenizer):
    engine = make_chat_engine()
    bad = json_grammar({"type": "object", "not": {"required": ["a"]}})
    assert "not" in grammar_error(bad)
    assert grammar_error(json_grammar(PERSON)) is None
    with pytest.raises(GrammarError, match="not"):
        engine.add_request(Request("b", prompt(chat_tokenizer), SamplingParams(grammar=bad)))
    with pytest.raises(InvalidRequestError):
        SamplingParams(grammar=json_grammar(PERSON), ignore_eos=True)
    assert not engine.has_unfinished_requests()


def test_an_engine_without_a_tokenizer_refuses_grammars(chat_model):
    engine = LLMEngine(chat_model, EngineConfig(device="cpu", max_num_seqs=2, num_threads=1))
    with pytest.raises(InvalidRequestError, match="tokenizer"):
        engine.add_request(Request("x", [1, 2, 3], SamplingParams(grammar=lark('start: "a"'))))
