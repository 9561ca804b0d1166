"""Circuit breaker: a backend that stopped answering costs one timeout, then fails fast.

closed --(failure_threshold consecutive failures)--> open --(reset_timeout)--> half-open
half-open lets exactly one probe call through: success closes the circuit, failure re-opens it
with the wait doubled (capped at max_reset_timeout). While open, calls raise StoreUnavailable
without touching the network, so a dead Redis cannot stall every request for a full timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

from state_store.errors import StoreUnavailable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int = 1, reset_timeout: float = 1.0,
                 max_reset_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ValueError("failure_threshold >= 1 and reset_timeout > 0 required")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.max_reset_timeout = max_reset_timeout
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._wait = reset_timeout
        self._open_until = 0.0
        self._probe_in_flight = False
        self.num_opened = 0  # times the circuit opened, for metrics and tests

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() >= self._open_until:
            return HALF_OPEN
        return self._state

    def _admit(self) -> bool:
        """Raise StoreUnavailable or let the call through; True if the call is the probe."""
        if self._state == CLOSED:
            return False
        if self._state == OPEN:
            left = self._open_until - self._clock()
            if left > 0:
                raise StoreUnavailable(f"circuit open, next probe in {left:.2f}s")
            self._state = HALF_OPEN
        if self._probe_in_flight:
            raise StoreUnavailable("circuit half-open, probe in flight")
        self._probe_in_flight = True
        return True

    def _success(self, is_probe: bool) -> None:
        # a late success of a call admitted before the circuit opened proves little; only the
        # probe may close an open circuit
        if is_probe or self._state == CLOSED:
            self._state, self._failures, self._wait = CLOSED, 0, self.reset_timeout
        if is_probe:
            self._probe_in_flight = False

    def _failure(self, is_probe: bool) -> None:
        self._failures += 1
        if is_probe:
            self._probe_in_flight = False
            self._wait = min(self._wait * 2, self.max_reset_timeout)
        if is_probe or self._state == HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state == CLOSED:
                self.num_opened += 1
            self._state = OPEN
            self._open_until = self._clock() + self._wait

    @contextmanager
    def guard(self, failure_types: tuple[type[BaseException], ...]):
        """Wrap one backend call; failure_types become StoreUnavailable and count as failures.

        Other exceptions (the backend answered, e.g. with an error reply) count as success;
        cancellation counts as neither.
        """
        is_probe = self._admit()
        try:
            yield
        except failure_types as e:
            self._failure(is_probe)
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
        except StoreUnavailable:
            self._failure(is_probe)
            raise
        except Exception:
            self._success(is_probe)
            raise
        except BaseException:
            if is_probe:
                self._probe_in_flight = False
            raise
        else:
            self._success(is_probe)
