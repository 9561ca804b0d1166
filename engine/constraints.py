"""Grammar-constrained decoding with llguidance: a matcher per request, a token mask per
constrained row of the decode batch, and the tokens a grammar forces.

A recurrent state cannot be rolled back, so a sampled token must never be one the grammar may
later reject: the mask allows exactly the tokens that keep the output a prefix of the grammar's
language (llguidance computes it from the tokenizer's byte trie), and the end-of-turn ids only
where the grammar may end. Where the grammar allows a single continuation (`{"name": "` after
`{`), those tokens are forced: emitted at once and fed to the state without sampling.

Masks are computed off the engine thread: once a step has consumed its sampled tokens, the
next masks of every constrained sequence are computed on a worker (llguidance releases the GIL)
while the engine runs the next step's prefill and model forward, and the sampler waits for them
only when it needs them. A decode batch without a constrained row touches none of this.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor

import llguidance
import llguidance.torch as llgt
import torch
from torch import Tensor

from engine.errors import InvalidRequestError


class GrammarError(InvalidRequestError):
    """A grammar llguidance refuses (syntax, unsupported JSON-schema keyword, ...)."""


def grammar_error(grammar: str, tokenizer: llguidance.LLTokenizer | None = None) -> str | None:
    """Why llguidance refuses a grammar (its first error), or None if it compiles."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    return (messages[0] if messages else "invalid grammar") if is_error else None


class TokenConstraint:
    """One sequence's grammar state: what it may sample next, what it is forced to emit."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher
        self.needs_mask = True  # its state changed since its last mask was started

    def advance(self, token: int) -> list[int]:
        """Consumes a sampled token (one the mask allowed); returns the tokens the grammar now
        forces, consumed too. A refused token is a bug (the mask allowed it): RuntimeError."""
        self.needs_mask = True
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"grammar refused sampled token {token}: "
                               f"{self.matcher.get_error()}")
        forced = self.matcher.compute_ff_tokens()
        if forced and not self.matcher.consume_tokens(forced):
            raise RuntimeError(f"grammar refused its forced tokens: {self.matcher.get_error()}")
        return forced

    @property
    def is_done(self) -> bool:
        """Nothing but the end may follow: the output is complete."""
        return self.matcher.is_stopped()


class Constraints:
    """The engine's constraint machinery: compiles grammars (cached) into per-sequence
    constraints, and computes and applies the decode batch's masks."""

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_token_ids, num_slots: int,
                 device: torch.device, num_threads: int | None = None, cache_size: int = 64):
        self.vocab_size = vocab_size
        self.device = device
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size,
                                                eos_token=sorted(stop_token_ids))
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # compile() runs on callers' threads
        # [num_slots, ceil(V / 32)] allowed-token bits per slot, written by the worker
        self.bitmask = llgt.allocate_token_bitmask(num_slots, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32, device=device)
        self._executor = llguidance.LLExecutor(num_threads or min(4, os.cpu_count() or 1))
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="retserve-masks")
        self._pending: Future | None = None
        # recent timings (seconds), for benchmarks: mask work per token (off the engine
        # thread), and the engine thread's wait for masks plus their application per step
        self.mask_seconds: deque[float] = deque(maxlen=100_000)
        self.apply_seconds: deque[float] = deque(maxlen=100_000)

    # compiling ---------------------------------------------------------------------------

    def compile(self, grammar: str) -> TokenConstraint:
        """A fresh constraint for `grammar` (an llguidance grammar string); GrammarError when
        it does not compile. The compiled start state is cached by grammar text."""
        with self._lock:
            start = self._compiled.get(grammar)
            if start is not None:
                self._compiled.move_to_end(grammar)
        if start is None:
            start = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            if start.is_error():
                raise GrammarError(f"invalid grammar: {start.get_error()}")
            with self._lock:
                self._compiled[grammar] = start
                if len(self._compiled) > self._cache_size:
                    self._compiled.popitem(last=False)
        return TokenConstraint(start.deep_copy())

    # masks -------------------------------------------------------------------------------

    def start_masks(self, items: list[tuple[TokenConstraint, int]]) -> None:
        """Computes the next mask of each (constraint, slot) in the background. Call once its
        constraint has consumed the step's tokens; `apply` waits for it."""
        if not items:
            return
        matchers = [(c.matcher, slot) for c, slot in items]
        previous = self._pending

        def run() -> None:
            if previous is not None:
                previous.result()
            start = time.perf_counter()
            llgt.fill_next_token_bitmask_par(self._executor, matchers, self.bitmask)
            per_token = (time.perf_counter() - start) / len(matchers)
            self.mask_seconds.extend([per_token] * len(matchers))

        self._pending = self._worker.submit(run)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def apply(self, logits: Tensor, rows: list[int], slots: list[int]) -> Tensor:
        """logits [B, V] with every token the grammars of `rows` (batch rows, holding `slots`)
        forbid set to -inf; other rows untouched."""
        start = time.perf_counter()
        self.wait()
        words = self.bitmask[slots].to(self.device, non_blocking=True)  # [n, W] int32
        allowed = ((words[:, :, None] >> self._shifts) & 1).flatten(1)[:, :logits.shape[1]]
        index = torch.tensor(rows, device=logits.device)
        masked = logits.index_select(0, index).masked_fill(allowed == 0, float("-inf"))
        logits = logits.index_copy(0, index, masked)
        self.apply_seconds.append(time.perf_counter() - start)
        return logits

    def close(self) -> None:
        self._worker.shutdown(wait=True)
