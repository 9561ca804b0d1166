"""Seeded synthetic multi-turn chats for training (and evaluating) a tiny RetNet chat model.

What the data teaches is what retserve exists to show off: a conversation's constant-size state
must carry facts across turns. The user tells facts (name, city, colour, ...) and asks for them
back turns later; filler turns (small talk, small sums, counting, echoing a quoted phrase) sit in
between. Replies are a few words, and a recalled fact is answered with exactly its value, so a
tiny model can learn the task and an evaluation can compare strings.

Fact values come in two disjoint pools: "train" and "heldout". Held-out values never occur in a
training conversation, so recall on them measures copying from the state, not memorisation.
Everything is a pure function of (n, seed, split): the same arguments give the same chats.
"""

from __future__ import annotations

import random

Message = dict[str, str]
Conversation = list[Message]

SPLITS = ("train", "heldout")

# Value pools, per fact kind: (train, heldout). All words across all pools and the echo vocabulary
# are distinct (tests check it), so a held-out value cannot leak into training text by accident.
_NAMES = (
    "Alice Bruno Clara Daniel Elena Felix Greta Hugo Irene Jonas Karla Leon Maria Nico Olga "
    "Pablo Rosa Simon Tara Victor Wanda Yusuf Zoe Amir Bianca Carlos Dora Emil Fiona Gustav "
    "Hanna Ivan Julia Kenji Lara Marco Nadia Oscar Petra Quinn Rafael Sofia Tomas Uma Vera",
    "Anika Boris Celine Dario Esme Farid Gemma Henrik Ingrid Jasper Lucia Milo",
)
_CITIES = (
    "Lisbon Madrid Berlin Vienna Prague Warsaw Oslo Dublin Athens Rome Paris London Tokyo "
    "Seoul Cairo Lima Quito Denver Boston Toronto Sydney Mumbai Nairobi Havana Zurich",
    "Porto Krakow Bergen Leeds Kyoto Busan Cusco Austin Perth Accra",
)
_COLOURS = (
    "red blue green yellow orange purple pink brown black white grey gold",
    "teal maroon indigo violet crimson turquoise",
)
_FOODS = (
    "pizza pasta sushi tacos curry soup salad noodles pancakes dumplings burgers risotto",
    "paella ramen falafel lasagna gnocchi burritos",
)
_PETS = (
    "Biscuit Pepper Luna Max Bella Charlie Daisy Rocky Coco Teddy Buddy Simba Nala Oreo Ziggy",
    "Waffles Pickles Mochi Noodle Sprout Pretzel",
)
_ECHO_WORDS = (
    "apple river quiet jump stone happy window cloud little bright train music garden candle "
    "paper silver morning ocean forest slow warm dance light tree bird book road moon sun rain"
).split()


def _lucky_numbers() -> tuple[list[str], list[str]]:
    # Three digits keep them clear of the sums and counts below (all under 100).
    numbers = [str(n) for n in range(100, 1000)]
    random.Random("retserve-lucky-numbers").shuffle(numbers)
    return sorted(numbers[150:]), sorted(numbers[:150])


def _pools() -> dict[str, dict[str, list[str]]]:
    words = {
        "name": _NAMES,
        "city": _CITIES,
        "colour": _COLOURS,
        "food": _FOODS,
        "pet": _PETS,
    }
    pools = {kind: {"train": t.split(), "heldout": h.split()} for kind, (t, h) in words.items()}
    train_numbers, heldout_numbers = _lucky_numbers()
    pools["number"] = {"train": train_numbers, "heldout": heldout_numbers}
    return pools


POOLS = _pools()
FACT_KINDS = tuple(POOLS)

# (ways to tell, ways to ask). Asks are about the same concept as the tell, so the answer is unique.
_FACT_PHRASES: dict[str, tuple[list[str], list[str]]] = {
    "name": (
        ["My name is {v}.", "Hi, I am {v}.", "Call me {v}."],
        ["What is my name?", "Do you remember my name?", "What's my name?"],
    ),
    "city": (
        ["I live in {v}.", "I am from {v}.", "My home town is {v}."],
        ["Where do I live?", "Which city am I from?", "What is my home town?"],
    ),
    "colour": (
        ["My favourite colour is {v}.", "I really like the colour {v}."],
        ["What is my favourite colour?", "Which colour do I like?"],
    ),
    "food": (
        ["My favourite food is {v}.", "I love eating {v}."],
        ["What is my favourite food?", "What do I love eating?"],
    ),
    "pet": (
        ["My dog is called {v}.", "I have a cat named {v}.", "My pet's name is {v}."],
        ["What is my pet's name?", "What is my pet called?"],
    ),
    "number": (
        ["My lucky number is {v}.", "Remember my lucky number: {v}."],
        ["What is my lucky number?", "Which number is my lucky number?"],
    ),
}
ACKS = [  # what the model says when told a fact
    "Got it.", "Noted.", "I will remember that.", "Okay!", "Thanks for telling me."]
