"""Stop strings over streamed text: the stop text never reaches the client, also when it spans
several deltas (tokens) or SSE chunks. Text that could still be the start of a stop string is
held back until the next delta shows it is not."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Feed a delta -> (text safe to send, whether a stop string ended the output). On a
        match, the text before it is returned and everything after is dropped."""
        if not self.stops:
            return text, False
        pending = self._pending + text
        ends = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if ends:
            self._pending = ""
            return pending[: min(ends)], True
        keep = self._held_suffix(pending)
        self._pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of the output (it did not become a stop string)."""
        text, self._pending = self._pending, ""
        return text

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        for k in range(min(self._hold, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0
