"""One batch, handled in one PostgreSQL transaction: inbox claims, key holds, the handler's
decisions (its batch call first, where it has one), failures routed, effects, outbox rows,
and the retry and dead-letter copies acknowledged by Kafka before the transaction commits."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from revsync.contracts.events import Event
from revsync.contracts.serde import RegistryUnavailable
from revsync.errors import DecodeError, TransientError, described
from revsync.runtime.breaker import CircuitBreaker
from revsync.runtime.failures import FailureRouter
from revsync.runtime.handler import BatchHandler, Decision, Handler, Inbound
from revsync.runtime.holds import KeyHolds
from revsync.runtime.inbox import Inbox
from revsync.runtime.journey import Journal, JourneyBatch, Outcome
from revsync.runtime.observability import (
    DUPLICATES,
    EVENT_AGE,
    HANDLER_LATENCY,
    PARKED,
    PROCESSED,
    event_context,
)
from revsync.runtime.outbox import OutboxWriter
from revsync.runtime.records import Decoder, Hold, Outgoing, Partition, Record

log = logging.getLogger(__name__)
Decoded = Inbound | DecodeError


@dataclass
class BatchOutcome:
    """What one batch decided, written together in its transaction."""

    inbox_claims: set[str] = field(default_factory=set)
    used_claims: set[str] = field(default_factory=set)
    writes: dict[str, list[Sequence[Any]]] = field(default_factory=dict)
    emissions: list[tuple[Event, str, Record]] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    parks: list[Record] = field(default_factory=list)
    unparked_done: list[int] = field(default_factory=list)
    holds: dict[Hold, str] = field(default_factory=dict)
    releases: set[Hold] = field(default_factory=set)
    positions: dict[Partition, int] = field(default_factory=dict)
    held: dict[Hold, str] = field(default_factory=dict)
    """Every key held while the batch ran, with its blocker."""
    prepared: dict[str, Decision | Exception] = field(default_factory=dict)
    """The batch call's results, by event id."""
    wave_began: datetime | None = None
    """When the batch call that prepared them began."""
    unhandled: list[Record] = field(default_factory=list)
    """Records left as they were because the circuit breaker tripped: consumed again later."""
    journey: JourneyBatch = field(default_factory=JourneyBatch)

    def done(self, record: Record) -> None:
        if record.parked_seq is not None:
            self.unparked_done.append(record.parked_seq)


