"""The dead-letter circuit breaker: a consumer whose latest records are dead-lettered one after
another (a bad deploy, a changed ERP contract) stops taking records instead of filling its
dead-letter topic. Its state is a row in PostgreSQL, so it stays open across restarts and an
operator can resume it from anywhere (``revsync consumer resume``). When failures trip a
breaker (:class:`TripRule`) is the same for the breaker around ERP calls
(:mod:`revsync.connectors.guard`)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import psycopg
from confluent_kafka import Consumer

from revsync.contracts.catalog import CircuitBreakerSpec
from revsync.runtime.observability import CIRCUIT_OPEN, Liveness
from revsync.runtime.positions import Positions

log = logging.getLogger(__name__)
BREAKER = "circuit-breaker"
"""Not a dependency, but as good a reason not to be ready."""

SCHEMA = """
-- A consumer whose circuit breaker is open; resume_requested_at is an operator's resume.
CREATE TABLE IF NOT EXISTS revsync_circuit_breakers (
    consumer            text        PRIMARY KEY,
    reason              text        NOT NULL,
    opened_at           timestamptz NOT NULL DEFAULT now(),
    resume_requested_at timestamptz,
    resumed_by          text
);
"""


class TripRule:
    """When failures trip a breaker: ``consecutive`` of them in a row, or more than
    ``max_ratio`` of a full ``window`` of the latest outcomes. ``what`` and ``failed`` word the
    reason it gives ("3 records in a row were dead-lettered")."""

    def __init__(
        self, window: int, max_ratio: float, consecutive: int, what: str, failed: str
    ) -> None:
        self.window = window
        self.max_ratio = max_ratio
        self.consecutive = consecutive
        self._what = what
        self._failed = failed
        self._latest: deque[bool] = deque(maxlen=window)
        self._in_a_row = 0

    def observe(self, failed: bool) -> str | None:
        """One outcome; why the breaker trips now, or None."""
        self._latest.append(failed)
        self._in_a_row = self._in_a_row + 1 if failed else 0
        if self._in_a_row >= self.consecutive:
            return f"{self._in_a_row} {self._what} in a row {self._failed}"
        failures = sum(self._latest)
        full = len(self._latest) == self.window
        if full and failures / self.window > self.max_ratio:
            return f"{failures} of the latest {self.window} {self._what} {self._failed}"
        return None

    def reset(self) -> None:
        """Counting starts afresh (the breaker closed)."""
        self._latest.clear()
        self._in_a_row = 0


class CircuitBreaker:
    """One consumer's breaker: closed (taking records), open (its partitions paused), or
    probing (one record at a time after the cool-down; a success closes it, a dead letter opens
    it again)."""

    def __init__(self, consumer: str, spec: CircuitBreakerSpec) -> None:
        self.consumer = consumer
        self.spec = spec
        self._rule = TripRule(
            spec.window,
            spec.max_dead_letter_ratio,
            spec.consecutive_dead_letters,
            "records",
            "were dead-lettered",
        )
        self.reason: str | None = None
        """Why it is open; None while closed."""
        self._opened = 0.0
        self.probing = False
        self._changed = False
        self._gauge = CIRCUIT_OPEN.labels(consumer)

    @property
    def is_open(self) -> bool:
        return self.reason is not None and not self.probing

    def observe(self, dead_lettered: bool) -> bool:
        """One handled record's outcome; True when it trips the breaker (now open)."""
        if self.reason is not None and self.probing:
            if dead_lettered:
                self._open("the probe record was dead-lettered too")
                return True
            log.warning("%s: the probe record went through; circuit breaker closed", self.consumer)
            self._closed()
            return False
        tripped = self._rule.observe(dead_lettered)
        if self.reason is not None or tripped is None:
            return False
        self._open(tripped)
        return True

    def _open(self, reason: str) -> None:
        self.reason = reason
        self.probing = False
        self._opened = time.monotonic()
        self._changed = True
        self._gauge.set(1)
        log.error("%s: circuit breaker open, taking no records: %s", self.consumer, reason)

    def _closed(self) -> None:
        self.reason = None
        self.probing = False
        self._rule.reset()
        self._changed = True
        self._gauge.set(0)

    def save(self, connection: psycopg.Connection[Any]) -> None:
        """Write what changed (in the batch's transaction, with the dead letters that tripped
        it or the probe record that closed it)."""
        if not self._changed:
            return
        self._changed = False
        if self.reason is None:
            connection.execute(
                "DELETE FROM revsync_circuit_breakers WHERE consumer = %s", (self.consumer,)
            )
            return
        connection.execute(
            "INSERT INTO revsync_circuit_breakers (consumer, reason) VALUES (%s, %s) "
            "ON CONFLICT (consumer) DO UPDATE SET reason = excluded.reason, opened_at = now(), "
            "resume_requested_at = NULL, resumed_by = NULL",
            (self.consumer, self.reason),
        )

    def load(self, connection: psycopg.Connection[Any]) -> None:
        """At start-up: open if it was open when the last process stopped."""
        row = connection.execute(
            "SELECT reason FROM revsync_circuit_breakers WHERE consumer = %s", (self.consumer,)
        ).fetchone()
        if row is not None:
            self._open(f"still open from before a restart: {row[0]}")
            self._changed = False

    def check(self, connection: psycopg.Connection[Any]) -> bool:
        """While open: True once an operator resumed it (now closed) or the cool-down passed
        (now probing)."""
        if not self.is_open:
            return False
        row = connection.execute(
            "SELECT resume_requested_at IS NOT NULL FROM revsync_circuit_breakers "
            "WHERE consumer = %s",
            (self.consumer,),
        ).fetchone()
        if row is None or row[0]:
            who = "an operator" if row else "its row's removal"
            log.warning("%s: circuit breaker closed by %s", self.consumer, who)
            self._closed()
            self.save(connection)
            return True
        if time.monotonic() - self._opened >= self.spec.cool_down / 1000:
            log.warning("%s: circuit breaker cool-down over; probing one record", self.consumer)
            self.probing = True
            return True
        return False

    def follow(self, consumer: Consumer, positions: Positions, liveness: Liveness) -> None:
        """The consumer's partitions and readiness as the breaker now stands: all paused and
        not ready while open, taking one probe record at a time, taking records once closed."""
        if self.is_open:
            positions.stop(consumer)
            liveness.outage(BREAKER, self.reason)
        elif positions.stopped or liveness.is_out(BREAKER):
            positions.start(consumer)
            if not self.probing:
                liveness.recovered(BREAKER)


def request_resume(connection: psycopg.Connection[Any], consumer: str, actor: str) -> bool:
    """An operator's resume of ``consumer``'s open breaker; False if it is not open."""
    row = connection.execute(
        "UPDATE revsync_circuit_breakers SET resume_requested_at = now(), resumed_by = %s "
        "WHERE consumer = %s RETURNING consumer",
        (actor, consumer),
    ).fetchone()
    return row is not None
