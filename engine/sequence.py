"""A request as the engine sees it: what it asked for, and a Sequence for its progress."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum, auto

from engine.sampling import SamplingParams, TokenLogprob
from engine.state import RetentionState


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]  # tokens to feed: the whole prompt, or only the new ones after a state
    params: SamplingParams = field(default_factory=SamplingParams)
    # Start from this one-row state instead of the empty one: a follow-up turn feeds only its
    # new tokens. Bytes from a store are turned into a state by the caller (off the engine).
    initial_state: RetentionState | None = None
    # The final state is returned when asked for: prompt + reply (a terminating stop token left
    # out) + trailing_ids (e.g. the chat template's end-of-turn), fed after generation.
    return_state: bool = False
    trailing_ids: tuple[int, ...] = ()
    # Also the state after the prompt, on the first output: a reply that must be fed again (as
    # its text's own tokens, for an exact stored state) is fed from there, not before the prompt.
    return_prompt_state: bool = False
    # Feed the whole prompt and return its state, generating nothing: `n` choices of one prompt
    # prefill once, then each continues from a copy of this state.
    prefill_only: bool = False
    # Part of a turn already admitted (its refeed, a copy of its prefilled prompt): never refused
    # for a full waiting queue, which would fail that turn half done.
    admitted: bool = False


@dataclass(frozen=True)
class RequestTimings:
    arrival: float
    scheduled: float | None  # first admitted into a slot
    first_token: float | None
    finished: float | None


@dataclass
class RequestOutput:
    """What one step produced for one request: new tokens and text (deltas, not totals)."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop", "length", "abort"; None while running
    num_prompt_tokens: int  # tokens fed for this request (prompt_ids)
    num_cached_tokens: int  # tokens already in the initial state
    num_generated_tokens: int
    logprobs: list[TokenLogprob] | None = None
    state: RetentionState | None = None  # final state (CPU), when asked for
    timings: RequestTimings | None = None  # on the final output
    prompt_state: RetentionState | None = None  # on the first output, when asked for

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def merged(self, later: RequestOutput) -> RequestOutput:
        """This output followed by a later one of the same request, as one."""
        logprobs = None
        if self.logprobs is not None or later.logprobs is not None:
            logprobs = [*(self.logprobs or ()), *(later.logprobs or ())]
        prompt_state = self.prompt_state if self.prompt_state is not None else later.prompt_state
        return replace(later, token_ids=[*self.token_ids, *later.token_ids],
                       text=self.text + later.text, logprobs=logprobs, prompt_state=prompt_state)


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()  # holds a slot: prefilling, decoding, or feeding its tail
    FINISHED = auto()


class Sequence:
    def __init__(self, request: Request, stop_token_ids: frozenset[int], detokenizer=None,
                 constraint=None):
        self.request_id = request.request_id
        self.prompt_ids = list(request.prompt_ids)
        self.params = request.params
        self.stop_token_ids = stop_token_ids
        self.detokenizer = detokenizer
        self.initial_state = request.initial_state  # dropped once loaded into the slot
        # tokens already in the initial state
        self.num_cached_tokens = (0 if request.initial_state is None
                                  else int(request.initial_state.num_tokens[0]))
        self.is_prefill_only = request.prefill_only
        self.is_admitted = request.admitted
        self.return_state = request.return_state or request.prefill_only
        self.trailing_ids = tuple(request.trailing_ids)
        self.return_prompt_state = request.return_prompt_state
        self.prompt_state: RetentionState | None = None  # taken at the first token, sent once
        self.status = SequenceStatus.WAITING
        self.slot: int | None = None
        self.num_prompt_fed = 0
        self.output_ids: list[int] = []
        self.finish_reason: str | None = None
        self.tail: deque[int] | None = None  # after finishing: tokens still to feed
        # a grammar's state (engine/constraints.TokenConstraint), or None
        self.constraint = constraint
        # output tokens emitted but not in the state yet, before output_ids[-1] (which the next
        # decode step feeds): a sampled token and the tokens its grammar forced after it
        self.unfed: deque[int] = deque()
        self.arrival_time = time.monotonic()
        self.scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finished_time: float | None = None

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, {self.status.name}, slot={self.slot}, "
                f"prompt={self.num_prompt_fed}/{len(self.prompt_ids)}, out={len(self.output_ids)})")

    @property
    def num_prompt_left(self) -> int:
        return len(self.prompt_ids) - self.num_prompt_fed

    @property
    def is_prefilling(self) -> bool:
        """Prompt tokens are fed chunkwise up to the last one, which goes through the decode
        step (as every later token does): its logits give the first generated token. A
        prefill-only sequence feeds every prompt token chunkwise."""
        return self.num_prompt_left > (0 if self.is_prefill_only else 1)

    @property
    def num_prefill_tokens_left(self) -> int:
        """Prompt tokens still to be fed chunkwise."""
        return self.num_prompt_left - (0 if self.is_prefill_only else 1)

    @property
    def is_finishing(self) -> bool:
        return self.tail is not None

    @property
    def next_input(self) -> int:
        """The token this sequence feeds in the next decode step."""
        if self.tail is not None:
            return self.tail[0]
        if self.unfed:  # forced tokens fed through decode steps (EngineConfig.forced_tokens)
            return self.unfed[0]
        if self.num_prompt_left:
            return self.prompt_ids[-1]
        return self.output_ids[-1]

    def timings(self) -> RequestTimings:
        return RequestTimings(arrival=self.arrival_time, scheduled=self.scheduled_time,
                              first_token=self.first_token_time, finished=self.finished_time)
