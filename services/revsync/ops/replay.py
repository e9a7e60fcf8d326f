"""Replay jobs: dead letters sent back to their consumers, at a rate, resumable, cancellable.

A replay sends each selected dead letter to its own consumer's replay topic
(``revsync.<consumer>.replay``), which no other consumer reads, with its original
coordinates, so a success releases the key it held, and work already done is an inbox
no-op. Records go out without waiting for each other; every tenth of a second, and at the
end, what Kafka took since is written down in the ledger in one transaction, while the next
records go. A replay interrupted between the two is resumed by reading back, from the replay
topics, what the job had already sent. A record replayed ``max_replays`` times is quarantined
instead.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from psycopg.types.json import Jsonb

from revsync.contracts.catalog import Catalog
from revsync.contracts.topics import watermarks
from revsync.ops import dead_letters as dl
from revsync.ops import ledger
from revsync.runtime import headers as h

STALE_AFTER = timedelta(seconds=30)
"""A running job whose heartbeat is older than this was interrupted."""
SETTLE_S = 0.1
"""How often a running replay writes down what Kafka took, reports progress and heeds a
cancel."""


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
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: ``select`` (reading and matching the dead letters), ``send``
    (to Kafka, at the rate asked, waiting for its answers) and ``ledger`` (waiting for the
    ledger's writes, which otherwise run while records are sent)."""


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


REPLAY_HEADERS = (h.REPLAY_ID, h.REPLAY_COUNT, h.REPLAY_SOURCE)
"""Headers a replay sets anew on each record it sends."""