_NOT_TOLD = "You have not told me yet."

_SMALL_TALK = [
    ("Hello!", "Hello! How can I help?"),
    ("Hi there.", "Hi! What can I do for you?"),
    ("How are you?", "I am fine, thanks."),
    ("Thank you.", "You are welcome."),
    ("Thanks a lot!", "Happy to help."),
    ("What is your name?", "I am a small assistant."),
    ("Good morning!", "Good morning!"),
    ("Nice weather today.", "Yes, it is lovely."),
    ("What can you do?", "I can chat, do sums and remember facts."),
    ("Are you a robot?", "I am a language model."),
    ("I am bored.", "Let's do some sums."),
    ("Do you like music?", "I like all kinds of music."),
]
_SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep answers short.",
]


def _filler_turn(rng: random.Random) -> tuple[str, str]:
    """One user/assistant exchange that tells no fact: small talk, a sum, counting or an echo."""
    kind = rng.choice(("small_talk", "plus", "minus", "count", "echo"))
    if kind == "small_talk":
        return rng.choice(_SMALL_TALK)
    if kind == "plus":
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        op = rng.choice(("plus", "+"))
        return f"What is {a} {op} {b}?", str(a + b)
    if kind == "minus":
        a = rng.randint(0, 20)
        b = rng.randint(0, a)
        op = rng.choice(("minus", "-"))
        return f"What is {a} {op} {b}?", str(a - b)
    if kind == "count":
        start = rng.randint(1, 15)
        stop = start + rng.randint(2, 5)
        return f"Count from {start} to {stop}.", " ".join(str(i) for i in range(start, stop + 1))
    phrase = " ".join(rng.sample(_ECHO_WORDS, rng.randint(2, 4)))
    prompt = rng.choice(('Repeat after me: "{p}"', 'Say "{p}".', 'Please echo "{p}".'))
    return prompt.format(p=phrase), phrase


def _tell(rng: random.Random, kind: str, value: str) -> tuple[str, str]:
    return rng.choice(_FACT_PHRASES[kind][0]).format(v=value), rng.choice(ACKS)


def _ask(rng: random.Random, kind: str) -> str:
    return rng.choice(_FACT_PHRASES[kind][1])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _conversation(rng: random.Random, split: str) -> Conversation:
    messages: Conversation = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
    told: dict[str, str] = {}
    for _ in range(rng.randint(2, 10)):
        untold = [k for k in FACT_KINDS if k not in told]
        roll = rng.random()
        if untold and roll < 0.35:
            kind = rng.choice(untold)
            told[kind] = rng.choice(POOLS[kind][split])
            user, reply = _tell(rng, kind, told[kind])
        elif told and roll < 0.7:
            kind = rng.choice(sorted(told))
            user, reply = _ask(rng, kind), told[kind]
        elif untold and roll < 0.73:
            # Asked for something never told: the model must not guess a plausible value.
            user, reply = _ask(rng, rng.choice(untold)), _NOT_TOLD
        else:
            user, reply = _filler_turn(rng)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def generate_conversations(n: int, seed: int, split: str = "train") -> list[Conversation]:
    """`n` chats of 2-10 exchanges (plus an optional system message), all ending with a reply."""
    _check_split(split)
    rng = random.Random(f"retserve-chat:{split}:{seed}")
    return [_conversation(rng, split) for _ in range(n)]


def recall_probes(n: int, turns_back: int, seed: int, *, split: str = "heldout") -> list[dict]:
    """Recall questions asked `turns_back` filler exchanges after the fact was told.

    Each probe is `{"messages", "answer", "kind", "turns_back"}`: `messages` ends with the user's
    question (render it with a generation prompt); a correct model replies exactly `answer`.
    Probes use held-out values by default, so a right answer can only come from the state.
    """
    _check_split(split)
    if turns_back < 0:
        raise ValueError("turns_back must be >= 0")
    rng = random.Random(f"retserve-recall:{split}:{turns_back}:{seed}")
    probes = []
    for _ in range(n):
        kind = rng.choice(FACT_KINDS)
        value = rng.choice(POOLS[kind][split])
        user, ack = _tell(rng, kind, value)
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ack}]
        for _ in range(turns_back):
            user, reply = _filler_turn(rng)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        messages.append({"role": "user", "content": _ask(rng, kind)})
        probes.append(
            {"messages": messages, "answer": value, "kind": kind, "turns_back": turns_back}
        )
    return probes
