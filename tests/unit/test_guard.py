"""Reads of a system behind a circuit breaker: when the breaker opens, how one probe closes or
reopens it, and what is answered meanwhile (the cached values, stale, with their age, or
Unavailable with when to try again). Time is a clock moved by hand."""

from __future__ import annotations

import pytest

from revsync.connectors.cache import TtlCache
from revsync.connectors.guard import CallBreaker, Freshness, GuardedReads, Unavailable
from revsync.errors import TransientError
from revsync.runtime.breaker import TripRule


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Erp:
    """A system whose answers and failures the test sets; it counts the calls it gets."""

    def __init__(self) -> None:
        self.prices = {"SEN-001": 120, "VAL-001": 50}
        self.down = False
        self.calls: list[list[str]] = []

    def price(self, sku: str) -> int | None:
        return self.prices_of([sku]).get(sku)

    def prices_of(self, skus: list[str]) -> dict[str, int]:
        self.calls.append(list(skus))
        if self.down:
            raise TransientError("erp: connection refused")
        return {sku: self.prices[sku] for sku in skus if sku in self.prices}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, failures: int = 3, window: int = 10) -> CallBreaker:
    return CallBreaker("erp", TripRule(window, 0.5, failures, "ERP calls", "failed"), 30, clock)


def reads(
    clock: Clock, stale_for_s: float = 3600
) -> tuple[GuardedReads, TtlCache[str, int | None]]:
    return GuardedReads(breaker(clock), stale_for_s), TtlCache(60, clock=clock)


# --- the breaker -----------------------------------------------------------------------------


def test_a_run_of_failed_calls_opens_it_for_its_cool_down(clock: Clock) -> None:
    tested = breaker(clock, failures=3)
    for _ in range(2):
        tested.failed(TransientError("503"))
    tested.succeeded()  # the run is broken
    for _ in range(2):
        tested.failed(TransientError("503"))
    assert not tested.is_open
    assert tested.allows()

    tested.failed(TransientError("503"))

    assert tested.is_open
    assert not tested.allows()
    clock.now += 20
    assert tested.retry_after_s() == 10
    assert not tested.allows()


def test_a_share_of_failures_over_a_full_window_opens_it(clock: Clock) -> None:
    tested = breaker(clock, failures=100, window=4)
    for failed in (True, False, True):
        if failed:
            tested.failed(TransientError("503"))
        else:
            tested.succeeded()
    assert not tested.is_open

    tested.failed(TransientError("503"))  # 3 of the latest 4

    assert tested.is_open


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_it(clock: Clock) -> None:
    tested = breaker(clock, failures=1)
    tested.failed(TransientError("503"))
    clock.now += 30

    assert tested.allows()
    assert not tested.allows(), "one probe at a time"
    tested.succeeded()

    assert not tested.is_open
    assert (tested.allows(), tested.retry_after_s()) == (True, 0.0)


def test_a_failed_probe_opens_it_for_another_cool_down(clock: Clock) -> None:
    tested = breaker(clock, failures=1)
    tested.failed(TransientError("503"))
    clock.now += 30
    assert tested.allows()

    tested.failed(TransientError("503"))

    assert tested.is_open
    assert tested.retry_after_s() == 30
    assert not tested.allows()


# --- reads through it ------------------------------------------------------------------------


def test_a_fresh_value_is_served_from_the_cache_without_a_call(clock: Clock) -> None:
    guarded, cache = reads(clock)
    erp = Erp()

    first = guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))
    clock.now += 59
    second = guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))

    assert first == (120, Freshness(stale=False, age_s=0.0))
    assert second == (120, Freshness(stale=False, age_s=59.0))
    assert erp.calls == [["SEN-001"]]


def test_while_the_system_fails_the_last_value_known_is_answered_stale_with_its_age(
    clock: Clock,
) -> None:
    guarded, cache = reads(clock)
    erp = Erp()
    guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))
    erp.down = True
    clock.now += 90

    value, freshness = guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))

    assert (value, freshness) == (120, Freshness(stale=True, age_s=90.0))
    assert len(erp.calls) == 2, "it was asked, and failed"


def test_an_open_breaker_asks_nothing_and_answers_from_the_cache(clock: Clock) -> None:
    guarded, cache = reads(clock)
    erp = Erp()
    guarded.many("price", cache, ["SEN-001", "VAL-001"], erp.prices_of, None)
    erp.down = True
    clock.now += 61
    for _ in range(3):
        guarded.many("price", cache, ["SEN-001"], erp.prices_of, None)
    assert guarded.breaker.is_open
    asked = len(erp.calls)

    values, freshness = guarded.many("price", cache, ["SEN-001", "VAL-001"], erp.prices_of, None)

    assert values == {"SEN-001": 120, "VAL-001": 50}
    assert freshness == Freshness(stale=True, age_s=61.0)
    assert len(erp.calls) == asked


def test_nothing_cached_while_the_system_cannot_be_asked_is_unavailable_until_the_probe(
    clock: Clock,
) -> None:
    guarded, cache = reads(clock)
    erp = Erp()
    erp.down = True
    for _ in range(3):
        with pytest.raises(Unavailable):
            guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))
    clock.now += 12

    with pytest.raises(Unavailable) as refused:
        guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))

    assert str(refused.value) == "erp cannot be asked now and price SEN-001 is not cached"
    assert refused.value.retry_after == 18


def test_a_value_older_than_the_stale_limit_is_not_answered(clock: Clock) -> None:
    guarded, cache = reads(clock, stale_for_s=300)
    erp = Erp()
    guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))
    erp.down = True
    clock.now += 301

    with pytest.raises(Unavailable):
        guarded.one("price", cache, "SEN-001", lambda: erp.price("SEN-001"))


def test_the_system_back_closes_the_breaker_and_answers_are_fresh_again(clock: Clock) -> None:
    guarded, cache = reads(clock)
    erp = Erp()
    erp.down = True
    for _ in range(3):
        with pytest.raises(Unavailable):
            guarded.one("price", cache, "VAL-001", lambda: erp.price("VAL-001"))
    erp.down = False
    clock.now += 30

    value, freshness = guarded.one("price", cache, "VAL-001", lambda: erp.price("VAL-001"))

    assert (value, freshness.stale) == (50, False)
    assert not guarded.breaker.is_open


def test_many_asks_only_for_what_is_not_cached_and_caches_the_absent(clock: Clock) -> None:
    guarded, cache = reads(clock)
    erp = Erp()
    guarded.many("price", cache, ["SEN-001"], erp.prices_of, None)

    values, _ = guarded.many("price", cache, ["SEN-001", "PUM-404", "SEN-001"], erp.prices_of, None)
    again, _ = guarded.many("price", cache, ["PUM-404"], erp.prices_of, None)

    assert values == {"SEN-001": 120, "PUM-404": None}
    assert again == {"PUM-404": None}
    assert erp.calls == [["SEN-001"], ["PUM-404"]]


def test_an_answer_resting_on_two_reads_is_as_stale_and_old_as_the_worse() -> None:
    combined = Freshness(stale=False, age_s=3.0) | Freshness(stale=True, age_s=1.0)

    assert combined == Freshness(stale=True, age_s=3.0)
