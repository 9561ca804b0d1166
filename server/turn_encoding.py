"""Which tokens a turn feeds, for each state it may continue from, by one rule: the tokens of
the conversation rendered by the chat template and encoded whole. A stored state is the state
after exactly those tokens, so continuing from it and feeding the conversation from scratch give
the same model input.

- whole: no state; the rendered conversation (with the generation prompt).
- after a stored prefix: the tokens the rendering adds after the prefix's text (the prefix ends
  with an assistant turn and its end-of-turn, so the continuation starts at a turn marker).
- after an unknown history (a session known only by its key): possible when the template
  renders each turn on its own (ChatML does), checked once against two different histories.

Tool definitions (`tools`) render with the conversation's start (ChatML: in the system turn), so
a turn's tokens after a stored prefix do not depend on them, but the whole rendering does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.tokenizer import Message, Tokenizer

# stand-in histories: a template that renders a turn the same after both needs no history
_PROBES = (
    [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6, of course."}],
)
_SAMPLE_TURN = [{"role": "user", "content": "What next?"}]


@dataclass(frozen=True)
class TurnTokens:
    """The tokens a turn feeds and how they were found (to check its reply by the same rule)."""

    ids: list[int]
    history: tuple[Message, ...] | None  # the stored prefix's messages ("after"), else None
    mode: str  # "whole" | "after" | "unknown"
    tools: tuple[Message, ...] | None = None  # function definitions the template rendered


class TurnEncoder:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.end_of_turn_ids = tuple(tokenizer.end_of_turn_ids)
        self.is_history_free = self._renders_turns_alone()

    def whole(self, messages: Sequence[Message], add_generation_prompt: bool = True,
              tools: Sequence[Message] | None = None) -> TurnTokens:
        return TurnTokens(self.tokenizer.encode_chat(messages, add_generation_prompt, tools),
                          None, "whole", _tuple(tools))

    def after(self, history: Sequence[Message], messages: Sequence[Message],
              add_generation_prompt: bool = True, tools: Sequence[Message] | None = None
              ) -> TurnTokens | None:
        """Tokens `messages` add after `history` (their prefix, ending with an assistant turn);
        None when the template does not render history as a text prefix. A template that
        renders turns alone costs only the new messages' rendering, whatever the history's
        length; any other renders the history too."""
        if self.is_history_free:
            ids = self._after_probe(_PROBES[0], messages[len(history):], add_generation_prompt,
                                    tools)
        else:
            ids = self.tokenizer.encode_chat_continuation(history, messages,
                                                          add_generation_prompt, tools)
        return None if ids is None else TurnTokens(ids, tuple(history), "after", _tuple(tools))

    def after_unknown(self, new_messages: Sequence[Message], add_generation_prompt: bool = True,
                      tools: Sequence[Message] | None = None) -> TurnTokens | None:
        """Tokens of `new_messages` after a history known only as a state; None when the
        template needs the history's text."""
        if not self.is_history_free or not new_messages:
            return None
        ids = self._after_probe(_PROBES[0], new_messages, add_generation_prompt, tools)
        return None if ids is None else TurnTokens(ids, None, "unknown", _tuple(tools))

    def reply(self, turn: TurnTokens, messages: Sequence[Message], reply: Message
              ) -> list[int] | None:
        """Tokens the same rule gives for the turn's messages plus its reply (no generation
        prompt): what prompt + reply + end-of-turn must have been for the state after them to
        equal the state of the conversation fed from scratch."""
        full = [*messages, reply]
        if turn.mode == "whole":
            return self.whole(full, add_generation_prompt=False, tools=turn.tools).ids
        if turn.mode == "after":
            found = self.after(turn.history, full, add_generation_prompt=False, tools=turn.tools)
        else:
            found = self.after_unknown(full, add_generation_prompt=False, tools=turn.tools)
        return None if found is None else found.ids

    def _after_probe(self, probe: list[Message], new_messages: Sequence[Message],
                     add_generation_prompt: bool, tools: Sequence[Message] | None = None
                     ) -> list[int] | None:
        # encode_chat sanitises special-token text in messages; the probe's own tokens are a
        # prefix because the new turn starts at a template turn marker (a special token)
        full = self.tokenizer.encode_chat([*probe, *new_messages], add_generation_prompt, tools)
        prefix = self.tokenizer.encode_chat(probe, add_generation_prompt=False, tools=tools)
        return full[len(prefix):] if full[: len(prefix)] == prefix else None

    def _renders_turns_alone(self) -> bool:  # (without tools: they render at the start)
        if self.tokenizer.chat_template is None:
            return False
        try:
            found = [self._after_probe(p, _SAMPLE_TURN, True) for p in _PROBES]
        except ValueError:  # the template refuses the probes (ChatTemplateError)
            return False
        return found[0] is not None and found[0] == found[1]


def _tuple(tools: Sequence[Message] | None) -> tuple[Message, ...] | None:
    return tuple(tools) if tools else None
