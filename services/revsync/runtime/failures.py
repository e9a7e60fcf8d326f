"""Failure routing: a transient failure is retried in process first; then a failed record goes,
by its error's class, to the consumer's next retry tier or to its dead letters, with the
failure headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from revsync.errors import RETRYABLE, TransientError, classify, described
from revsync.runtime import headers as h
from revsync.runtime.observability import DEAD_LETTERED, IN_PROCESS_RETRIES, RETRIED
from revsync.runtime.records import Outgoing, Record

log = logging.getLogger(__name__)
T = TypeVar("T")


class FailureRouter:
    """One consumer's way with failures: ``tiers`` are its retry topics and their delays (ms),
    in order; ``dead_letters`` its DLT."""

    def __init__(
        self,
        *,
        consumer: str,
        service: str,
        tiers: list[tuple[str, int]],
        dead_letters: str,
        attempts: int,
        max_wait_s: float,
    ) -> None:
        self.consumer = consumer
        self.service = service
        self.tiers = tiers
        self.dead_letters = dead_letters
        self._retrying = _retrying(consumer, attempts, max_wait_s)

    def retry_in_process(self, failure: TransientError, call: Callable[[], T]) -> T:
        """``call`` again after ``failure``, its first attempt, with bounded backoff. The
        success path pays nothing for this: it is entered only once a call has failed."""
        seen: list[TransientError] = [failure]

        def attempt() -> T:
            if seen:
                raise seen.pop()
            return call()

        return self._retrying(attempt)

    def route(self, record: Record, error: BaseException, correlation_id: str | None) -> Outgoing:
        """The copy of ``record`` that goes on: to the next retry tier if it may pass, else
        to the dead letters."""
        now = datetime.now(UTC)
        tier = next((i for i, (name, _) in enumerate(self.tiers) if name == record.topic), -1)
        error_class = classify(error)
        retryable = error_class in RETRYABLE and tier + 1 < len(self.tiers)
        target, due = (
            (self.tiers[tier + 1][0], now + timedelta(milliseconds=self.tiers[tier + 1][1]))
            if retryable
            else (self.dead_letters, None)
        )
        origin = record.origin
        failure = h.failure_headers(
            record.headers,
            error=error,
            source=(origin[0], origin[1], origin[2], record.timestamp),
            consumer=self.consumer,
            service=self.service,
            correlation_id=correlation_id,
            now=now,
            due_at=due,
        )
        if retryable:
            RETRIED.labels(self.consumer, target.rsplit(".", 1)[1]).inc()
        else:
            DEAD_LETTERED.labels(self.consumer, origin[0], error_class.value).inc()
        log.warning(
            "%s -> %s: %s",
            record.blocker_id,
            target,
            described(error),
            extra={"fields": {"error_class": error_class.value}},
        )
        return target, record.key, record.value, failure


def _retrying(consumer: str, attempts: int, max_wait_s: float) -> Retrying:
    # Exponential backoff with full jitter, unless the dependency said when to come back.
    backoff = wait_random_exponential(multiplier=0.05, max=max_wait_s)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            return min(error.retry_after, max_wait_s)
        return float(backoff(state))

    retries = IN_PROCESS_RETRIES.labels(consumer)
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception_type(TransientError),
        before_sleep=lambda _: retries.inc(),
        reraise=True,
    )