@dataclass
class BatchProcessor:
    """Handles batches for one consumer; the loop owns the connection and the Kafka clients."""

    consumer: str
    handler: Handler
    decoder: Decoder
    ordering: bool
    inbox: Inbox
    holds: KeyHolds
    router: FailureRouter
    outbox: OutboxWriter
    send: Callable[[list[Outgoing]], list[tuple[str, int, int]]]
    """Produces retry and dead-letter copies, waits for Kafka's acknowledgement, and says
    where each went (topic, partition, offset)."""
    owns: Callable[[Partition], bool]
    keepalive: Callable[[], None]
    breaker: CircuitBreaker
    journal: Journal
    wave_runner: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._latency = HANDLER_LATENCY.labels(self.consumer)
        self._age = EVENT_AGE.labels(self.consumer)
        self._duplicates = DUPLICATES.labels(self.consumer)
        self._parked = PARKED.labels(self.consumer)

    def process(
        self, db: psycopg.Connection[Any], records: list[Record], releasing: frozenset[Hold]
    ) -> BatchOutcome:
        batch = BatchOutcome()
        with db.transaction():
            work = deque((record, self.decode(record)) for record in records)
            ids = [str(d.envelope.event_id) for _, d in work if not isinstance(d, DecodeError)]
            batch.inbox_claims = self.inbox.claim(db, ids)
            if self.ordering:
                batch.held = self.holds.held(db, {r.hold for r, _ in work if r.hold is not None})
            for hold in releasing:
                # Released by an operator: the hold goes in this transaction, with the work.
                batch.held.pop(hold, None)
                batch.releases.add(hold)
                self.journal.released(batch.journey, hold, "an operator's release")
            if isinstance(self.handler, BatchHandler) and self.wave_runner is not None:
                batch.prepared = self._handle_wave(self.handler, list(work), batch)
            tripped = False
            while work:
                record, decoded = work.popleft()
                self.keepalive()
                if record.parked_seq is None and not self.owns(record.where):
                    continue  # revoked mid-batch: its new owner redelivers it
                if tripped and record.parked_seq is None:
                    # The breaker is open: nothing new is handled, nor committed. (What a
                    # released key un-parked still is, so no key is left without its hold.)
                    batch.unhandled.append(record)
                    continue
                failures, parks = len(batch.outgoing), len(batch.parks)
                released = self._handle_one(db, record, decoded, batch)
                if record.parked_seq is None:
                    # max: a record parked earlier in this batch may be handled late, after
                    # its key was released; the position must never move back.
                    now_at = batch.positions.get(record.where, 0)
                    batch.positions[record.where] = max(now_at, record.offset + 1)
                if len(batch.parks) == parks and self._trips(batch.outgoing[failures:]):
                    tripped = True
                # What the record held back comes next, before anything later in the batch.
                work.extendleft((r, self.decode(r)) for r in reversed(released))
            self._write(db, batch)
            self.breaker.save(db)
        return batch

    def _trips(self, failures: Sequence[Outgoing]) -> bool:
        """Whether one handled record's outcome trips the circuit breaker."""
        dead = any(topic == self.router.dead_letters for topic, *_ in failures)
        return self.breaker.observe(dead)

    def decode(self, record: Record) -> Decoded:
        if record.problem is not None:
            return record.problem
        topic = record.origin[0]
        try:
            return self.decoder(topic, record.value)
        except DecodeError as error:
            return error
        except RegistryUnavailable:
            raise  # nothing wrong with the record: the batch is rewound and tried again
        except Exception as error:  # a decoder's own bug must not stall the partition either
            return DecodeError(topic, f"decoder failed: {described(error)}")

    def _blocked(self, record: Record, batch: BatchOutcome) -> bool:
        hold = record.hold
        return (
            self.ordering
            and hold is not None
            and batch.held.get(hold) not in (None, record.blocker_id)
        )

    def _handle_wave(
        self, handler: BatchHandler, work: list[tuple[Record, Decoded]], batch: BatchOutcome
    ) -> dict[str, Decision | Exception]:
        """Hand the batch handler every input that is first of its key and free to run now;
        the rest go one by one, after their key's earlier input has its outcome."""
        seen: set[bytes] = set()
        wave: dict[str, Inbound] = {}
        for record, inbound in work:
            first = record.key is None or record.key not in seen
            if record.key is not None:
                seen.add(record.key)
            if isinstance(inbound, DecodeError) or str(inbound.envelope.event_id) in wave:
                continue  # undecodable, or a second copy of one event: handled one by one
            event_id = str(inbound.envelope.event_id)
            if (
                first
                and not self._blocked(record, batch)
                and record.parked_seq is None
                and self.owns(record.where)
                and event_id in batch.inbox_claims
            ):
                wave[event_id] = inbound
        if len(wave) < 2:
            return {}
        began = datetime.now(UTC)
        started = time.perf_counter()
        assert self.wave_runner is not None
        call = self.wave_runner.submit(handler.handle_many, list(wave.values()))
        while not call.done():
            # A long call must not cost the group membership or the liveness check.
            wait([call], timeout=1.0)
            self.keepalive()
        try:
            results: Sequence[Decision | Exception] = call.result()
        except Exception as error:  # the call as a whole failed: each input goes alone
            log.warning(
                "batch handler failed as a whole, handling one by one: %s", described(error)
            )
            return {}
        if len(results) != len(wave):
            log.warning("batch handler gave %d results for %d inputs", len(results), len(wave))
            return {}
        share = (time.perf_counter() - started) / len(wave)
        for _ in wave:
            self._latency.observe(share)
        batch.wave_began = began
        return dict(zip(wave, results, strict=True))

    def _handle_one(
        self, db: psycopg.Connection[Any], record: Record, decoded: Decoded, batch: BatchOutcome
    ) -> list[Record]:
        """Handle one record; returns parked records released by its success, in order."""
        event = None if isinstance(decoded, DecodeError) else decoded
        if event is not None:
            event_id = str(event.envelope.event_id)
            if record.parked_seq is not None and event_id not in batch.inbox_claims:
                batch.inbox_claims |= self.inbox.claim(db, [event_id])
            if event_id not in batch.inbox_claims or event_id in batch.used_claims:
                self._duplicates.inc()
                self.journal.consumed(batch.journey, record, event, Outcome.DUPLICATE)
                batch.done(record)
                return self._resolve(db, record, batch)
        if self._blocked(record, batch):
            if record.parked_seq is None:
                batch.parks.append(record)
                self._parked.inc()
                blocker = batch.held.get(record.hold) if record.hold else None
                self.journal.consumed(
                    batch.journey, record, event, Outcome.PARKED, detail=f"behind {blocker}"
                )
            return []
        if event is None:
            assert isinstance(decoded, DecodeError)
            self._fail(record, decoded, None, batch)
            return []
        try:
            with event_context(event.envelope.correlation_id, str(event.envelope.event_id)):
                decision = self._call_handler(event, batch)
        except Exception as error:  # every failure is routed, none stalls
            self._fail(record, error, event, batch)
            return []
        batch.used_claims.add(str(event.envelope.event_id))
        for write in decision.writes:
            batch.writes.setdefault(write.sql, []).append(write.row)
        batch.emissions += [(emission.event, emission.topic, record) for emission in decision.emits]
        self.journal.consumed(batch.journey, record, event, Outcome.PROCESSED, at=decision.at)
        for emission in decision.emits:
            self.journal.emitted(batch.journey, emission.event, emission.topic, decision.at)
        PROCESSED.labels(self.consumer, record.origin[0]).inc()
        age = (datetime.now(UTC) - event.envelope.occurred_at).total_seconds()
        self._age.observe(max(age, 0.0))
        batch.done(record)
        released = self._resolve(db, record, batch)
        for part in decision.failed:
            # Its own record from here on: its own key, holding back only that key.
            self._fail(replace(record, key=part.key, value=part.value), part.error, event, batch)
        return released

    def _resolve(
        self, db: psycopg.Connection[Any], record: Record, batch: BatchOutcome
    ) -> list[Record]:
        """If ``record`` was what held its key, release the key and hand back what it parked."""
        hold = record.hold
        if hold is None or batch.held.get(hold) != record.blocker_id:
            return []
        del batch.held[hold]
        batch.holds.pop(hold, None)
        batch.releases.add(hold)
        self.journal.released(batch.journey, hold, record.blocker_id)
        parked_now = [parked for parked in batch.parks if parked.hold == hold]
        batch.parks = [parked for parked in batch.parks if parked.hold != hold]
        return self.holds.unpark(db, hold) + parked_now

    def _call_handler(self, event: Inbound, batch: BatchOutcome) -> Decision:
        """The handler (or its share of the batch call), and only after a transient failure
        the bounded in-process retries; the decision carries when its handling began."""
        prepared = batch.prepared.pop(str(event.envelope.event_id), None)
        began = batch.wave_began if prepared is not None else None
        if isinstance(prepared, Decision):
            decision = prepared  # its latency was observed with the batch call
        else:
            began = began or datetime.now(UTC)
            started = time.perf_counter()
            try:
                if prepared is not None:
                    raise prepared
                decision = self.handler(event)
            except TransientError as failure:
                decision = self.router.retry_in_process(failure, lambda: self.handler(event))
            finally:
                self._latency.observe(time.perf_counter() - started)
        return decision if decision.at else replace(decision, at=began)

    def _fail(
        self, record: Record, error: BaseException, event: Inbound | None, batch: BatchOutcome
    ) -> None:
        """Send a failed record on, and hold its key so that none of its later records
        overtakes it."""
        correlation_id = event.envelope.correlation_id if event else None
        outgoing = self.router.route(record, error, correlation_id)
        batch.outgoing.append(outgoing)
        tiers = [name for name, _ in self.router.tiers]
        self.journal.failed(batch.journey, record, event, error, outgoing[0], tiers)
        hold = record.hold
        if self.ordering and hold is not None and hold not in batch.held:
            batch.held[hold] = record.blocker_id
            batch.holds[hold] = record.blocker_id
        batch.done(record)

    def _write(self, db: psycopg.Connection[Any], batch: BatchOutcome) -> None:
        """The batch's effects; then its retry and DLT copies, acknowledged before commit,
        and its journey, which names where the dead letters went."""
        with db.cursor() as cursor:
            self.inbox.unclaim(cursor, batch.inbox_claims - batch.used_claims)
            for sql, rows in batch.writes.items():
                cursor.execute(sql, [list(column) for column in zip(*rows, strict=True)])
            self.outbox.write(cursor, batch.emissions)
            self.holds.write(
                cursor,
                parks=batch.parks,
                unparked=batch.unparked_done,
                releases=batch.releases,
                holds=batch.holds,
            )
            sent = self.send(batch.outgoing)
            dead_letters = [where for where in sent if where[0] == self.router.dead_letters]
            self.journal.write(cursor, batch.journey, dead_letters)
