"""`retserve chat`: a terminal chat through the batching engine, one retention state per
conversation carried across turns, so each turn feeds only its new tokens."""

from __future__ import annotations

import sys
import uuid

from engine.checkpoint import DEFAULT_MODEL_DIR
from engine.engine import LLMEngine
from engine.engine_config import EngineConfig
from engine.sampling import SamplingParams
from engine.sequence import Request
from engine.tokenizer import Tokenizer


class ChatSession:
    """One conversation: its messages, the tokens folded into its state, and the state."""

    def __init__(self, engine: LLMEngine, tokenizer: Tokenizer, system: str | None = None):
        self.engine, self.tokenizer = engine, tokenizer
        self.messages = [{"role": "system", "content": system}] if system else []
        self.fed_ids: list[int] = []
        self.state = None
        self.num_cached_tokens = 0  # of the last turn: tokens it did not have to feed
        self.last_prompt_ids: list[int] = []

    def reply(self, user_text: str, params: SamplingParams, on_text=None) -> str:
        history = list(self.messages)
        self.messages.append({"role": "user", "content": user_text})
        new_ids = None
        if self.state is not None:
            new_ids = self.tokenizer.encode_chat_continuation(history, self.messages)
        if new_ids is None:  # first turn, or the template can't continue: feed it all
            self.fed_ids, self.state = [], None
            new_ids = self.tokenizer.encode_chat(self.messages, add_generation_prompt=True)
        prompt = self.fed_ids + new_ids  # every token of the conversation the model has seen
        self.last_prompt_ids = prompt
        request = Request(uuid.uuid4().hex, new_ids, params, initial_state=self.state,
                          return_state=True, trailing_ids=self.tokenizer.end_of_turn_ids)
        self.engine.add_request(request)
        text, reply_ids, final = [], [], None
        while final is None:
            for out in self.engine.step():
                text.append(out.text)
                reply_ids += out.token_ids
                if on_text and out.text:
                    on_text(out.text)
                if out.finished:
                    final = out
        reply = "".join(text)
        self.messages.append({"role": "assistant", "content": reply})
        stop = self.tokenizer.stop_token_ids
        body = reply_ids[:-1] if reply_ids and reply_ids[-1] in stop else reply_ids
        self.fed_ids = prompt + body + list(self.tokenizer.end_of_turn_ids)
        self.state = final.state
        self.num_cached_tokens = final.num_cached_tokens
        return reply


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint directory")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.set_defaults(func=_run)


def _run(args) -> int:
    tokenizer = Tokenizer.from_dir(args.model)
    engine = LLMEngine.from_checkpoint(args.model, EngineConfig(max_num_seqs=4), tokenizer)
    session = ChatSession(engine, tokenizer, args.system)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    interactive = sys.stdin.isatty()
    print(f"retserve chat: {args.model} (empty line or Ctrl-D to quit)", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            break
        print("bot> ", end="", flush=True)
        session.reply(line, params, on_text=lambda t: print(t, end="", flush=True))
        print(f"   [{session.state.num_tokens.item()} tokens in state]" if interactive else "")
    return 0
