"""The consumer loop's collaborators, each on its own: failure routing through the tiers to
the dead letters, retry-tier due times, and where a failed batch rewinds to."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, Field

from revsync.errors import (
    BusinessRuleViolation,
    DependencyNotReady,
    ErrorClass,
    TransientError,
    classify,
)
from revsync.runtime import headers as h
from revsync.runtime.failures import FailureRouter
from revsync.runtime.positions import rewind_points, split_due
from revsync.runtime.records import MalformedRoutingHeaders, Record

SOURCE = "revsync.order.created.v1"
TIERS = [("revsync.order-sync.retry.10s", 10_000), ("revsync.order-sync.retry.1m", 60_000)]
DLT = "revsync.order-sync.dlt"
DELAYS = {topic: timedelta(milliseconds=delay) for topic, delay in TIERS}


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


STREET = "17 Quill Lane"


class ShipTo(BaseModel):
    street: str = Field(max_length=5)


def raised(fail: Callable[[], object]) -> BaseException:
    """What ``fail`` raises, with its traceback, as a handler would have raised it."""
    try:
        fail()
    except Exception as error:
        return error
    raise AssertionError("it did not fail")


def timed_out_reading_a_street() -> None:
    try:
        int(STREET)  # its ValueError quotes the street
    except ValueError as error:
        raise TransientError("erp: POST /api/v1/sales-orders timed out") from error


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        (
            lambda: ShipTo(street=STREET),
            "ShipTo: street: String should have at most 5 characters",
        ),
        (
            lambda: int(STREET),
            "ValueError (its text is not kept: it may quote the data it failed on)",
        ),
        (timed_out_reading_a_street, "erp: POST /api/v1/sales-orders timed out"),
    ],
    ids=["validation", "foreign", "caused-by-foreign"],
)
def test_failure_headers_and_the_routing_log_never_quote_the_data_an_error_carries(
    fail: Callable[[], object], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No customer data in errors: pydantic's text quotes every input, a library's error
    what it failed on; the dead letter keeps their field names and types, never the value."""
    error = raised(fail)
    assert STREET in "".join(traceback.format_exception(error))  # as Python would print it

    *_, headers = router().route(record(), error, None)

    assert h.get(headers, h.ERROR_MESSAGE) == message
    stack = h.get(headers, h.ERROR_STACK) or ""
    assert f"{type(error).__qualname__}: {message}" in stack
    assert "in raised" in stack  # the frames are kept
    assert STREET not in stack
    assert STREET not in caplog.text


def test_the_stack_header_keeps_the_chain_of_causes() -> None:
    *_, headers = router().route(record(), raised(timed_out_reading_a_street), None)
    stack = h.get(headers, h.ERROR_STACK) or ""
    assert (
        stack.index("builtins.ValueError: ValueError")
        < stack.index("The above exception was the direct cause of the following exception")
        < stack.index("revsync.errors.TransientError: erp: POST")
    )


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
    due, waiting = split_due([waiting_one, behind_it, fresh], now, DELAYS)
    assert due == [fresh]
    assert [(t, p, o) for t, p, o, _ in waiting] == [(TIERS[0][0], 2, 3)]


def test_a_tier_record_past_its_due_time_is_handled() -> None:
    now = datetime.now(UTC)
    past = int((now - timedelta(seconds=1)).timestamp() * 1000)
    ready = record(TIERS[0][0], 3, [(h.ORIGINAL_TOPIC, SOURCE.encode()), (h.DUE_AT, str(past))])
    assert split_due([ready], now, DELAYS) == ([ready], [])


def test_a_due_time_beyond_the_tiers_delay_waits_only_the_delay() -> None:
    now = datetime.now(UTC)
    year_9999 = str(int(datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1000))
    far = record(TIERS[0][0], 3, [(h.ORIGINAL_TOPIC, SOURCE.encode()), (h.DUE_AT, year_9999)])
    _, [(_, _, _, until)] = split_due([far], now, DELAYS)
    assert until == now + timedelta(seconds=10)


def test_a_due_time_on_an_input_topic_is_no_reason_to_wait() -> None:
    later = str(int((datetime.now(UTC) + timedelta(days=1)).timestamp() * 1000))
    forged = record(SOURCE, 3, [(h.ORIGINAL_TOPIC, b"elsewhere"), (h.DUE_AT, later)])
    assert split_due([forged], datetime.now(UTC), DELAYS) == ([forged], [])


