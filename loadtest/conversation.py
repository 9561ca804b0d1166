"""A scripted conversation: seeded user messages in the style of the shipped model's training
chats (facts told, asked back, sums, small talk), so replies are ordinary text of ordinary length.
The history grows by one user message and one reply per turn, as an agent backend's does."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NAMES = ["Anika", "Tomas", "Priya", "Kenji", "Maren", "Lucas", "Zora", "Ibrahim", "Elena", "Otto"]
CITIES = ["Lisbon", "Osaka", "Denver", "Tallinn", "Cusco", "Dakar", "Perth", "Bergen"]
COLOURS = ["green", "purple", "orange", "teal", "crimson", "yellow"]
TOPICS = ["the weather", "my garden", "a book I read", "the weekend", "cooking", "music"]


def user_message(rng: random.Random, turn: int) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"My name is {rng.choice(NAMES)} and I live in {rng.choice(CITIES)}."
    if kind == 1:
        return "What is my name?" if turn > 1 else "Hello there, how are you today?"
    if kind == 2:
        a, b = rng.randrange(2, 50), rng.randrange(2, 50)
        return f"What is {a} plus {b}?"
    if kind == 3:
        return f"My favourite colour is {rng.choice(COLOURS)}. Do you like it?"
    if kind == 4:
        return f"Let's talk about {rng.choice(TOPICS)}. What do you think?"
    return f"Please repeat after me: {rng.choice(NAMES)} {rng.choice(CITIES)}."


@dataclass
class Conversation:
    index: int
    seed: int = 0
    variant: str = "history"  # how its turns are sent: whole history, or a session id
    messages: list[dict] = field(default_factory=list)
    num_tokens: int = 0  # the server's count after the last reply (prompt + completion)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed * 1_000_003 + self.index)

    @property
    def num_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")

    def ask(self) -> dict:
        """The next user message (appended to the history)."""
        message = {"role": "user", "content": user_message(self.rng, self.num_turns + 1)}
        self.messages.append(message)
        return message

    def answered(self, text: str, num_tokens: int) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self.num_tokens = num_tokens

    def forget_question(self) -> None:
        """A failed turn: the question goes unanswered and is not resent."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()
