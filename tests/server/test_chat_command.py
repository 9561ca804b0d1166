"""`retserve chat`: a conversation is a session; a follow-up turn sends only its new message,
resumes from the stored state, and says what the same conversation fed whole would say."""

import pytest
import torch

from engine.config import ModelConfig
from engine.model import RetNet
from engine.tokenizer import Tokenizer
from server.chat_service import ServiceOptions
from server.commands.chat import LocalChat
from server.local_service import close_service, local_service
from training.chat_data import ACKS
from training.eval_recall import reply


@pytest.fixture
def tiny_chat_model(tiny_tokenizer_dir):
    torch.manual_seed(0)
    vocab = Tokenizer.from_dir(tiny_tokenizer_dir).vocab_size
    return RetNet(ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2,
                              qk_dim=32, v_dim=64, ffn_dim=64)).eval().requires_grad_(False)


async def test_follow_up_turn_resumes_from_the_session_state(tiny_tokenizer_dir,
                                                             tiny_chat_model):
    service = local_service(tiny_tokenizer_dir, model=tiny_chat_model, max_num_seqs=2)
    whole = local_service(tiny_tokenizer_dir, model=tiny_chat_model, max_num_seqs=2,
                          options=ServiceOptions(reuse_states=False))
    try:
        chat = LocalChat(service, system="Be brief.", max_tokens=6)
        first = await chat.reply("Hello, my name is Ada.")
        assert chat.num_cached_tokens == 0
        second = await chat.reply("What is my name?")
        assert chat.num_cached_tokens > 0
        assert service.engine.stats().num_slots_used == 0
        conversation = [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hello, my name is Ada."},
                        {"role": "assistant", "content": first},
                        {"role": "user", "content": "What is my name?"}]
        text, cached = await reply(whole, conversation, max_new_tokens=6)
        assert (text, cached) == (second, 0)
    finally:
        await close_service(service)
        await close_service(whole)


async def test_the_terminal_chat_is_a_client_of_a_running_server(start_server):
    from server.commands.chat import RemoteChat

    server = start_server(store_url="memory://")
    chat = RemoteChat(server.url)
    try:
        told = await chat.reply("My name is Ingrid.")
        assert told in ACKS  # an acknowledgement the model learned
        assert chat.num_cached_tokens == 0
        assert await chat.reply("What is my name?") == "Ingrid"
        assert chat.num_cached_tokens > 0
    finally:
        await chat.close()
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "server.cli", "chat", "--url", server.url],
                          input="My name is Ingrid.\nWhat is my name?\n", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bot>", *told.split(), "bot>", "Ingrid"]  # greedy: the same
