"""What an operator does with dead letters — replay, purge, archive, export — and the rewind
of a consumer group; every action recorded in the audit trail.

A replay sends each selected dead letter to its own consumer's replay topic
(``revsync.<consumer>.replay``), which no other consumer reads, with its original
coordinates, so a success releases the key it held, and work already done is an inbox
no-op. Each replayed record is written down in the ledger once Kafka has it; a replay
interrupted between the two is resumed by reading back, from the replay topics, what the job
had already sent. A record replayed ``max_replays`` times is quarantined instead.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from psycopg.types.json import Jsonb

from revsync.contracts.catalog import Catalog
from revsync.errors import RevsyncError
from revsync.ops import dead_letters as dl
from revsync.ops.storage import migrate
from revsync.runtime import headers as h
from revsync.runtime.holds import release
from revsync.runtime.records import Decoder

STALE_AFTER = timedelta(seconds=30)
"""A running job whose heartbeat is older than this was interrupted."""
CANCEL_CHECK_S = 0.5


class OperationRefused(RevsyncError):
    """The action would be unsafe as asked (a live consumer group, an unknown job)."""


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


class Operations:
    """The operators' tooling over one catalog, its Kafka cluster and its database."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        kafka_config: dict[str, Any],
        dsn: str,
        decoder: Decoder,
        registry: SchemaRegistryClient,
        actor: str,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.kafka_config = kafka_config
        self.dsn = dsn
        self.decoder = decoder
        self.actor = actor
        with psycopg.connect(dsn, autocommit=True) as connection:
            migrate(connection)

    # --- reading -----------------------------------------------------------------------------

    def select(self, selection: dl.Selection) -> list[dl.DeadLetter]:
        """The dead letters ``selection`` matches, oldest first per topic and partition."""
        topics = dl.dead_letter_topics(self.catalog, selection.services)
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            letters = dl.with_state(connection, dl.scan(self.kafka_config, topics))
            chosen = [
                letter for letter in dl.decoded(letters, self.decoder) if selection.matches(letter)
            ]
        return sorted(
            chosen, key=lambda letter: (letter.dlt_topic, letter.partition, letter.offset)
        )

    def find(self, ref: str) -> dl.DeadLetter:
        found = self.select(dl.Selection(refs=frozenset({ref}), states=frozenset(dl.STATES)))
        if not found:
            raise OperationRefused(f"no dead letter {ref} (topic:partition:offset)")
        return found[0]

    # --- replay ------------------------------------------------------------------------------

    def replay(
        self,
        selection: dl.Selection,
        *,
        rate_per_s: float | None,
        max_replays: int,
        on_progress: Callable[[ReplayReport], None] = lambda _: None,
        stop: threading.Event | None = None,
    ) -> ReplayReport:
        letters = self.select(selection)
        job_id = uuid.uuid4()
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO revsync_replay_jobs (id, actor, filter, rate_per_s, status, total, "
                "start_offsets) VALUES (%s, %s, %s, %s, 'running', %s, %s)",
                (
                    job_id,
                    self.actor,
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
            raise OperationRefused(f"job {job_id} is {job.shown_status}, not interrupted")
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            row = connection.execute(
                "SELECT start_offsets FROM revsync_replay_jobs WHERE id = %s", (job_id,)
            ).fetchone()
            assert row is not None
            sent = list(self._sent_by(job_id, row[0]))
            self._record(connection, job_id, sent, "replayed")
            connection.execute(
                "UPDATE revsync_replay_jobs SET status = 'running', updated_at = now() "
                "WHERE id = %s",
                (job_id,),
            )
        selection = selection_from(job.filter)
        remaining = self.select(selection)
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
            self._record(
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
            self._archive_rows(connection, [letter])
            self._record(connection, job_id, [letter.ref], "quarantined")

    def _finish(
        self, connection: psycopg.Connection[Any], report: ReplayReport, status: str
    ) -> None:
        connection.execute(
            "UPDATE revsync_replay_jobs SET status = %s, moved = %s, quarantined = %s, "
            "updated_at = now() WHERE id = %s",
            (status, report.moved, report.quarantined, report.job_id),
        )
        job = self.job(report.job_id)
        self._audit(
            connection,
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
                    raise OperationRefused(
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

    # --- purge, archive, export ----------------------------------------------------------------

    def purge(self, selection: dl.Selection) -> int:
        letters = self.select(selection)
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            self._record(connection, None, [letter.ref for letter in letters], "purged")
            _release_holds(connection, letters)
            self._audit(connection, "purge", selection.as_json(), len(letters), "purged")
        return len(letters)

    def archive(self, selection: dl.Selection) -> int:
        letters = self.select(selection)
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            self._archive_rows(connection, letters)
            self._record(connection, None, [letter.ref for letter in letters], "archived")
            _release_holds(connection, letters)
            self._audit(connection, "archive", selection.as_json(), len(letters), "archived")
        return len(letters)

    def export(
        self, selection: dl.Selection, path: Path, mask_fields: frozenset[str], raw: bool
    ) -> int:
        """The selection as JSON Lines: error, headers and payload (masked), and with ``raw``
        the key and value bytes (base64), which may carry what masking hides."""
        letters = self.select(selection)
        with path.open("w") as out:
            for letter in letters:
                kind, payload = dl.payload(letter, self.registry)
                out.write(json.dumps(export_line(letter, kind, payload, mask_fields, raw)) + "\n")
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            self._audit(connection, "export", selection.as_json(), len(letters), f"to {path}")
        return len(letters)

    # --- jobs ----------------------------------------------------------------------------------

    def job(self, job_id: uuid.UUID) -> Job:
        jobs = self.jobs(job_id)
        if not jobs:
            raise OperationRefused(f"no replay job {job_id}")
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
            raise OperationRefused(f"job {job_id} is {job.status}; only a running job cancels")
        with psycopg.connect(self.dsn, autocommit=True) as connection:
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
            self._audit(connection, "cancel", {"job": str(job_id)}, 0, "requested", job_id)
        return self.job(job_id)

    # --- rewinding a consumer group --------------------------------------------------------------

    def rewind(
        self, consumer: str, *, when: datetime | None, offset: int | None, dry_run: bool
    ) -> dict[tuple[str, int], int]:
        """Move ``consumer``'s committed offsets on its input topics back to ``when`` (or to
        ``offset`` on every partition). Refused while the group has live members: they would
        overwrite it with their own commits."""
        admin = AdminClient(self.kafka_config)
        described = admin.describe_consumer_groups([consumer])[consumer].result()
        if described.members:
            raise OperationRefused(
                f"consumer group {consumer} has {len(described.members)} live member(s); "
                "stop the service first"
            )
        inputs = [topic.name for topic in self.catalog.consumed_by(consumer)]
        positions = self._positions(inputs, when, offset)
        if not dry_run:
            partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
            future = admin.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(consumer, partitions)]
            )[consumer]
            future.result()
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            self._audit(
                connection,
                "rewind",
                {
                    "consumer": consumer,
                    "from": when.isoformat() if when else offset,
                    "topics": inputs,
                },
                len(positions),
                "dry run" if dry_run else "offsets moved",
            )
        return positions

    def _positions(
        self, topics: Sequence[str], when: datetime | None, offset: int | None
    ) -> dict[tuple[str, int], int]:
        consumer = Consumer({**self.kafka_config, "group.id": f"revsync-ops-{uuid.uuid4()}"})
        try:
            metadata = consumer.list_topics(timeout=10).topics
            wanted = [
                TopicPartition(
                    topic, partition, int(when.timestamp() * 1000) if when else (offset or 0)
                )
                for topic in topics
                for partition in metadata[topic].partitions
            ]
            if when is None:
                return {(tp.topic, tp.partition): tp.offset for tp in wanted}
            found = consumer.offsets_for_times(wanted, timeout=10)
            positions = {}
            for tp in found:
                if tp.offset < 0:  # nothing at or after the time: the end
                    tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
                positions[(tp.topic, tp.partition)] = tp.offset
            return positions
        finally:
            consumer.close()

    # --- bookkeeping ---------------------------------------------------------------------------

    def _record(
        self,
        connection: psycopg.Connection[Any],
        job_id: uuid.UUID | None,
        refs: Iterable[str],
        state: str,
    ) -> None:
        rows = [(*_coordinates(ref), state, job_id) for ref in refs]
        if rows:
            connection.cursor().executemany(
                'INSERT INTO revsync_dlt_ledger (dlt_topic, partition, "offset", state, job_id) '
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )

    def _archive_rows(
        self, connection: psycopg.Connection[Any], letters: Sequence[dl.DeadLetter]
    ) -> None:
        connection.cursor().executemany(
            'INSERT INTO revsync_dlt_archive (dlt_topic, partition, "offset", key, value, '
            "headers, timestamp_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    letter.dlt_topic,
                    letter.partition,
                    letter.offset,
                    letter.key,
                    letter.value,
                    Jsonb(h.to_json(letter.headers)),
                    letter.timestamp_ms,
                )
                for letter in letters
            ],
        )

    def _audit(
        self,
        connection: psycopg.Connection[Any],
        action: str,
        selection: dict[str, Any],
        count: int,
        outcome: str,
        job_id: uuid.UUID | None = None,
    ) -> None:
        connection.execute(
            "INSERT INTO revsync_audit (actor, action, filter, count, outcome, job_id) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (self.actor, action, Jsonb(selection), count, outcome, job_id),
        )

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


def _release_holds(connection: psycopg.Connection[Any], letters: Iterable[dl.DeadLetter]) -> None:
    """Letters dealt with for good no longer hold their keys: what the keys parked is
    handled next, in order."""
    for letter in letters:
        if letter.key is not None:
            release(connection, letter.consumer, letter.key, letter.source_topic, letter.blocker)


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


def grouped(letters: Iterable[dl.DeadLetter]) -> dict[str, Counter[str]]:
    """Counts by error class, source topic, region and product line."""
    groups: dict[str, Counter[str]] = {
        "error class": Counter(),
        "source topic": Counter(),
        "region": Counter(),
        "product line": Counter(),
    }
    for letter in letters:
        groups["error class"][letter.error_class] += 1
        groups["source topic"][letter.source_topic] += 1
        groups["region"][letter.region or "-"] += 1
        for line in letter.product_lines or ("-",):
            groups["product line"][line] += 1
    return groups


def export_line(
    letter: dl.DeadLetter, kind: str, payload: Any, mask_fields: frozenset[str], raw: bool
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ref": letter.ref,
        "consumer": letter.consumer,
        "state": letter.state,
        "key": letter.key_text,
        "error_class": letter.error_class,
        "error": letter.header(h.ERROR_MESSAGE),
        "headers": dict(dl.masked_headers(letter.headers)),
        "payload_kind": kind,
        "payload": dl.masked(payload, mask_fields),
    }
    if raw:
        line["raw_key"] = base64.b64encode(letter.key or b"").decode()
        line["raw_value"] = base64.b64encode(letter.value or b"").decode()
    return line


def _coordinates(ref: str) -> tuple[str, int, int]:
    topic, partition, offset = ref.rsplit(":", 2)
    return topic, int(partition), int(offset)
