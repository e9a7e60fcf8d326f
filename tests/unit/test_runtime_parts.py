"""The consumer loop's collaborators, each on its own: failure routing through the tiers to
the dead letters, retry-tier due times, and where a failed batch rewinds to."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from revsync.errors import BusinessRuleViolation, DependencyNotReady, TransientError
from revsync.runtime import headers as h
from revsync.runtime.failures import FailureRouter
from revsync.runtime.positions import rewind_points, split_due
from revsync.runtime.records import Record

SOURCE = "revsync.order.created.v1"
TIERS = [("revsync.order-sync.retry.10s", 10_000), ("revsync.order-sync.retry.1m", 60_000)]
DLT = "revsync.order-sync.dlt"


def router(attempts: int = 3) -> FailureRouter:
    return FailureRouter(
        consumer="order-sync",
        service="order_sync",
        tiers=TIERS,
        dead_letters=DLT,
        attempts=attempts,
        max_wait_s=0.0,
    )


def record(topic: str = SOURCE, offset: int = 7, headers: h.Headers | None = None) -> Record:
    return Record(topic, 2, offset, b"801-key", b"value", headers or [], 1_700_000_000_000)


def test_a_retryable_failure_goes_to_the_first_tier_due_after_its_delay() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)  # the header keeps milliseconds
    target, key, value, headers = router().route(record(), TransientError("503"), "corr-1")
    assert (target, key, value) == (TIERS[0][0], b"801-key", b"value")
    assert h.get(headers, h.ORIGINAL_TOPIC) == SOURCE
    assert h.get(headers, h.ORIGINAL_OFFSET) == "7"
    assert h.get(headers, h.CORRELATION_ID) == "corr-1"
    due = h.due_at(headers)
    assert due is not None
    assert before + timedelta(seconds=10) <= due <= datetime.now(UTC) + timedelta(seconds=10)


def test_each_tier_passes_a_retryable_failure_to_the_next_and_the_last_to_the_dlt() -> None:
    first = router().route(record(), DependencyNotReady("no order yet"), None)
    second = router().route(record(TIERS[0][0], 0, first[3]), DependencyNotReady("still"), None)
    last = router().route(record(TIERS[1][0], 0, second[3]), DependencyNotReady("still"), None)
    assert [first[0], second[0], last[0]] == [TIERS[0][0], TIERS[1][0], DLT]
    # The record's origin is kept through every hop; the due time goes with the last tier.
    assert h.get(last[3], h.ORIGINAL_TOPIC) == SOURCE
    assert h.get(last[3], h.ORIGINAL_OFFSET) == "7"
    assert h.due_at(last[3]) is None


def test_a_permanent_failure_goes_straight_to_the_dlt() -> None:
    target, *_ = router().route(record(), BusinessRuleViolation("credit limit"), None)
    assert target == DLT


def test_in_process_retries_stop_at_the_attempt_limit() -> None:
    calls: list[int] = []

    def failing() -> str:
        calls.append(1)
        raise TransientError("still down")

    with pytest.raises(TransientError):
        router(attempts=3).retry_in_process(TransientError("down"), failing)
    assert len(calls) == 2  # the failure already seen was the first of the three attempts


def test_an_in_process_retry_returns_the_first_success() -> None:
    outcomes: Iterator[TransientError | str] = iter([TransientError("once more"), "done"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert router(attempts=5).retry_in_process(TransientError("down"), flaky) == "done"


def test_a_tier_record_not_yet_due_stops_its_partition_and_the_rest_flow() -> None:
    now = datetime.now(UTC)
    later = int((now + timedelta(minutes=1)).timestamp() * 1000)
    origin: h.Headers = [(h.ORIGINAL_TOPIC, SOURCE.encode()), (h.DUE_AT, str(later).encode())]
    waiting_one = record(TIERS[0][0], 3, origin)
    behind_it = record(TIERS[0][0], 4, [(h.ORIGINAL_TOPIC, SOURCE.encode())])
    fresh = record(SOURCE, 9)
    due, waiting = split_due([waiting_one, behind_it, fresh], now)
    assert due == [fresh]
    assert [(t, p, o) for t, p, o, _ in waiting] == [(TIERS[0][0], 2, 3)]


def test_a_tier_record_past_its_due_time_is_handled() -> None:
    now = datetime.now(UTC)
    past = int((now - timedelta(seconds=1)).timestamp() * 1000)
    ready = record(TIERS[0][0], 3, [(h.ORIGINAL_TOPIC, SOURCE.encode()), (h.DUE_AT, str(past))])
    assert split_due([ready], now) == ([ready], [])


def test_a_failed_batch_rewinds_each_partition_to_its_first_record() -> None:
    records = [record(offset=5), record(offset=6), record("other", 1)]
    parked = record(offset=2)
    parked.parked_seq = 11  # from PostgreSQL: no position to rewind to
    assert rewind_points([parked, *records]) == {(SOURCE, 2): 5, ("other", 2): 1}
