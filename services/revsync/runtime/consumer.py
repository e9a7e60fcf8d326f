"""The one consumer loop: batches from Kafka, inbox-deduplicated handling with effects and
outbox rows in one PostgreSQL transaction, retry tiers and dead letters, per-key order, and
offsets committed only once all of that is durable."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from psycopg.types.json import Jsonb
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from revsync.contracts.catalog import Catalog, TopicFormat
from revsync.contracts.events import Event
from revsync.contracts.serde import EventSerde, RegistryUnavailable
from revsync.errors import RETRYABLE, DecodeError, TransientError, classify
from revsync.runtime import headers as h
from revsync.runtime.handler import BatchHandler, Decision, Handler, Inbound
from revsync.runtime.observability import (
    CONSUMED,
    DEAD_LETTERED,
    DUPLICATES,
    EVENT_AGE,
    HANDLER_LATENCY,
    IN_PROCESS_RETRIES,
    KEYS_HELD,
    PARKED,
    PROCESSED,
    RETRIED,
    Liveness,
    event_context,
)
from revsync.runtime.outbox import OutboxWriter
from revsync.runtime.storage import migrate, purge_inbox

log = logging.getLogger(__name__)
RELEASED = "released"
"""A hold's blocker after an operator's discard: its parked records are processed next."""


@dataclass(frozen=True)
class Policy:
    """How one consumer loop behaves; defaults suit the order-to-cash services."""

    batch_size: int = 500
    batch_timeout_s: float = 0.2
    in_process_attempts: int = 3
    in_process_max_wait_s: float = 2.0
    drain_deadline_s: float = 30.0
    keepalive_s: float = 10.0
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    inbox_retention: timedelta = timedelta(days=14)
    inbox_purge_interval_s: float = 600.0
    maintenance_interval_s: float = 1.0
    preserve_key_order: bool = True


Hold = tuple[bytes, str]
"""A record key and its source topic: the unit per-key order is kept in."""


@dataclass
class Record:
    """A record being handled: from Kafka, or un-parked from PostgreSQL (``parked_seq``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: h.Headers
    timestamp: int
    parked_seq: int | None = None

    @classmethod
    def of(cls, message: Message) -> Record:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        raw = message.headers() or []
        headers: h.Headers = list(raw.items()) if isinstance(raw, dict) else list(raw)
        return cls(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            headers,
            message.timestamp()[1],
        )

    @property
    def origin(self) -> tuple[str, int, int]:
        """Where the record was first consumed, kept across retry tiers and replays."""
        topic = h.get(self.headers, h.ORIGINAL_TOPIC)
        if topic is None:
            return self.topic, self.partition, self.offset
        return (
            topic,
            int(h.get(self.headers, h.ORIGINAL_PARTITION) or -1),
            int(h.get(self.headers, h.ORIGINAL_OFFSET) or -1),
        )

    @property
    def hold(self) -> Hold | None:
        """What orders this record: its key within the topic it was first consumed from.
        Kafka orders a key only within one topic, so a failure holds back the key's later
        records of that topic; the key's records on other topics have no order to keep."""
        return None if self.key is None else (self.key, self.origin[0])

    @property
    def blocker_id(self) -> str:
        topic, partition, offset = self.origin
        return f"{topic}:{partition}:{offset}"


_Outgoing = tuple[str, bytes | None, bytes | None, h.Headers]
"""A retry or dead-letter copy: topic, key, value, headers."""


Decoder = Callable[[str, bytes | None], Inbound]
"""Turns a record's value into the handler's input, raising a DecodeError for bad bytes; it
is given the topic the record was first consumed from."""


@dataclass
class _Batch:
    """What one batch decided, written together in its transaction."""

    inbox_claims: set[str] = field(default_factory=set)
    used_claims: set[str] = field(default_factory=set)
    writes: dict[str, list[Sequence[Any]]] = field(default_factory=dict)
    emissions: list[tuple[Event, str, Record]] = field(default_factory=list)
    outgoing: list[_Outgoing] = field(default_factory=list)
    parks: list[Record] = field(default_factory=list)
    unparked_done: list[int] = field(default_factory=list)
    holds: dict[Hold, str] = field(default_factory=dict)
    releases: set[Hold] = field(default_factory=set)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


class ConsumerLoop:
    """Runs one catalog consumer: its input topics and its own retry tiers, one group."""

    def __init__(
        self,
        *,
        consumer: str,
        catalog: Catalog,
        handler: Handler,
        serde: EventSerde,
        kafka_config: dict[str, Any],
        postgres_dsn: str,
        policy: Policy = Policy(),
        liveness: Liveness | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        """``decoder`` reads inputs that are not revsync's Avro events (Salesforce change
        events); the serde reads the rest and writes every emitted event."""
        spec = catalog.consumers[consumer]
        self.name = consumer
        self.service = spec.service
        self.handler = handler
        self.serde = serde
        self.policy = policy
        self.ordering = policy.preserve_key_order and spec.preserve_key_order
        self.inputs = [topic.name for topic in catalog.consumed_by(consumer)]
        self._avro_inputs = [
            topic.name
            for topic in catalog.consumed_by(consumer)
            if topic.format is TopicFormat.AVRO
        ]
        self._decoder = decoder or serde.deserialize
        self._batch_handler = handler if isinstance(handler, BatchHandler) else None
        self._prepared: dict[str, Decision | Exception] = {}
        self._wave_runner: ThreadPoolExecutor | None = None
        self.tiers = [(catalog.retry_topic(consumer, delay), delay) for delay in spec.retry_tiers]
        self.dead_letters = catalog.dead_letter_topic(consumer)
        self.replays = catalog.replay_topic(consumer)
        self.liveness = liveness or Liveness(timeout_s=60)
        self._kafka_config = kafka_config
        self._dsn = postgres_dsn
        self._stopping = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._paused: dict[tuple[str, int], datetime] = {}
        self._last_poll = time.monotonic()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._db: psycopg.Connection[Any] | None = None
        self._outbox: OutboxWriter | None = None
        self._retrying = self._build_retrying()
        self._last_maintenance = 0.0
        self._last_purge = time.monotonic()
        self._latency = HANDLER_LATENCY.labels(consumer)
        self._age = EVENT_AGE.labels(consumer)
        self._duplicates = DUPLICATES.labels(consumer)
        self._parked = PARKED.labels(consumer)

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until stopped (SIGTERM/SIGINT, :meth:`stop`), or idle for ``max_idle_s``."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.serde.prepare(self._avro_inputs)
        if self._batch_handler is not None:
            self._wave_runner = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-batch")
        # Autocommit, so that only explicit transaction() blocks group statements: a stray
        # read can never leave an implicit transaction open around the next batch.
        self._db = psycopg.connect(self._dsn, autocommit=True)
        migrate(self._db)
        self._outbox = OutboxWriter(self.serde, self.service)
        self._producer = Producer(
            {**self._kafka_config, "enable.idempotence": True, "linger.ms": 5, "acks": "all"}
        )
        self._consumer = Consumer(
            {
                **self._kafka_config,
                "group.id": self.name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "max.poll.interval.ms": self.policy.max_poll_interval_ms,
                "session.timeout.ms": self.policy.session_timeout_ms,
            }
        )
        self._consumer.subscribe(
            self.inputs + [tier for tier, _ in self.tiers] + [self.replays],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        idle_since = time.monotonic()
        try:
            while not self._stopping.is_set():
                self.liveness.beat()
                self._resume_due()
                messages = self._consumer.consume(
                    self.policy.batch_size, self.policy.batch_timeout_s
                )
                self._last_poll = time.monotonic()
                records = [Record.of(m) for m in messages if not _skippable(m)]
                if records:
                    self._run_batch(records)
                    idle_since = time.monotonic()
                # Every iteration, busy or not: released keys must not wait for a quiet moment.
                self._maintain()
                if not records:
                    idle = not self._paused and time.monotonic() - idle_since > (max_idle_s or 0)
                    if max_idle_s is not None and idle:
                        break
        finally:
            self._close()

    def stop(self) -> None:
        self._stopping.set()

    def _close(self) -> None:
        if self._wave_runner is not None:
            self._wave_runner.shutdown(wait=True)
            self._wave_runner = None
        if self._producer is not None:
            self._producer.flush(self.policy.drain_deadline_s)
        if self._consumer is not None:
            self._consumer.close()
        if self._db is not None:
            self._db.close()
        self._producer = self._consumer = self._db = None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self.liveness.ready = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._assigned.discard((p.topic, p.partition))
            self._paused.pop((p.topic, p.partition), None)

    # --- one batch -------------------------------------------------------------------------

    def _run_batch(self, records: list[Record], releasing: frozenset[Hold] = frozenset()) -> None:
        due, waiting = self._split_due(records)
        for record in due:
            CONSUMED.labels(self.name, record.topic).inc()
        try:
            batch = self._process(due, releasing)
        except (psycopg.Error, KafkaException, RegistryUnavailable) as error:
            # Nothing of this batch is committed: go back to its start and try again.
            log.warning("batch failed, rewinding: %s", error)
            self._rewind(records)
            time.sleep(1.0)
            self._reconnect_db()
            return
        self._commit_offsets(batch.positions)
        for topic, partition, offset, until in waiting:
            self._pause_until(topic, partition, offset, until)

    def _process(self, records: list[Record], releasing: frozenset[Hold]) -> _Batch:
        assert self._db is not None
        batch = _Batch()
        with self._db.transaction():
            work = deque((record, self._decode(record)) for record in records)
            batch.inbox_claims = self._claim(
                [
                    str(inbound.envelope.event_id)
                    for _, inbound in work
                    if not isinstance(inbound, DecodeError)
                ]
            )
            held = self._held_keys({r.hold for r, _ in work if r.hold is not None})
            for hold in releasing:
                # Released by an operator: the hold goes in this transaction, with the work.
                held.pop(hold, None)
                batch.releases.add(hold)
            if self._batch_handler is not None:
                self._prepared = self._handle_wave(list(work), batch, held)
            try:
                self._handle_all(work, batch, held)
            finally:
                self._prepared = {}
            self._flush(batch)
        KEYS_HELD.labels(self.name).set(len(held))
        return batch

    def _handle_all(
        self,
        work: deque[tuple[Record, Inbound | DecodeError]],
        batch: _Batch,
        held: dict[Hold, str],
    ) -> None:
        while work:
            record, decoded = work.popleft()
            self._keepalive()
            if record.parked_seq is None and (record.topic, record.partition) not in (
                self._assigned
            ):
                continue  # revoked mid-batch: its new owner redelivers it
            released = self._handle_one(record, decoded, batch, held)
            # What the record held back comes next, before anything later in the batch.
            work.extendleft((r, self._decode(r)) for r in reversed(released))
            if record.parked_seq is None:
                # max: a record parked earlier in this batch may be handled late, after
                # its key was released; the position must never move back.
                where = (record.topic, record.partition)
                batch.positions[where] = max(batch.positions.get(where, 0), record.offset + 1)

    def _handle_wave(
        self,
        work: list[tuple[Record, Inbound | DecodeError]],
        batch: _Batch,
        held: dict[Hold, str],
    ) -> dict[str, Decision | Exception]:
        """Hand the batch handler every input that is first of its key and free to run now;
        the rest go one by one, after their key's earlier input has its outcome."""
        assert self._batch_handler is not None
        seen: set[bytes] = set()
        event_ids: set[str] = set()
        wave: list[Inbound] = []
        for record, inbound in work:
            key = record.key
            first = key is None or key not in seen
            if key is not None:
                seen.add(key)
            if isinstance(inbound, DecodeError) or str(inbound.envelope.event_id) in event_ids:
                continue  # undecodable, or a second copy of one event: handled one by one
            hold = record.hold
            free = hold is None or not self.ordering or held.get(hold) in (None, record.blocker_id)
            if (
                first
                and free
                and record.parked_seq is None
                and (record.topic, record.partition) in self._assigned
                and str(inbound.envelope.event_id) in batch.inbox_claims
            ):
                wave.append(inbound)
                event_ids.add(str(inbound.envelope.event_id))
        if len(wave) < 2:
            return {}
        started = time.perf_counter()
        assert self._wave_runner is not None
        call = self._wave_runner.submit(self._batch_handler.handle_many, wave)
        while not call.done():
            # A long call must not cost the group membership or the liveness check.
            wait([call], timeout=1.0)
            self._keepalive()
            self.liveness.beat()
        try:
            results: Sequence[Decision | Exception] = call.result()
        except Exception as error:  # the call as a whole failed: each input goes alone
            log.warning("batch handler failed as a whole, handling one by one: %s", error)
            return {}
        if len(results) != len(wave):
            log.warning("batch handler gave %d results for %d inputs", len(results), len(wave))
            return {}
        share = (time.perf_counter() - started) / len(wave)
        for _ in wave:
            self._latency.observe(share)
        return {
            str(inbound.envelope.event_id): result
            for inbound, result in zip(wave, results, strict=True)
        }

    def _handle_one(
        self,
        record: Record,
        decoded: Inbound | DecodeError,
        batch: _Batch,
        held: dict[Hold, str],
    ) -> list[Record]:
        """Handle one record; returns parked records released by its success, in order."""
        hold = record.hold
        event = None if isinstance(decoded, DecodeError) else decoded
        if event is not None:
            event_id = str(event.envelope.event_id)
            if record.parked_seq is not None and event_id not in batch.inbox_claims:
                batch.inbox_claims |= self._claim([event_id])
            if event_id not in batch.inbox_claims or event_id in batch.used_claims:
                self._duplicates.inc()
                self._done(record, batch)
                return self._resolve(hold, record, batch, held)
        if self.ordering and hold is not None and held.get(hold) not in (None, record.blocker_id):
            if record.parked_seq is None:
                batch.parks.append(record)
                self._parked.inc()
            return []
        if event is None:
            assert isinstance(decoded, DecodeError)
            self._fail(record, decoded, None, batch, held)
            return []
        try:
            with event_context(event.envelope.correlation_id, str(event.envelope.event_id)):
                decision = self._call_handler(event)
        except Exception as error:  # every failure is routed, none stalls
            self._fail(record, error, event, batch, held)
            return []
        batch.used_claims.add(str(event.envelope.event_id))
        for write in decision.writes:
            batch.writes.setdefault(write.sql, []).append(write.params)
        batch.emissions += [(emission.event, emission.topic, record) for emission in decision.emits]
        PROCESSED.labels(self.name, record.origin[0]).inc()
        age = (datetime.now(UTC) - event.envelope.occurred_at).total_seconds()
        self._age.observe(max(age, 0.0))
        self._done(record, batch)
        return self._resolve(hold, record, batch, held)

    def _resolve(
        self, hold: Hold | None, record: Record, batch: _Batch, held: dict[Hold, str]
    ) -> list[Record]:
        """If ``record`` was what held its key, release the key and hand back what it parked."""
        if hold is None or held.get(hold) != record.blocker_id:
            return []
        del held[hold]
        batch.holds.pop(hold, None)
        batch.releases.add(hold)
        parked_now = [parked for parked in batch.parks if parked.hold == hold]
        batch.parks = [parked for parked in batch.parks if parked.hold != hold]
        return self._unpark(hold) + parked_now

    def _call_handler(self, event: Inbound) -> Decision:
        """The handler (or its share of the batch call), and only after a transient failure
        the bounded in-process retries."""
        prepared = self._prepared.pop(str(event.envelope.event_id), None)
        if isinstance(prepared, Decision):
            return prepared  # its latency was observed with the batch call
        started = time.perf_counter()
        try:
            if prepared is not None:
                raise prepared
            return self.handler(event)
        except TransientError as failure:
            # Tenacity takes over from the failure already seen, so the success path pays
            # nothing for it: that failure counts as attempt one and the backoff follows it.
            seen: list[TransientError] = [failure]

            def attempt() -> Decision:
                if seen:
                    raise seen.pop()
                return self.handler(event)

            return self._retrying(attempt)
        finally:
            self._latency.observe(time.perf_counter() - started)

    def _build_retrying(self) -> Retrying:
        # Exponential backoff with full jitter, unless the dependency said when to come back.
        backoff = wait_random_exponential(multiplier=0.05, max=self.policy.in_process_max_wait_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, TransientError) and error.retry_after is not None:
                return min(error.retry_after, self.policy.in_process_max_wait_s)
            return float(backoff(state))

        retries = IN_PROCESS_RETRIES.labels(self.name)
        return Retrying(
            stop=stop_after_attempt(self.policy.in_process_attempts),
            wait=wait,
            retry=retry_if_exception_type(TransientError),
            before_sleep=lambda _: retries.inc(),
            reraise=True,
        )

    def _fail(
        self,
        record: Record,
        error: BaseException,
        event: Inbound | None,
        batch: _Batch,
        held: dict[Hold, str],
    ) -> None:
        """Send a failed record on: to the next retry tier if it may pass, else the DLT."""
        now = datetime.now(UTC)
        tier = next((i for i, (name, _) in enumerate(self.tiers) if name == record.topic), -1)
        retryable = classify(error) in RETRYABLE and tier + 1 < len(self.tiers)
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
            consumer=self.name,
            service=self.service,
            correlation_id=event.envelope.correlation_id if event else None,
            now=now,
            due_at=due,
        )
        batch.outgoing.append((target, record.key, record.value, failure))
        if retryable:
            RETRIED.labels(self.name, target.rsplit(".", 1)[1]).inc()
        else:
            DEAD_LETTERED.labels(self.name, origin[0], classify(error).value).inc()
        log.warning(
            "%s -> %s: %s",
            record.blocker_id,
            target,
            error,
            extra={"fields": {"error_class": classify(error).value}},
        )
        hold = record.hold
        if self.ordering and hold is not None and hold not in held:
            held[hold] = record.blocker_id
            batch.holds[hold] = record.blocker_id
        self._done(record, batch)

    def _done(self, record: Record, batch: _Batch) -> None:
        if record.parked_seq is not None:
            batch.unparked_done.append(record.parked_seq)

    # --- PostgreSQL ------------------------------------------------------------------------

    def _claim(self, event_ids: list[str]) -> set[str]:
        """Insert inbox rows; the ids inserted now are ours to handle, the rest are duplicates.
        A concurrent claim of the same id waits for ours to commit, then finds it taken."""
        if not event_ids:
            return set()
        assert self._db is not None
        rows = self._db.execute(
            "INSERT INTO revsync_inbox (consumer, event_id) SELECT %s, unnest(%s::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id::text",
            (self.name, event_ids),
        ).fetchall()
        return {row[0] for row in rows}

    def _held_keys(self, holds: set[Hold]) -> dict[Hold, str]:
        if not self.ordering or not holds:
            return {}
        assert self._db is not None
        rows = self._db.execute(
            # Locked, so that a member releasing one of these keys waits for this batch's
            # parked rows to commit, and then finds them.
            "SELECT record_key, source_topic, blocker FROM revsync_key_holds "
            "WHERE consumer = %s AND (record_key, source_topic) IN "
            "(SELECT * FROM unnest(%s::bytea[], %s::text[])) "
            "ORDER BY record_key, source_topic FOR UPDATE",
            (self.name, [key for key, _ in holds], [topic for _, topic in holds]),
        ).fetchall()
        return {(bytes(key), topic): blocker for key, topic, blocker in rows}

    def _unpark(self, hold: Hold) -> list[Record]:
        assert self._db is not None
        rows = self._db.execute(
            'SELECT seq, topic, partition, "offset", value, headers FROM revsync_parked '
            "WHERE consumer = %s AND record_key = %s AND source_topic = %s ORDER BY seq",
            (self.name, hold[0], hold[1]),
        ).fetchall()
        return [
            Record(topic, partition, offset, hold[0], value, h.from_json(pairs), 0, seq)
            for seq, topic, partition, offset, value, pairs in rows
        ]

    def _flush(self, batch: _Batch) -> None:
        """Write the batch's effects; then its retry and DLT copies, acknowledged before commit."""
        assert self._db is not None
        assert self._outbox is not None
        with self._db.cursor() as cursor:
            unused = batch.inbox_claims - batch.used_claims
            if unused:
                # Claimed but not handled (failed, parked, revoked mid-batch): not ours to keep.
                cursor.execute(
                    "DELETE FROM revsync_inbox WHERE consumer = %s AND event_id = ANY(%s::uuid[])",
                    (self.name, list(unused)),
                )
            for sql, params in batch.writes.items():
                cursor.executemany(sql, params)
            self._outbox.write(cursor, batch.emissions)
            if batch.parks:
                cursor.executemany(
                    "INSERT INTO revsync_parked (consumer, record_key, source_topic, topic, "
                    'partition, "offset", value, headers) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)',
                    [
                        (
                            self.name,
                            r.key,
                            r.origin[0],
                            r.topic,
                            r.partition,
                            r.offset,
                            r.value,
                            Jsonb(h.to_json(r.headers)),
                        )
                        for r in batch.parks
                    ],
                )
            if batch.unparked_done:
                cursor.execute(
                    "DELETE FROM revsync_parked WHERE seq = ANY(%s)", (batch.unparked_done,)
                )
            if batch.releases:
                cursor.execute(
                    "DELETE FROM revsync_key_holds WHERE consumer = %s AND "
                    "(record_key, source_topic) IN (SELECT * FROM unnest(%s::bytea[], %s::text[]))",
                    (
                        self.name,
                        [key for key, _ in batch.releases],
                        [topic for _, topic in batch.releases],
                    ),
                )
            if batch.holds:
                cursor.executemany(
                    "INSERT INTO revsync_key_holds (consumer, record_key, source_topic, blocker) "
                    "VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (consumer, record_key, source_topic) DO NOTHING",
                    [
                        (self.name, key, topic, blocker)
                        for (key, topic), blocker in batch.holds.items()
                    ],
                )
        self._produce_and_wait(batch.outgoing)

    def _produce_and_wait(self, outgoing: list[_Outgoing]) -> None:
        if not outgoing:
            return
        assert self._producer is not None
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                errors.append(error)

        for topic, key, value, headers in outgoing:
            self._producer.produce(
                topic, key=key, value=value, headers=headers, on_delivery=delivered
            )
        remaining = self._producer.flush(self.policy.drain_deadline_s)
        if errors or remaining:
            raise KafkaException(errors[0] if errors else KafkaError(KafkaError._TIMED_OUT))

    def _maintain(self) -> None:
        """At most once a maintenance interval: released keys, then old inbox rows."""
        now = time.monotonic()
        if now - self._last_maintenance < self.policy.maintenance_interval_s:
            return
        self._last_maintenance = now
        self._process_released()
        if now - self._last_purge >= self.policy.inbox_purge_interval_s and self._db is not None:
            self._last_purge = now
            purged = purge_inbox(self._db, self.policy.inbox_retention)
            if purged:
                log.info("purged %d inbox rows older than %s", purged, self.policy.inbox_retention)

    def _process_released(self) -> None:
        """Keys an operator released (discarding their blocker): handle what they parked."""
        if not self.ordering or self._db is None:
            return
        rows = self._db.execute(
            "SELECT DISTINCT h.record_key, h.source_topic FROM revsync_key_holds h "
            "JOIN revsync_parked p ON p.consumer = h.consumer AND p.record_key = h.record_key "
            "AND p.source_topic = h.source_topic "
            "WHERE h.consumer = %s AND h.blocker = %s AND (p.topic, p.partition) IN "
            "(SELECT t, p FROM unnest(%s::text[], %s::int[]) AS a(t, p))",
            (
                self.name,
                RELEASED,
                [t for t, _ in self._assigned],
                [p for _, p in self._assigned],
            ),
        ).fetchall()
        released = frozenset((bytes(key), topic) for key, topic in rows)
        if released:
            records = [record for hold in sorted(released) for record in self._unpark(hold)]
            self._run_batch(records, releasing=released)

    def _reconnect_db(self) -> None:
        if self._db is not None and self._db.closed:
            self._db = psycopg.connect(self._dsn, autocommit=True)

    # --- Kafka positions -------------------------------------------------------------------

    def _decode(self, record: Record) -> Inbound | DecodeError:
        topic = record.origin[0]
        try:
            return self._decoder(topic, record.value)
        except DecodeError as error:
            return error
        except RegistryUnavailable:
            raise  # nothing wrong with the record: the batch is rewound and tried again
        except Exception as error:  # a decoder's own bug must not stall the partition either
            return DecodeError(topic, f"decoder failed: {error!r}")

    def _split_due(
        self, records: list[Record]
    ) -> tuple[list[Record], list[tuple[str, int, int, datetime]]]:
        """Retry-tier records not yet due stop their partition here; the rest go on."""
        now = datetime.now(UTC)
        due: list[Record] = []
        waiting: dict[tuple[str, int], tuple[str, int, int, datetime]] = {}
        for record in records:
            where = (record.topic, record.partition)
            if where in waiting:
                continue
            until = h.due_at(record.headers) if record.topic != record.origin[0] else None
            if until is not None and until > now and record.parked_seq is None:
                waiting[where] = (record.topic, record.partition, record.offset, until)
                continue
            due.append(record)
        return due, list(waiting.values())

    def _pause_until(self, topic: str, partition: int, offset: int, until: datetime) -> None:
        assert self._consumer is not None
        if (topic, partition) not in self._assigned:
            return
        position = TopicPartition(topic, partition, offset)
        self._consumer.pause([position])
        self._consumer.seek(position)
        self._paused[(topic, partition)] = until

    def _resume_due(self) -> None:
        now = datetime.now(UTC)
        ready = [where for where, until in self._paused.items() if until <= now]
        if ready and self._consumer is not None:
            self._consumer.resume([TopicPartition(t, p) for t, p in ready])
            for where in ready:
                del self._paused[where]

    def _keepalive(self) -> None:
        """During a slow batch, poll with every partition paused, so the group keeps us."""
        if time.monotonic() - self._last_poll < self.policy.keepalive_s:
            return
        assert self._consumer is not None
        active = [TopicPartition(t, p) for t, p in self._assigned if (t, p) not in self._paused]
        self._consumer.pause(active)
        stray = self._consumer.poll(0)
        if stray is not None and stray.error() is None:
            # From a partition assigned during this poll: leave it for the next batch.
            topic, partition, offset = stray.topic(), stray.partition(), stray.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            self._consumer.seek(TopicPartition(topic, partition, offset))
        still = [tp for tp in active if (tp.topic, tp.partition) in self._assigned]
        self._consumer.resume(still)
        self._last_poll = time.monotonic()
        self.liveness.beat()

    def _commit_offsets(self, positions: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in positions.items() if (t, p) in self._assigned
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            # Effects are committed with their inbox rows: a redelivery is a counted no-op.
            log.warning("offset commit failed, records will be redelivered: %s", error)

    def _rewind(self, records: list[Record]) -> None:
        assert self._consumer is not None
        first: dict[tuple[str, int], int] = {}
        for record in records:
            if record.parked_seq is None:
                first.setdefault((record.topic, record.partition), record.offset)
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._assigned:
                self._consumer.seek(TopicPartition(topic, partition, offset))


def _skippable(message: Message) -> bool:
    """True for a message that is only a report: end of partition, or a passing client error
    (librdkafka recovers from those itself). A fatal error ends the loop."""
    error = message.error()
    if error is None:
        return False
    if error.fatal():
        raise KafkaException(error)
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer: %s", error)
    return True
