"""Fixtures shared by every suite."""

import pytest

# Multi-byte text the tiny tokenizer sees often enough to merge partially, so some tokens end
# inside a character (what the detokenizer must cope with).
MULTIBYTE_CHAT = [
    {"role": "user", "content": "日本語 café 🎉 naïve Ωmega"},
    {"role": "assistant", "content": "日本語 🎉🎉 über ñandú"},
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A ChatML byte-level BPE tokenizer (vocab 1024) trained on synthetic chats (~0.2 s)."""
    # Imported here so the rest of tests/engine never depends on the training package.
    from training.chat_data import generate_conversations
    from training.train_tokenizer import train_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    conversations = generate_conversations(300, seed=0) + [MULTIBYTE_CHAT] * 30
    train_tokenizer(out_dir, conversations, vocab_size=1024)
    return out_dir
