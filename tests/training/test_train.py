"""`retserve train` on a tiny config: the loss falls, and a resumed run is the same run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_model
from engine.tokenizer import Tokenizer
from training.train import (
    STATE_FILE,
    TrainArgs,
    encode_with_mask,
    init_model,
    masked_loss,
    prepare_data,
    train,
)


def tiny_args(root: Path, **overrides) -> TrainArgs:
    base = TrainArgs(
        out_dir=str(root / "model"), ckpt_dir=str(root / "ckpt"), seed=3,
        hidden_size=32, num_layers=2, num_heads=4, qk_dim=32, v_dim=64, ffn_dim=64,
        chunk_size=16, vocab_size=384, num_chats=200, num_recall=80, num_dense=40,
        max_turns_back=3,
        steps=40, batch_size=8, lr=5e-3, warmup=4, ckpt_every=10, eval_every=0, threads=2,
    )
    return dataclasses.replace(base, **overrides)


def test_loss_mask_keeps_assistant_replies_only(tmp_path):
    args = tiny_args(tmp_path)
    tok, _ = prepare_data(args, tmp_path / "tok")
    chat = [{"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "Thanks."},
            {"role": "assistant", "content": "You are welcome."}]
    ids, mask = encode_with_mask(tok, chat)
    assert ids == tok.encode_chat(chat, add_generation_prompt=False)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m],
                         skip_special_tokens=False)
    assert trained == "5<|im_end|>You are welcome.<|im_end|>"


def test_training_reduces_loss(tmp_path):
    args = tiny_args(tmp_path)
    log = train(args, progress=False)
    assert log["step"] == args.steps and len(log["losses"]) == args.steps
    # the same held batches before and after: a real drop, not batch-to-batch noise
    tok, data = prepare_data(args, tmp_path / "ckpt" / "tokenizer")
    batches = [data.batch(s) for s in range(3)]
    before_model = init_model(args.model_config(tok.vocab_size), args.seed)
    after_model = load_model(args.out_dir)  # the exported native checkpoint
    with torch.no_grad():
        before = sum(masked_loss(before_model, *b).item() for b in batches) / 3
        after = sum(masked_loss(after_model, *b).item() for b in batches) / 3
    assert after < 0.6 * before, (before, after)
    assert Tokenizer.from_dir(args.out_dir).vocab_size == after_model.config.vocab_size


def test_resume_continues_identically(tmp_path):
    straight = tiny_args(tmp_path / "a", steps=8, ckpt_every=4)
    split = tiny_args(tmp_path / "b", steps=8, ckpt_every=4)
    log_a = train(straight, progress=False)
    first = train(split, stop_at=4, progress=False)
    assert first["step"] == 4
    log_b = train(split, resume=True, progress=False)

    assert log_b["losses"] == log_a["losses"]
    a = torch.load(Path(straight.ckpt_dir) / STATE_FILE, weights_only=False)
    b = torch.load(Path(split.ckpt_dir) / STATE_FILE, weights_only=False)
    assert a["step"] == b["step"] == 8
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_init_from_a_checkpoint_without_a_conv_computes_the_same(tmp_path):
    """Warm start: a model given a new short conv (identity taps, no activation) starts out
    computing exactly what the checkpoint it was initialised from computed."""
    plain = tiny_args(tmp_path / "a", short_conv=0, steps=5)
    train(plain, progress=False)
    warm = tiny_args(tmp_path / "b", init_from=plain.out_dir, short_conv=4, steps=0,
                     short_conv_activation="none")
    train(warm, progress=False)
    before, after = load_model(plain.out_dir), load_model(warm.out_dir)
    assert after.config.short_conv == 4 and before.config.short_conv == 0
    assert (Path(warm.out_dir) / "tokenizer.json").read_text() == \
        (Path(plain.out_dir) / "tokenizer.json").read_text()
    ids = torch.randint(0, before.config.vocab_size, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(after.forward_parallel(ids), before.forward_parallel(ids))


def test_invented_words_never_hit_held_out_values_and_can_start_with_a_vowel():
    import random

    from training.chat_data import POOLS
    from training.train import InventedWords, echo_conversations

    heldout = {v.lower() for pool in POOLS.values() for v in pool["heldout"]}
    rng = random.Random(0)
    invent = InventedWords(vowel_onset_share=0.3)
    words = [invent(rng, "name") for _ in range(2000)]
    assert not {w.lower() for w in words} & heldout
    vowel_share = sum(w[0] in "AEIOU" for w in words) / len(words)
    assert 0.2 < vowel_share < 0.45
    # share 0 draws nothing extra: the words of an older run are reproduced exactly
    a = [InventedWords()(random.Random(5), "food") for _ in range(50)]
    b = [InventedWords(0.0, 0.0, ("ab",), 0.0, ("1",))(random.Random(5), "food")
         for _ in range(50)]
    assert a == b and all(w[0] not in "aeiou" for w in a)
    chats = echo_conversations(tiny_args(Path("."), num_echo=30, vowel_onset_share=0.3), invent)
    assert len(chats) == 30
    for chat in chats:
        for user, reply in zip(chat[::2], chat[1::2], strict=True):
            assert reply["role"] == "assistant" and f'"{reply["content"]}"' in user["content"]


def test_piece_words_use_every_piece_of_the_tokenizer(tmp_path):
    """Piece words are drawn from the run's own tokenizer, so each alphabetic token gets copied
    in training; with a share of 1 nearly all of them turn up in a few thousand words."""
    import random

    from training.chat_data import POOLS
    from training.train import InventedWords, build_conversations, invented_words, word_pieces

    args = tiny_args(tmp_path, piece_word_share=1.0, number_piece_share=1.0)
    tok, _ = prepare_data(args, tmp_path / "tok")
    pieces = word_pieces(tok)
    assert pieces and all(p.isalpha() for p in pieces)
    invent = invented_words(args, tok)
    rng = random.Random(1)
    names = [invent(rng, "name") for _ in range(3000)]
    foods = [invent(rng, "food") for _ in range(3000)]
    assert all(n[0].isupper() and n[1:].islower() for n in names)
    assert all(f.islower() for f in foods)
    heldout = {v.lower() for pool in POOLS.values() for v in pool["heldout"]}
    assert not {w.lower() for w in names + foods} & heldout
    used = {tok.decode([i]) for w in names + foods for i in tok.encode(w)}
    assert len(used & set(pieces)) > 0.8 * len(pieces)
    digits = word_pieces(tok, digits=True)
    numbers = [invent(rng, "number") for _ in range(3000)]
    assert digits and all(n.isdigit() and n.lower() not in heldout for n in numbers)
    used = {tok.decode([i]) for n in numbers for i in tok.encode(n)}
    assert len(used & set(digits)) > 0.8 * len(digits)
    # the chats trained on hold piece words, and they are a function of the seed
    again = build_conversations(args, invented_words(args, tok))
    assert again == build_conversations(args, invented_words(args, tok))
    assert invented_words(args) == InventedWords()  # what a new tokenizer is trained on
    with pytest.raises(ValueError, match="pieces"):
        InventedWords(piece_share=1.0)(rng, "food")
    with pytest.raises(ValueError, match="digit pieces"):
        InventedWords(number_piece_share=1.0)(rng, "number")