class _Sender:
    """One job's producer to the replay topics, and what Kafka took and refused since."""

    def __init__(self, catalog: Catalog, kafka_config: dict[str, Any], job_id: uuid.UUID) -> None:
        self._producer = Producer(
            {**kafka_config, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        self._job_id = str(job_id).encode()
        self._topics = {name: catalog.replay_topic(name) for name in catalog.consumers}
        self._taken: list[str] = []
        self._refused: list[KafkaError] = []

    def send(self, letter: dl.DeadLetter, replay_count: int) -> None:
        """Send ``letter``, replayed ``replay_count`` times before, to its consumer's replay
        topic without waiting: Kafka's answer comes with :meth:`taken`."""
        ref = letter.ref
        headers = [(name, value) for name, value in letter.headers if name not in REPLAY_HEADERS]
        headers += [
            (h.REPLAY_ID, self._job_id),
            (h.REPLAY_COUNT, str(replay_count + 1).encode()),
            (h.REPLAY_SOURCE, ref.encode()),
        ]

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is None:
                self._taken.append(ref)
            else:
                self._refused.append(error)

        while True:
            try:
                self._producer.produce(
                    self._topics[letter.consumer],
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # the producer's queue is full: let Kafka's answers in
                self._producer.poll(0.05)

    def taken(self, *, wait_s: float | None = 0.0) -> list[str]:
        """The refs of the letters Kafka took since the last call, after waiting up to
        ``wait_s`` for the answers still to come; None: until every record sent has its
        answer (the producer gives up on one after its ``message.timeout.ms``, refusing it)."""
        if wait_s is None:
            self._producer.flush()
        elif wait_s > 0:
            self._producer.flush(wait_s)
        else:
            self._producer.poll(0)  # flush(0) returns at once, serving no answer
        taken, self._taken = self._taken, []
        return taken

    @property
    def in_flight(self) -> int:
        """Records sent whose answer has not come yet."""
        return len(self._producer)

    def raise_refused(self) -> None:
        """Fail on the first record Kafka refused, if any."""
        if self._refused:
            raise KafkaException(self._refused[0])


class _LedgerWriter:
    """Writes down a job's batches on a thread of its own, so that one batch is written while
    the next is sent: one at a time, in order, each in one transaction with the job's counts.
    The job's report counts what is written."""

    def __init__(self, connection: psycopg.Connection[Any], report: ReplayReport) -> None:
        self._connection = connection
        self._report = report
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-ledger")
        self._writing: Future[tuple[int, int, bool]] | None = None
        report.seconds.setdefault("ledger", 0.0)

    def write(self, sent: list[str], quarantined: list[dl.DeadLetter]) -> None:
        """Start writing down ``sent`` (the refs of the letters Kafka took) and the letters
        ``quarantined``; :meth:`wait` for the batch before first."""
        assert self._writing is None, "one batch at a time"
        self._writing = self._thread.submit(
            self._write,
            sent,
            quarantined,
            self._report.moved + len(sent),
            self._report.quarantined + len(quarantined),
        )

    def wait(self) -> bool:
        """Wait for the batch being written, if any: whether an operator has asked to cancel
        the job. Raises what writing it raised."""
        if self._writing is None:
            return False
        started = time.perf_counter()
        try:
            moved, quarantined, cancel_requested = self._writing.result()
        finally:
            self._writing = None
            self._report.seconds["ledger"] += time.perf_counter() - started
        self._report.moved, self._report.quarantined = moved, quarantined
        return cancel_requested

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _write(
        self, sent: list[str], quarantined: list[dl.DeadLetter], moved: int, quarantined_total: int
    ) -> tuple[int, int, bool]:
        connection, job_id = self._connection, self._report.job_id
        with connection.transaction():
            ledger.record(connection, job_id, sent, "replayed")
            if quarantined:
                ledger.archive(connection, quarantined)
                ledger.record(
                    connection, job_id, [letter.ref for letter in quarantined], "quarantined"
                )
                ledger.release_holds(connection, quarantined)
            row = connection.execute(
                "UPDATE revsync_replay_jobs SET moved = %s, quarantined = %s, updated_at = now() "
                "WHERE id = %s RETURNING cancel_requested",
                (moved, quarantined_total, job_id),
            ).fetchone()
        return moved, quarantined_total, bool(row and row[0])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while a replay runs: its tens of thousands of letters
    (a list of headers each, every header a tuple) make no cycles, reference counting frees
    them, and the collector would otherwise rescan the whole heap several times over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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

    @_collector_paused()
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
        started = time.perf_counter()
        letters = self._select(selection)
        selected_s = time.perf_counter() - started
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
        report = ReplayReport(job_id, len(letters), seconds={"select": selected_s})
        return self._run(report, letters, rate_per_s, max_replays, on_progress, stop)

    @_collector_paused()
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
        started = time.perf_counter()
        remaining = self._select(selection_from(job.filter))
        report = ReplayReport(
            job_id,
            job.total,
            already_sent=len(sent),
            seconds={"select": time.perf_counter() - started},
        )
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
        started = time.perf_counter()
        limiter = RateLimiter(rate_per_s)
        sender = _Sender(self.catalog, self.kafka_config, report.job_id)
        quarantined: list[dl.DeadLetter] = []
        status = "completed"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            writer = _LedgerWriter(connection, report)

            def settle(wait_s: float | None) -> bool:
                """Start writing down what Kafka took and the letters quarantined, once the
                batch before is written; whether to stop (cancelled). Fails on what Kafka
                refused."""
                cancel_requested = writer.wait()
                on_progress(report)
                sender.raise_refused()
                writer.write(sender.taken(wait_s=wait_s), quarantined[:])
                quarantined.clear()
                return cancel_requested or (stop is not None and stop.is_set())

            try:
                next_settle = time.monotonic() + SETTLE_S
                for letter in letters:
                    if time.monotonic() >= next_settle:
                        if settle(wait_s=0):
                            status = "cancelled"
                            break
                        next_settle = time.monotonic() + SETTLE_S
                    replay_count = letter.replay_count
                    if replay_count >= max_replays:
                        # The loop guard: replayed often enough, it failed every time.
                        quarantined.append(letter)
                        continue
                    limiter.acquire()
                    sender.send(letter, replay_count)
                # The last answers are written down as they come, not all at the end.
                while sender.in_flight:
                    settle(wait_s=SETTLE_S)
                settle(wait_s=None)
                writer.wait()
                sender.raise_refused()
            except BaseException as error:
                # Interrupted (Ctrl-C), the job is resumable: revsync dlt replay --resume JOB.
                # Failed, what Kafka took before the failure is written down, so that no later
                # job sends it again; if even that fails, the job is left to --resume, which
                # reads back from the replay topics what it sent.
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                try:
                    writer.wait()
                    if status == "failed":
                        writer.write(sender.taken(wait_s=None), quarantined)
                        writer.wait()
                except Exception:
                    status = "interrupted"
                raise
            finally:
                writer.close()
                report.status = status
                report.seconds["send"] = (
                    time.perf_counter() - started - report.seconds.get("ledger", 0.0)
                )
                self._finish(connection, report, status)
                on_progress(report)
        return report

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
        consumer = Consumer(
            {**self.kafka_config, **dl.AT_ONCE, "group.id": f"revsync-ops-{uuid.uuid4()}"}
        )
        try:
            topics = [self.catalog.replay_topic(name) for name in self.catalog.consumers]
            found = dl.partitions_of(consumer, topics, timeout_s=10)
            missing = [topic for topic in topics if topic not in found]
            if missing:
                raise dl.OperationRefused(
                    f"replay topic {missing[0]} does not exist; run revsync topics apply"
                )
            return {
                topic: {
                    str(p): watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions
                }
                for topic, partitions in found.items()
            }
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
