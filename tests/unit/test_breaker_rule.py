"""The dead-letter circuit breaker's rule, apart from any loop: when it trips, and how a probe
closes or reopens it."""

from __future__ import annotations

from revsync.contracts.catalog import CircuitBreakerSpec
from revsync.runtime.breaker import CircuitBreaker


def breaker(**spec: float) -> CircuitBreaker:
    return CircuitBreaker("order-sync", CircuitBreakerSpec(**spec))


def test_a_run_of_dead_letters_trips_it_at_the_threshold() -> None:
    tested = breaker(consecutive_dead_letters=3, window=100)
    assert [tested.observe(True) for _ in range(2)] == [False, False]
    assert tested.observe(False) is False  # the run is broken
    assert [tested.observe(True) for _ in range(3)] == [False, False, True]
    assert tested.is_open
    assert tested.reason == "3 records in a row were dead-lettered"


def test_a_ratio_over_a_full_window_trips_it_and_a_partial_window_does_not() -> None:
    tested = breaker(window=10, max_dead_letter_ratio=0.5, consecutive_dead_letters=100)
    outcomes = [True, False] * 3 + [True, True, False, True]  # 6 of 10 dead at the tenth
    tripped = [tested.observe(dead) for dead in outcomes]
    assert tripped == [False] * 9 + [True]
    assert tested.reason == "6 of the latest 10 records were dead-lettered"


def test_a_probe_that_goes_through_closes_it_and_one_that_fails_reopens_it() -> None:
    tested = breaker(consecutive_dead_letters=1)
    assert tested.observe(True)
    tested.probing = True  # the cool-down is over
    assert not tested.is_open
    assert tested.observe(True) is True
    assert tested.is_open
    assert tested.reason == "the probe record was dead-lettered too"
    tested.probing = True
    assert tested.observe(False) is False
    assert (tested.is_open, tested.reason, tested.probing) == (False, None, False)
    assert tested.observe(True) is True  # counting starts afresh
