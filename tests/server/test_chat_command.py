"""`retserve chat`: a follow-up turn resumes from the carried state and feeds only new tokens."""

import torch

from engine.config import ModelConfig
from engine.engine import LLMEngine
from engine.engine_config import EngineConfig
from engine.model import RetNet
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.tokenizer import Tokenizer
from server.commands.chat import ChatSession


def make_session(tokenizer_dir):
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    torch.manual_seed(0)
    model = RetNet(ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                               num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64)).eval()
    engine = LLMEngine(model.requires_grad_(False),
                       EngineConfig(device="cpu", max_num_seqs=2, num_threads=1), tokenizer)
    return ChatSession(engine, tokenizer), engine


def test_follow_up_turn_feeds_only_new_tokens_and_matches_a_fresh_prompt(tiny_tokenizer_dir):
    params = SamplingParams(max_tokens=6, temperature=0.0)
    session, engine = make_session(tiny_tokenizer_dir)
    session.reply("Hello, my name is Ada.", params)
    tokens_after_first = session.state.num_tokens.item()
    assert tokens_after_first == len(session.fed_ids)
    second = session.reply("What is my name?", params)
    assert session.num_cached_tokens == tokens_after_first
    # the state grew by the new turn only, and no slot is left behind
    assert session.state.num_tokens.item() == len(session.fed_ids) > tokens_after_first
    assert engine.stats().num_slots_used == 0

    # the same tokens fed from scratch in one prompt give the same reply
    _, fresh = make_session(tiny_tokenizer_dir)
    outputs = fresh.generate([Request("fresh", session.last_prompt_ids, params)])["fresh"]
    assert "".join(o.text for o in outputs) == second