class FakeMessage:
    """The few parts of a consumed message ``Record.of`` reads."""

    def __init__(self, topic: str, headers: h.Headers) -> None:
        self._topic = topic
        self._headers = headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 11

    def key(self) -> bytes:
        return b"801-key"

    def value(self) -> bytes:
        return b"value"

    def headers(self) -> h.Headers:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


FORGED: h.Headers = [
    (h.ORIGINAL_TOPIC, b"revsync.order.cancelled.v1"),
    (h.ORIGINAL_PARTITION, b"not-a-number"),
    (h.ATTEMPTS, b"99"),
    (h.DUE_AT, b"253402300799999"),
    ("traceparent", b"00-abc-def-01"),
]


def test_routing_headers_on_an_input_topic_are_dropped_and_the_rest_kept() -> None:
    forged = Record.of(FakeMessage(SOURCE, FORGED), trusted=False)  # type: ignore[arg-type]
    assert forged.headers == [("traceparent", b"00-abc-def-01")]
    assert forged.problem is None
    assert forged.origin == (SOURCE, 2, 11)
    assert forged.hold == (b"801-key", SOURCE)
    # Its failure is routed as the consumer's own first failure, not the forger's 100th.
    _, _, _, headers = router().route(forged, TransientError("503"), None)
    assert (h.get(headers, h.ATTEMPTS), h.get(headers, h.ORIGINAL_TOPIC)) == ("1", SOURCE)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (h.ORIGINAL_PARTITION, b"not-a-number"),
        (h.ORIGINAL_OFFSET, b"-5"),
        (h.ORIGINAL_OFFSET, b"1" * 5000),
        (h.ATTEMPTS, "\u00b2".encode()),
        (h.DUE_AT, b"tomorrow"),
        (h.FIRST_FAILURE_AT, b"2026-12-01 09:00"),
        (h.REPLAY_COUNT, b"1e3"),
        (h.ORIGINAL_TOPIC, b"../../etc"),
    ],
)
def test_malformed_routing_headers_on_a_tier_mark_the_record_and_are_dropped(
    name: str, value: bytes
) -> None:
    tier = TIERS[0][0]
    headers: h.Headers = [(h.ORIGINAL_TOPIC, SOURCE.encode())] if name != h.ORIGINAL_TOPIC else []
    headers.append((name, value))
    malformed = Record.of(FakeMessage(tier, headers), trusted=True)  # type: ignore[arg-type]
    assert isinstance(malformed.problem, MalformedRoutingHeaders)
    assert name in str(malformed.problem)
    assert classify(malformed.problem) is ErrorClass.DESERIALIZATION
    assert malformed.headers == []
    assert malformed.origin == (tier, 2, 11)
    # Routing it is safe: it goes to the dead-letter topic, nothing raises.
    target, _, _, routed = router().route(malformed, malformed.problem, None)
    assert (target, h.get(routed, h.ATTEMPTS)) == (DLT, "1")


def test_a_routing_header_given_twice_on_a_tier_is_malformed() -> None:
    twice: h.Headers = [(h.ORIGINAL_TOPIC, SOURCE.encode()), (h.ORIGINAL_TOPIC, b"other")]
    malformed = Record.of(FakeMessage(TIERS[0][0], twice), trusted=True)  # type: ignore[arg-type]
    assert "more than once" in str(malformed.problem)


def test_well_formed_routing_headers_on_a_tier_are_kept() -> None:
    tier = TIERS[0][0]
    headers: h.Headers = [
        (h.ORIGINAL_TOPIC, SOURCE.encode()),
        (h.ORIGINAL_PARTITION, b"4"),
        (h.ORIGINAL_OFFSET, b"120"),
        (h.ATTEMPTS, b"2"),
    ]
    kept = Record.of(FakeMessage(tier, headers), trusted=True)  # type: ignore[arg-type]
    assert kept.problem is None
    assert kept.origin == (SOURCE, 4, 120)


def test_a_failed_batch_rewinds_each_partition_to_its_first_record() -> None:
    records = [record(offset=5), record(offset=6), record("other", 1)]
    parked = record(offset=2)
    parked.parked_seq = 11  # from PostgreSQL: no position to rewind to
    assert rewind_points([parked, *records]) == {(SOURCE, 2): 5, ("other", 2): 1}
