"""Replay jobs: dead letters sent back to their consumers, at a rate, resumable, cancellable.

A replay sends each selected dead letter to its own consumer's replay topic
(``revsync.<consumer>.replay``), which no other consumer reads, with its original
coordinates, so a success releases the key it held, and work already done is an inbox
no-op. Each replayed record is written down in the ledger once Kafka has it; a replay
interrupted between the two is resumed by reading back, from the replay topics, what the job
had already sent. A record replayed ``max_replays`` times is quarantined instead.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from psycopg.types.json import Jsonb

from revsync.contracts.catalog import Catalog
from revsync.ops import dead_letters as dl
from revsync.ops import ledger
from revsync.runtime import headers as h

STALE_AFTER = timedelta(seconds=30)
"""A running job whose heartbeat is older than this was interrupted."""
CANCEL_CHECK_S = 0.5


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    actor: str
    filter: dict[str, Any]
    rate_per_s: float | None
    status: str
    total: int
    moved: int
    quarantined: int
    created_at: datetime
    updated_at: datetime

    @property
    def remaining(self) -> int:
        return max(self.total - self.moved - self.quarantined, 0)

    @property
    def shown_status(self) -> str:
        stale = datetime.now(UTC) - self.updated_at > STALE_AFTER
        return "interrupted" if self.status == "running" and stale else self.status


@dataclass
class ReplayReport:
    job_id: uuid.UUID
    selected: int
    moved: int = 0
    quarantined: int = 0
    already_sent: int = 0
    """Found on a replay topic when resuming: sent before the interruption, not again."""
    status: str = "running"


@dataclass
class RateLimiter:
    """At most ``per_s`` acquisitions a second, evenly spaced; None: no limit."""

    per_s: float | None
    _next: float = field(default=0.0)

    def acquire(self) -> None:
        if not self.per_s:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + 1 / self.per_s


class ReplayJobs:
    """Replay jobs over one catalog's replay topics, recorded in its database."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        kafka_config: dict[str, Any],
        dsn: str,
        actor: ledger.Actor,
        select: Callable[[dl.Selection], list[dl.DeadLetter]],
    ) -> None:
        self.catalog = catalog
        self.kafka_config = kafka_config
        self.dsn = dsn
        self.actor = actor
        self._select = select

    def replay(
        self,
        selection: dl.Selection,
        *,
        rate_per_s: float | None,
        max_replays: int,
        on_progress: Callable[[ReplayReport], None] = lambda _: None,
        stop: threading.Event | None = None,
        everything: bool = False,
    ) -> ReplayReport:
        """Send ``selection``'s dead letters back through their own consumer; a selection
        without a filter only with ``everything`` (``--all``)."""
        dl.refuse_unfiltered("replay", selection, everything)
        letters = self._select(selection)
        job_id = uuid.uuid4()
        # The job and its audit row together, before anything is sent: a replay killed
        # half-way is on the record; its end is audited again when it finishes.
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            ledger.audit(
                connection,
                self.actor,
                "replay",
                selection.as_json(),
                len(letters),
                "started",
                job_id,
            )
            connection.execute(
                "INSERT INTO revsync_replay_jobs (id, actor, filter, rate_per_s, status, total, "
                "start_offsets) VALUES (%s, %s, %s, %s, 'running', %s, %s)",
                (
                    job_id,
                    self.actor.name,
                    Jsonb(selection.as_json()),
                    rate_per_s,
                    len(letters),
                    Jsonb(self._replay_ends()),
                ),
            )
        report = ReplayReport(job_id, len(letters))
        return self._run(report, letters, rate_per_s, max_replays, on_progress, stop)

    def resume(
        self,
        job_id: uuid.UUID,
        *,
        max_replays: int,
        on_progress: Callable[[ReplayReport], None] = lambda _: None,
        stop: threading.Event | None = None,
    ) -> ReplayReport:
        """Carry on with an interrupted replay: what it sent already is found on the replay
        topics and written down, never sent twice; the rest of its selection goes now."""
        job = self.job(job_id)
        if job.shown_status != "interrupted":
            raise dl.OperationRefused(f"job {job_id} is {job.shown_status}, not interrupted")
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            row = connection.execute(
                "SELECT start_offsets FROM revsync_replay_jobs WHERE id = %s", (job_id,)
            ).fetchone()
            assert row is not None
            sent = list(self._sent_by(job_id, row[0]))
            ledger.record(connection, job_id, sent, "replayed")
            connection.execute(
                "UPDATE revsync_replay_jobs SET status = 'running', updated_at = now() "
                "WHERE id = %s",
                (job_id,),
            )
        selection = selection_from(job.filter)
        remaining = self._select(selection)
        report = ReplayReport(job_id, job.total, already_sent=len(sent))
        report.moved = self._count(job_id, "replayed")
        report.quarantined = self._count(job_id, "quarantined")
        return self._run(report, remaining, job.rate_per_s, max_replays, on_progress, stop)

    def _run(
        self,
        report: ReplayReport,
        letters: Sequence[dl.DeadLetter],
        rate_per_s: float | None,
        max_replays: int,
        on_progress: Callable[[ReplayReport], None],
        stop: threading.Event | None,
    ) -> ReplayReport:
        limiter = RateLimiter(rate_per_s)
        producer = Producer(
            {**self.kafka_config, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        delivered: list[dl.DeadLetter] = []
        failures: list[KafkaError] = []
        last_check = time.monotonic()
        status = "completed"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            try:
                for letter in letters:
                    if time.monotonic() - last_check >= CANCEL_CHECK_S:
                        last_check = time.monotonic()
                        self._settle(connection, report, producer, delivered, failures)
                        on_progress(report)
                        if (stop is not None and stop.is_set()) or self._cancelled(
                            connection, report.job_id
                        ):
                            status = "cancelled"
                            break
                    if letter.replay_count >= max_replays:
                        # The loop guard: replayed often enough, it failed every time.
                        self._quarantine(connection, report.job_id, letter)
                        report.quarantined += 1
                        continue
                    limiter.acquire()
                    self._send(producer, report.job_id, letter, delivered, failures)
                self._settle(connection, report, producer, delivered, failures)
            except KeyboardInterrupt:
                status = "interrupted"  # resumable: revsync dlt replay --resume JOB
                raise
            except BaseException:
                status = "failed"
                raise
            finally:
                report.status = status
                self._finish(connection, report, status)
                on_progress(report)
        return report

    def _send(
        self,
        producer: Producer,
        job_id: uuid.UUID,
        letter: dl.DeadLetter,
        delivered: list[dl.DeadLetter],
        failures: list[KafkaError],
    ) -> None:
        headers = [
            (name, value)
            for name, value in letter.headers
            if name not in (h.REPLAY_ID, h.REPLAY_COUNT, h.REPLAY_SOURCE)
        ] + [
            (h.REPLAY_ID, str(job_id).encode()),
            (h.REPLAY_COUNT, str(letter.replay_count + 1).encode()),
            (h.REPLAY_SOURCE, letter.ref.encode()),
        ]

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is None:
                delivered.append(letter)
            else:
                failures.append(error)

        target = self.catalog.replay_topic(letter.consumer)
        while True:
            try:
                producer.produce(
                    target,
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    def _settle(
        self,
        connection: psycopg.Connection[Any],
        report: ReplayReport,
        producer: Producer,
        delivered: list[dl.DeadLetter],
        failures: list[KafkaError],
    ) -> None:
        """Wait for what is in flight, then write down what Kafka has."""
        producer.flush(30)
        if delivered:
            ledger.record(
                connection, report.job_id, [letter.ref for letter in delivered], "replayed"
            )
            report.moved += len(delivered)
            delivered.clear()
        connection.execute(
            "UPDATE revsync_replay_jobs SET moved = %s, quarantined = %s, updated_at = now() "
            "WHERE id = %s",
            (report.moved, report.quarantined, report.job_id),
        )
        if failures:
            raise KafkaException(failures[0])

    def _quarantine(
        self, connection: psycopg.Connection[Any], job_id: uuid.UUID, letter: dl.DeadLetter
    ) -> None:
        with connection.transaction():
            ledger.archive(connection, [letter])
            ledger.record(connection, job_id, [letter.ref], "quarantined")
            ledger.release_holds(connection, [letter])

    def _finish(
        self, connection: psycopg.Connection[Any], report: ReplayReport, status: str
    ) -> None:
        connection.execute(
            "UPDATE revsync_replay_jobs SET status = %s, moved = %s, quarantined = %s, "
            "updated_at = now() WHERE id = %s",
            (status, report.moved, report.quarantined, report.job_id),
        )
        job = self.job(report.job_id)
        ledger.audit(
            connection,
            self.actor,
            "replay",
            job.filter,
            report.moved,
            f"{status}: {report.moved} replayed, {report.quarantined} quarantined",
            report.job_id,
        )

    def _replay_ends(self) -> dict[str, dict[str, int]]:
        """Each replay topic's end offsets now: where a job's own records will start."""
        consumer = Consumer({**self.kafka_config, "group.id": f"revsync-ops-{uuid.uuid4()}"})
        try:
            metadata = consumer.list_topics(timeout=10).topics
            ends: dict[str, dict[str, int]] = {}
            for name in self.catalog.consumers:
                topic = self.catalog.replay_topic(name)
                if topic not in metadata:
                    raise dl.OperationRefused(
                        f"replay topic {topic} does not exist; run revsync topics apply"
                    )
                ends[topic] = {
                    str(p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in metadata[topic].partitions
                }
            return ends
        finally:
            consumer.close()

    def _sent_by(self, job_id: uuid.UUID, start: dict[str, dict[str, int]]) -> Iterator[str]:
        """The dead letters job ``job_id`` put on the replay topics since it began."""
        wanted = str(job_id)
        consumers = {self.catalog.replay_topic(name): name for name in self.catalog.consumers}
        for letter in dl.scan(self.kafka_config, consumers, from_offsets=start):
            if letter.header(h.REPLAY_ID) == wanted:
                source = letter.header(h.REPLAY_SOURCE)
                if source:
                    yield source

    def job(self, job_id: uuid.UUID) -> Job:
        jobs = self.jobs(job_id)
        if not jobs:
            raise dl.OperationRefused(f"no replay job {job_id}")
        return jobs[0]

    def jobs(self, job_id: uuid.UUID | None = None) -> list[Job]:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT id, actor, filter, rate_per_s, status, total, moved, quarantined, "
                "created_at, updated_at FROM revsync_replay_jobs "
                "WHERE %s::uuid IS NULL OR id = %s ORDER BY created_at DESC LIMIT 50",
                (job_id, job_id),
            ).fetchall()
        return [Job(*row) for row in rows]

    def cancel(self, job_id: uuid.UUID) -> Job:
        job = self.job(job_id)
        if job.status != "running":
            raise dl.OperationRefused(f"job {job_id} is {job.status}; only a running job cancels")
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            connection.execute(
                "UPDATE revsync_replay_jobs SET cancel_requested = true WHERE id = %s", (job_id,)
            )
            if job.shown_status == "interrupted":
                # Nothing runs it any more: cancelled here and now.
                connection.execute(
                    "UPDATE revsync_replay_jobs SET status = 'cancelled', updated_at = now() "
                    "WHERE id = %s",
                    (job_id,),
                )
            ledger.audit(
                connection, self.actor, "cancel", {"job": str(job_id)}, 0, "requested", job_id
            )
        return self.job(job_id)

    def _cancelled(self, connection: psycopg.Connection[Any], job_id: uuid.UUID) -> bool:
        row = connection.execute(
            "SELECT cancel_requested FROM revsync_replay_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        return bool(row and row[0])

    def _count(self, job_id: uuid.UUID, state: str) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM revsync_dlt_ledger WHERE job_id = %s AND state = %s",
                (job_id, state),
            ).fetchone()
        return int(row[0]) if row else 0


def selection_from(document: dict[str, Any]) -> dl.Selection:
    """The selection a job recorded (the inverse of ``Selection.as_json``)."""

    def values(name: str) -> frozenset[str]:
        return frozenset(document.get(name, ()))

    def moment(name: str) -> datetime | None:
        return datetime.fromisoformat(document[name]) if name in document else None

    return dl.Selection(
        services=values("services"),
        source_topics=values("source_topics"),
        error_classes=values("error_classes"),
        keys=values("keys"),
        correlation_ids=values("correlation_ids"),
        event_types=values("event_types"),
        refs=values("refs"),
        since=moment("since"),
        until=moment("until"),
        states=values("states") or frozenset({dl.OPEN}),
    )
