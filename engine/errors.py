"""Exceptions the engine raises for callers to map (the server: 400 and 503)."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request the engine refuses as given: bad ids, empty prompt, out-of-range sampling."""


class EngineOverloaded(RuntimeError):
    """The waiting queue is full: retry later."""
