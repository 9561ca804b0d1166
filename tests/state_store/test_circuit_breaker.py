"""CircuitBreaker state machine, driven by a hand-advanced clock."""

import asyncio

import pytest

from state_store import StoreUnavailable
from state_store.breaker import CircuitBreaker

FAIL = (ConnectionError,)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def call(breaker, error: BaseException | None = None):
    with breaker.guard(FAIL):
        if error is not None:
            raise error


def test_a_failure_opens_and_open_fails_fast():
    clock = Clock()
    b = CircuitBreaker(reset_timeout=1.0, clock=clock)
    call(b)
    with pytest.raises(StoreUnavailable):
        call(b, ConnectionError("refused"))
    assert b.state == "open"
    with pytest.raises(StoreUnavailable, match="circuit open"):
        call(b)  # never reaches the body


def test_threshold_counts_consecutive_failures():
    b = CircuitBreaker(failure_threshold=3, clock=Clock())
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            call(b, ConnectionError())
    call(b)  # a success resets the count
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            call(b, ConnectionError())
    assert b.state == "closed"
    with pytest.raises(StoreUnavailable):
        call(b, ConnectionError())
    assert b.state == "open"


def test_half_open_lets_one_probe_through():
    clock = Clock()
    b = CircuitBreaker(reset_timeout=1.0, clock=clock)
    with pytest.raises(StoreUnavailable):
        call(b, ConnectionError())
    clock.now += 1.0
    assert b.state == "half_open"
    with b.guard(FAIL):  # the probe is in flight ...
        with pytest.raises(StoreUnavailable, match="probe in flight"):
            call(b)  # ... and everyone else still fails fast
    assert b.state == "closed"
    call(b)


def test_failed_probe_reopens_with_a_longer_wait():
    clock = Clock()
    b = CircuitBreaker(reset_timeout=1.0, max_reset_timeout=3.0, clock=clock)
    with pytest.raises(StoreUnavailable):
        call(b, ConnectionError())
    for wait in (1.0, 2.0, 3.0, 3.0):
        clock.now += wait - 0.01
        with pytest.raises(StoreUnavailable, match="circuit open"):
            call(b)
        clock.now += 0.01
        with pytest.raises(StoreUnavailable):
            call(b, ConnectionError())  # the probe fails
    clock.now += 3.0
    call(b)
    assert b.state == "closed"


def test_error_replies_and_cancellation_do_not_trip_it():
    b = CircuitBreaker(clock=Clock())
    with pytest.raises(ValueError):
        call(b, ValueError("the backend answered, with an error"))
    assert b.state == "closed"


def test_a_cancelled_probe_frees_the_probe_slot():
    clock = Clock()
    b = CircuitBreaker(reset_timeout=1.0, clock=clock)
    with pytest.raises(StoreUnavailable):
        call(b, ConnectionError())
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError):
        call(b, asyncio.CancelledError())
    call(b)  # the next caller may probe
    assert b.state == "closed"
