"""Seeded synthetic tool-use chats: the small tool pattern the shipped model learns.

A chat offers one to three functions (OpenAI `tools`, rendered by the chat template). The user
asks for something a tool provides; the assistant calls it with an argument copied from the
conversation (from the request itself, or a fact told turns before); a `tool` message brings
the result; the assistant answers from it, repeating the result's values. Some chats offer tools
and never need them (the assistant answers as in any chat), so that `tool_choice: "auto"` is a
choice the model makes.

Argument and result values are what the model must copy, not know: arguments come from
chat_data's value pools (train or held-out split) or are invented words; results are invented.
Held-out probes (`tool_probes`) use held-out argument values and results from their own seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from training.chat_data import POOLS, _filler_turn, _tell

Message = dict
Invent = Callable[[random.Random, str], str]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: tuple[tuple[str, str, str], ...]  # (name, JSON type, value kind)
    asks: tuple[str, ...]  # requests naming the arguments: "{city}"
    result: tuple[tuple[str, str], ...]  # (field, value kind)
    answers: tuple[str, ...]  # replies from the result (and arguments)
    # requests whose argument is a fact told earlier: (fact kind, request)
    from_fact: tuple[tuple[str, str], ...] = ()

    def definition(self) -> dict:
        """The OpenAI `tools` entry."""
        properties = {name: {"type": kind} for name, kind, _ in self.params}
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": properties,
                           "required": [name for name, _, _ in self.params]}}}


TOOLS = (
    ToolSpec("get_weather", "Current weather in a city.", (("city", "string", "city"),),
             ("What is the weather in {city}?", "How is the weather in {city} today?",
              "Check the weather in {city}."),
             (("forecast", "word"), ("temperature", "temperature")),
             ("It is {forecast} and {temperature} degrees in {city}.",
              "{forecast}, {temperature} degrees."),
             (("city", "What is the weather where I live?"),
              ("city", "How is the weather in my home town?"))),
    ToolSpec("get_time", "Local time in a city.", (("city", "string", "city"),),
             ("What time is it in {city}?", "Tell me the time in {city}."),
             (("time", "time"),),
             ("It is {time} in {city}.", "The time in {city} is {time}."),
             (("city", "What time is it where I live?"),)),
    ToolSpec("get_phone", "Phone number of a contact.", (("name", "string", "name"),),
             ("What is the phone number of {name}?", "Find the number of {name}."),
             (("phone", "phone"),),
             ("The number of {name} is {phone}.", "You can call {name} at {phone}."),
             (("name", "What is my phone number?"),)),
    ToolSpec("get_price", "Price of a dish.", (("item", "string", "food"),),
             ("How much is {item}?", "What does {item} cost?", "Check the price of {item}."),
             (("price", "price"),),
             ("The {item} costs {price}.", "It costs {price}."),
             (("food", "How much is my favourite food?"),)),
    ToolSpec("translate", "Translate a word to French.", (("word", "string", "word"),),
             ('Translate "{word}" to French.', 'What is "{word}" in French?'),
             (("translation", "word"),),
             ("It is {translation}.", '"{word}" is {translation} in French.')),
    ToolSpec("get_population", "Number of people living in a city.",
             (("city", "string", "city"),),
             ("How many people live in {city}?", "What is the population of {city}?"),
             (("population", "population"),),
             ("About {population} people live in {city}.", "{population} people."),
             (("city", "How many people live in my home town?"),)),
    ToolSpec("square", "Square of a whole number.", (("number", "integer", "small_number"),),
             ("What is the square of {number}?", "Square {number} for me."),
             (("result", "square"),),
             ("The square of {number} is {result}.", "It is {result}.")),
    ToolSpec("send_message", "Send a text message to a contact.",
             (("name", "string", "name"), ("text", "string", "phrase")),
             ('Tell {name} "{text}".', 'Send {name} the message "{text}".'),
             (("status", "status"), ("time", "time")),
             ("Sent to {name} at {time}: {status}.", "Message {status} at {time}.")),
)
TOOLS_BY_NAME = {spec.name: spec for spec in TOOLS}
_STATUSES = ("delivered", "queued", "sent")
# how many tools a chat offers (1, 2 or 3): each definition costs ~100 tokens of prompt
_NUM_TOOLS_WEIGHTS = (5, 3, 2)
# the calls the model copies worst: several words of a message, numbers of several digit tokens
HARD_TOOLS = ("send_message", "get_phone", "get_population", "square")


@dataclass(frozen=True)
class ToolChat:
    tools: list[dict]
    messages: list[Message]


def argument_value(rng: random.Random, kind: str, split: str, invent: Invent | None,
                   synthetic_share: float) -> str | int:
    """An argument the user names: a pool value (train or held-out) or an invented one."""
    if kind == "small_number":
        return rng.randint(2, 99)
    if kind in ("word", "phrase"):
        count = 1 if kind == "word" else rng.randint(1, 3)
        return " ".join(_invented(rng, invent, "food") for _ in range(count))
    if invent is not None and rng.random() < synthetic_share:
        return invent(rng, kind)
    return rng.choice(POOLS[kind][split])


def _invented(rng: random.Random, invent: Invent | None, kind: str) -> str:
    if invent is not None:
        return invent(rng, kind)
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou")
                   for _ in range(rng.randint(2, 3)))


def result_value(rng: random.Random, kind: str, args: dict, invent: Invent | None
                 ) -> str | int:
    if kind == "word":
        return _invented(rng, invent, "food").lower()
    if kind == "temperature":
        return rng.randint(-5, 40)
    if kind == "time":
        return f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}"
    if kind == "phone":
        return f"555-{rng.randint(0, 9999):04d}"
    if kind == "price":
        return f"{rng.randint(1, 30)}.{rng.choice((0, 5)) * 10 + rng.randint(0, 1) * 5:02d}"
    if kind == "population":
        return rng.randint(1000, 999999)
    if kind == "square":
        return args["number"] ** 2
    if kind == "status":
        return rng.choice(_STATUSES)
    raise ValueError(f"unknown result kind {kind!r}")


def call_message(spec: ToolSpec, args: dict, call_id: str) -> Message:
    """The assistant's call, as the API returns it (arguments: a JSON string)."""
    return {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": spec.name, "arguments": json.dumps(args)}}]}


def tool_message(result: dict, call_id: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}


def _exchange(rng: random.Random, spec: ToolSpec, split: str, invent: Invent | None,
              synthetic_share: float, told: dict, call_id: str, fact_share: float = 0.5
              ) -> tuple[list[Message], dict]:
    """One request -> call -> result -> answer; a fact in `told` supplies the argument with
    probability `fact_share` when the tool takes one."""
    facts = [(kind, ask) for kind, ask in spec.from_fact if kind in told]
    if facts and rng.random() < fact_share:
        kind, request = rng.choice(facts)
        args = {spec.params[0][0]: told[kind]}
    else:
        args = {name: argument_value(rng, kind, split, invent, synthetic_share)
                for name, _, kind in spec.params}
        request = rng.choice(spec.asks).format(**args)
    result = {field: result_value(rng, kind, args, invent) for field, kind in spec.result}
    answer = rng.choice(spec.answers).format(**args, **result)
    messages = [{"role": "user", "content": request}, call_message(spec, args, call_id),
                tool_message(result, call_id), {"role": "assistant", "content": answer}]
    return messages, {"args": args, "result": result}


def _plain_turn(rng: random.Random, split: str, invent: Invent | None, synthetic_share: float,
                told: dict) -> tuple[str, str]:
    """A turn without a call: tell a fact (city, name or food: tool arguments later), ask one
    back, or a filler."""
    roll = rng.random()
    if roll < 0.45:
        kind = rng.choice(("city", "name", "food"))
        told[kind] = argument_value(rng, kind, split, invent, synthetic_share)
        return _tell(rng, kind, told[kind])
    if told and roll < 0.65:
        kind = rng.choice(sorted(told))
        asks = {"city": "Where do I live?", "name": "What is my name?",
                "food": "What is my favourite food?"}
        return asks[kind], told[kind]
    return _filler_turn(rng)


def tool_chat(rng: random.Random, split: str = "train", invent: Invent | None = None,
              synthetic_share: float = 0.8, focus_share: float = 0.0) -> ToolChat:
    """With probability `focus_share` every call of the chat is to one of HARD_TOOLS."""
    specs = rng.sample(TOOLS, rng.choices((1, 2, 3), _NUM_TOOLS_WEIGHTS)[0])
    callable_specs = specs
    if focus_share and rng.random() < focus_share:
        hard = TOOLS_BY_NAME[rng.choice(HARD_TOOLS)]
        specs = [s for s in specs if s is not hard][:2] + [hard]
        rng.shuffle(specs)
        callable_specs = [hard]
    messages: list[Message] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    told: dict = {}
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        user, reply = _plain_turn(rng, split, invent, synthetic_share, told)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    num_calls = 0 if rng.random() < 0.15 else rng.choice((1, 1, 1, 2))
    for _ in range(max(num_calls, 1)):
        if num_calls:
            exchange, _ = _exchange(rng, rng.choice(callable_specs), split, invent,
                                    synthetic_share, told, f"call_{rng.getrandbits(32):08x}")
            messages += exchange
        if not num_calls or rng.random() < 0.3:
            user, reply = _plain_turn(rng, split, invent, synthetic_share, told)
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": reply}]
    return ToolChat([spec.definition() for spec in specs], messages)


def tool_chats(n: int, seed: int, invent: Invent | None = None, synthetic_share: float = 0.8,
               focus_share: float = 0.0) -> list[ToolChat]:
    """`n` training chats (train split); a pure function of the arguments."""
    rng = random.Random(f"retserve-tools:train:{seed}")
    return [tool_chat(rng, "train", invent, synthetic_share, focus_share) for _ in range(n)]


def tool_probes(n: int, seed: int, split: str = "heldout") -> list[dict]:
    """Held-out probes: `tools`, `messages` ending with the request, the expected `call`
    (name, arguments), the tool's `result` and the `call_id`; half of the requests name a fact
    told a turn or two before ("What is the weather where I live?")."""
    rng = random.Random(f"retserve-tool-probes:{split}:{seed}")
    probes = []
    while len(probes) < n:
        spec = rng.choice(TOOLS)
        others = rng.sample([t for t in TOOLS if t is not spec], rng.randint(0, 2))
        specs = [spec, *others]
        rng.shuffle(specs)
        told: dict = {}
        messages: list[Message] = []
        if spec.from_fact and rng.random() < 0.5:
            kind = spec.from_fact[0][0]
            told[kind] = argument_value(rng, kind, split, None, 0.0)
            user, ack = _tell(rng, kind, told[kind])
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": ack}]
            for _ in range(rng.randint(0, 1)):
                user, reply = _filler_turn(rng)
                messages += [{"role": "user", "content": user},
                             {"role": "assistant", "content": reply}]
        exchange, found = _exchange(rng, spec, split, None, 0.0, told,
                                    f"call_{rng.getrandbits(32):08x}", fact_share=1.0)
        probes.append({"tools": [s.definition() for s in specs],
                       "messages": messages + exchange[:1], "from_fact": bool(told),
                       "call": {"name": spec.name, "arguments": found["args"]},
                       "result": found["result"], "call_id": exchange[1]["tool_calls"][0]["id"]})
    return probes
