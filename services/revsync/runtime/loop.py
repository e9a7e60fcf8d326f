"""The consumer loop: polls one catalog consumer's topics in batches, hands each batch to the
:class:`~revsync.runtime.batch.BatchProcessor`, and commits offsets only once the batch's
effects are durable; keeps the group membership through slow batches, waits out retry tiers'
due times, and handles what an operator's release un-parks."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from revsync.contracts.catalog import Catalog, TopicFormat
from revsync.contracts.serde import EventSerde
from revsync.migrations import ensure
from revsync.runtime.batch import BatchProcessor
from revsync.runtime.breaker import CircuitBreaker
from revsync.runtime.failures import FailureRouter
from revsync.runtime.handler import BatchHandler, Handler
from revsync.runtime.holds import KeyHolds
from revsync.runtime.inbox import Inbox, purge_inbox
from revsync.runtime.journey import Journal, purge_journey
from revsync.runtime.observability import CONSUMED, KEYS_HELD, Liveness
from revsync.runtime.outages import DEPENDENCY_ERRORS, Outages
from revsync.runtime.outbox import OutboxWriter
from revsync.runtime.positions import Positions, split_due
from revsync.runtime.records import Decoder, Hold, Outgoing, Record
from revsync.runtime.storage import TABLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """How one consumer loop behaves; defaults suit the order-to-cash services."""

    batch_size: int = 500
    batch_timeout_s: float = 0.02
    """How long a batch stays open for more records once its first has arrived: it closes
    full or on time, so a record at a light load waits no longer than this for company."""
    poll_timeout_s: float = 0.5
    """How long one poll waits for a first record while nothing comes."""
    in_process_attempts: int = 3
    in_process_max_wait_s: float = 2.0
    drain_deadline_s: float = 30.0
    keepalive_s: float = 10.0
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    inbox_retention: timedelta = timedelta(days=14)
    inbox_purge_interval_s: float = 600.0
    journey_retention: timedelta = timedelta(days=30)
    """How long an order's journey is kept (every consumer prunes it, with the inbox)."""
    maintenance_interval_s: float = 1.0
    preserve_key_order: bool = True


