"""Turns in lockstep: every conversation finishes turn k before any starts turn k + 1, and the
last to arrive runs a callback first (the memory sample of "all conversations at turn k").
For gevent greenlets (Locust users): no locks, only an event per round."""

from __future__ import annotations

from collections.abc import Callable

from gevent.event import Event


class TurnBarrier:
    def __init__(self, parties: int, at_turn: Callable[[int], None]):
        self.parties = parties
        self.at_turn = at_turn
        self.arrived = 0
        self.round = 0
        self._event = Event()

    def wait(self, turn: int) -> None:
        self.arrived += 1
        self.round = turn
        if self.arrived >= self.parties:
            self._release()
        else:
            self._event.wait()

    def leave(self) -> None:
        """A conversation that stops early no longer holds the others back."""
        self.parties -= 1
        if 0 < self.parties <= self.arrived:
            self._release()

    def _release(self) -> None:
        event, self._event = self._event, Event()
        try:
            self.at_turn(self.round)
        finally:
            self.arrived = 0
            event.set()
