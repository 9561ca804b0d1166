"""What a turn reports while it runs: the chat service calls these; the server's Prometheus
metrics implement them (server/metrics.py); the CLI and evals run with the silent default."""

from __future__ import annotations


class TurnMetrics:
    def first_token(self, seconds: float) -> None:
        """Time from the turn's arrival to its first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Time between two consecutive tokens of one choice."""

    def queued(self, seconds: float) -> None:
        """Time a choice waited for a state slot."""

    def prefix_lookup(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        """A turn's prompt tokens (its whole conversation) and those a stored state covered."""

    def finished(self, reason: str, seconds: float, num_prompt_tokens: int,
                 num_generated_tokens: int) -> None:
        """One request ended (reason: stop, length, abort, error, timeout)."""

    def store_error(self, operation: str) -> None:
        """The store failed an operation the turn needed; the turn went on without it."""

    def state_refeed(self, num_tokens: int) -> None:
        """Tokens fed again after a turn so that its stored state is exact: a reply whose
        tokens are not its text's own tokenization is fed as that tokenization."""


NO_METRICS = TurnMetrics()