class ConsumerLoop:
    """Runs one catalog consumer: its input topics, its own retry tiers and replay topic, one
    group."""

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
        self.serde = serde
        self.policy = policy
        self.ordering = policy.preserve_key_order and spec.preserve_key_order
        consumed = catalog.consumed_by(consumer)
        self.inputs = [topic.name for topic in consumed]
        self._avro_inputs = [t.name for t in consumed if t.format is TopicFormat.AVRO]
        tiers = [(catalog.retry_topic(consumer, delay), delay) for delay in spec.retry_tiers]
        self.replays = catalog.replay_topic(consumer)
        self.liveness = liveness or Liveness(timeout_s=60)
        self.positions = Positions()
        self._kafka_config = kafka_config
        self._dsn = postgres_dsn
        self._stopping = threading.Event()
        self.migrated = threading.Event()
        """Set once the runtime's tables exist (what the relay beside the loop waits for)."""
        self._last_poll = time.monotonic()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._db: psycopg.Connection[Any] | None = None
        self._last_maintenance = 0.0
        self._last_purge = time.monotonic()
        self.outages = Outages(self.liveness, self._stopping, self._keep_group)
        self.holds = KeyHolds(consumer)
        self.breaker = CircuitBreaker(consumer, spec.circuit_breaker)
        self.batches = BatchProcessor(
            consumer=consumer,
            handler=handler,
            decoder=decoder or serde.deserialize,
            ordering=self.ordering,
            inbox=Inbox(consumer),
            holds=self.holds,
            router=FailureRouter(
                consumer=consumer,
                service=spec.service,
                tiers=tiers,
                dead_letters=catalog.dead_letter_topic(consumer),
                attempts=policy.in_process_attempts,
                max_wait_s=policy.in_process_max_wait_s,
            ),
            outbox=OutboxWriter(serde, spec.service),
            send=lambda outgoing: produce_and_wait(
                self._producer, outgoing, policy.drain_deadline_s
            ),
            owns=self.positions.owns,
            keepalive=self._keepalive,
            breaker=self.breaker,
            journal=Journal(consumer, lambda: datetime.now(UTC)),
        )
        self.tiers = [tier for tier, _ in tiers]
        self._tier_delays = {tier: timedelta(milliseconds=delay) for tier, delay in tiers}
        self._own_topics = frozenset([*self.tiers, self.replays])
        """Only revsync writes these: the only topics whose routing headers it trusts."""

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until stopped (SIGTERM/SIGINT, :meth:`stop`), or idle for ``max_idle_s``."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.outages.until_up(lambda: self.serde.prepare(self._avro_inputs))
        if isinstance(self.batches.handler, BatchHandler):
            self.batches.wave_runner = ThreadPoolExecutor(
                1, thread_name_prefix=f"{self.name}-batch"
            )
        self._db = db = self.outages.until_up(self._connect)
        self.migrated.set()
        self.breaker.load(db)
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
                "error_cb": self.outages.on_kafka_error,
            }
        )
        self._consumer.subscribe(
            [*self.inputs, *self.tiers, self.replays],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        idle_since = time.monotonic()
        try:
            while not self._stopping.is_set():
                self.liveness.beat()
                self.positions.settle(self._consumer)
                self.positions.resume_due(self._consumer)
                messages = self._next_batch(self._consumer)
                self._last_poll = time.monotonic()
                records = [
                    Record.of(m, trusted=m.topic() in self._own_topics)
                    for m in messages
                    if not _skippable(m)
                ]
                if records and self.breaker.is_open:
                    # From a partition assigned since the breaker opened: not taken, paused.
                    self.positions.rewind(self._consumer, records)
                    records = []
                    self._follow_breaker()
                if records:
                    self._run_batch(records)
                    idle_since = time.monotonic()
                # Every iteration, busy or not: released keys must not wait for a quiet moment.
                try:
                    self._maintain()
                except DEPENDENCY_ERRORS as error:
                    self._wait_out(error)
                if not records:
                    idle = not self.positions.paused and time.monotonic() - idle_since > (
                        max_idle_s or 0
                    )
                    if max_idle_s is not None and idle:
                        break
        finally:
            self._close()

    def stop(self) -> None:
        self._stopping.set()

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """The first record to come within the poll timeout, and with it whatever follows
        within the batch timeout, up to the batch size (one record while the breaker probes)."""
        messages = consumer.consume(1, self.policy.poll_timeout_s)
        if messages and not self.breaker.probing and self.policy.batch_size > 1:
            messages += consumer.consume(self.policy.batch_size - 1, self.policy.batch_timeout_s)
        return messages

    def _close(self) -> None:
        if self.batches.wave_runner is not None:
            self.batches.wave_runner.shutdown(wait=True)
            self.batches.wave_runner = None
        if self._producer is not None:
            self._producer.flush(self.policy.drain_deadline_s)
        if self._consumer is not None:
            self._consumer.close()
        if self._db is not None:
            self._db.close()
        self._producer = self._consumer = self._db = None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.positions.assign(partitions)
        self.liveness.ready = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.positions.revoke(partitions)

    # --- batches ---------------------------------------------------------------------------

    def _run_batch(self, records: list[Record], releasing: frozenset[Hold] = frozenset()) -> None:
        assert self._consumer is not None
        assert self._db is not None
        due, waiting = split_due(records, datetime.now(UTC), self._tier_delays)
        for record in due:
            CONSUMED.labels(self.name, record.topic).inc()
        try:
            batch = self.batches.process(self._db, due, releasing)
        except DEPENDENCY_ERRORS as error:
            # Nothing of this batch is committed: go back to its start and try again.
            log.warning("batch failed, rewinding: %s", error)
            self.positions.rewind(self._consumer, records)
            self._wait_out(error)
            return
        self.outages.succeeded()
        KEYS_HELD.labels(self.name).set(len(batch.held))
        self.positions.commit(self._consumer, batch.positions)
        if batch.unhandled:
            self.positions.rewind(self._consumer, batch.unhandled)
        self._follow_breaker()
        for wait in waiting:
            self.positions.pause_until(self._consumer, wait)

    def _maintain(self) -> None:
        """At most once a maintenance interval: whether lost brokers are back, released keys,
        then old inbox rows."""
        now = time.monotonic()
        if now - self._last_maintenance < self.policy.maintenance_interval_s:
            return
        self._last_maintenance = now
        if self._consumer is not None:
            self.outages.check_kafka(self._consumer)
        if self._db is not None and self.breaker.check(self._db):
            self._follow_breaker()
        if self.ordering and self._db is not None and not self.breaker.is_open:
            released = self.holds.released(self._db, self.positions.assigned)
            if released:
                parked = [r for hold in sorted(released) for r in self.holds.unpark(self._db, hold)]
                self._run_batch(parked, releasing=released)
        if now - self._last_purge >= self.policy.inbox_purge_interval_s and self._db is not None:
            self._last_purge = now
            purged = purge_inbox(self._db, self.policy.inbox_retention)
            if purged:
                log.info("purged %d inbox rows older than %s", purged, self.policy.inbox_retention)
            purged = purge_journey(self._db, self.policy.journey_retention)
            if purged:
                log.info(
                    "purged %d journey rows older than %s", purged, self.policy.journey_retention
                )

    def _follow_breaker(self) -> None:
        assert self._consumer is not None
        self.breaker.follow(self._consumer, self.positions, self.liveness)

    # --- dependency outages -------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        # Autocommit, so that only explicit transaction() blocks group statements: a stray
        # read can never leave an implicit transaction open around the next batch.
        db = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        ensure(db, TABLES)
        return db

    def _wait_out(self, error: BaseException) -> None:
        """A dependency failed: wait a backoff step, and with PostgreSQL lost, connect again
        before going on."""
        self.outages.wait_out(error)
        if self._db is not None and (self._db.closed or self._db.broken):
            self._db.close()
            self._db = self.outages.until_up(self._connect)

    def _keep_group(self) -> None:
        if self._consumer is not None:
            self._keepalive()

    def _keepalive(self) -> None:
        """During a slow batch, poll with every partition paused, so the group keeps us."""
        self.liveness.beat()
        if time.monotonic() - self._last_poll < self.policy.keepalive_s:
            return
        assert self._consumer is not None
        self.positions.poll_paused(self._consumer)
        self._last_poll = time.monotonic()


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


def produce_and_wait(
    producer: Producer | None, outgoing: list[Outgoing], deadline_s: float
) -> list[tuple[str, int, int]]:
    """Produce retry and dead-letter copies, wait for Kafka to have every one of them, and
    say where each went (topic, partition, offset), in order."""
    if not outgoing:
        return []
    assert producer is not None
    errors: list[KafkaError] = []
    placed: list[tuple[str, int, int] | None] = [None] * len(outgoing)

    def delivered_as(index: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(error)
                return
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            placed[index] = (topic, partition, offset)

        return delivered

    for index, (topic, key, value, headers) in enumerate(outgoing):
        producer.produce(
            topic, key=key, value=value, headers=headers, on_delivery=delivered_as(index)
        )
    remaining = producer.flush(deadline_s)
    if errors or remaining or None in placed:
        raise KafkaException(errors[0] if errors else KafkaError(KafkaError._TIMED_OUT))
    return [where for where in placed if where is not None]
