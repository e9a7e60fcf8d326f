"""The relay that publishes any Debezium-compatible outbox table (revsync's own, or an ERP's)
to Kafka, in order per key, with one leader among its replicas."""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from psycopg import sql

from revsync.errors import described
from revsync.runtime import headers as h
from revsync.runtime.observability import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISHED,
    Liveness,
)
from revsync.runtime.outages import Outages
from revsync.runtime.outbox import OUTBOX_CHANNEL

log = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 30
STOP_CHECK_S = 0.5
"""How often a relay waiting for rows looks whether it was asked to stop."""


@dataclass(frozen=True)
class OutboxRow:
    """One unpublished row, as a :data:`RowEncoder` sees it."""

    id: Any
    aggregate_type: str
    aggregate_id: str | None
    type: str
    payload: Any
    topic: str | None
    headers: h.Headers
    created_at: datetime | None


RowEncoder = Callable[[OutboxRow], tuple[str, bytes, h.Headers]]
"""Turns a row whose payload is not ready to publish (an ERP's own JSON) into its topic,
value bytes and headers; raises if the row cannot be published."""


@dataclass(frozen=True)
class OutboxTable:
    """Where an outbox lives and what its columns are called (Debezium's names by default).

    ``topic_column`` routes each row; without one, ``route`` is a template over the row's
    aggregatetype (Debezium's ``outbox.event.{aggregatetype}``). ``published_column`` marks
    published rows; without one they are deleted.
    """

    table: str = "revsync_outbox"
    """Optionally schema-qualified: ``erp.outbox``."""
    id_column: str = "id"
    aggregate_type_column: str = "aggregatetype"
    aggregate_id_column: str = "aggregateid"
    type_column: str = "type"
    payload_column: str = "payload"
    seq_column: str = "seq"
    topic_column: str | None = "topic"
    headers_column: str | None = "headers"
    created_column: str | None = "created_at"
    published_column: str | None = None
    route: str = "outbox.event.{aggregatetype}"
    notify_channel: str | None = OUTBOX_CHANNEL
    owner_column: str | None = None
    owner: str | None = None
    """With ``owner_column``: only the rows of this owner (revsync's outbox: one service's
    rows, published as that service)."""

    def unpublished(self) -> sql.Composable:
        """The condition of a row not yet published (and this relay's to publish)."""
        t = self
        pending: sql.Composable = (
            sql.SQL("{} IS NULL").format(sql.Identifier(t.published_column))
            if t.published_column
            else sql.SQL("true")
        )
        if t.owner_column:
            pending = sql.SQL("{} AND {} = {}").format(
                pending, sql.Identifier(t.owner_column), sql.Literal(t.owner)
            )
        return pending

    @property
    def lock_name(self) -> str:
        """One relay leads per outbox (per owner of its rows)."""
        return f"revsync.outbox.{self.table}" + (f".{self.owner}" if self.owner_column else "")

    def statements(self) -> tuple[sql.Composed, sql.Composed]:
        """The next unpublished rows in sequence order, locked, skipping the keys set aside;
        and the statement that marks (or deletes) rows as published."""
        t = self
        column = sql.Identifier
        table = sql.Identifier(*t.table.split("."))
        optional = [
            column(t.topic_column) if t.topic_column else sql.SQL("NULL"),
            # As text, parsed as the row is published: cheaper than the driver's JSON loader.
            sql.SQL("{}::text").format(column(t.headers_column))
            if t.headers_column
            else sql.SQL("NULL"),
            column(t.created_column) if t.created_column else sql.SQL("NULL"),
        ]
        select = sql.SQL(
            "SELECT {id}, {aggregate_type}, {aggregate_id}, {payload}, {topic}, {headers}, "
            "{type}, {created} FROM {table} WHERE {pending} "
            "AND NOT (coalesce({aggregate_id}::text, '') = ANY(%s::text[])) "
            "ORDER BY {seq} LIMIT %s FOR UPDATE"
        ).format(
            id=column(t.id_column),
            aggregate_type=column(t.aggregate_type_column),
            aggregate_id=column(t.aggregate_id_column),
            payload=column(t.payload_column),
            topic=optional[0],
            headers=optional[1],
            type=column(t.type_column),
            created=optional[2],
            table=table,
            pending=self.unpublished(),
            seq=column(t.seq_column),
        )
        if t.published_column:
            mark = sql.SQL("UPDATE {table} SET {published} = now() WHERE {id} = ANY(%s)").format(
                table=table, published=column(t.published_column), id=column(t.id_column)
            )
        else:
            mark = sql.SQL("DELETE FROM {table} WHERE {id} = ANY(%s)").format(
                table=table, id=column(t.id_column)
            )
        return select, mark


class OutboxRelay:
    """Publishes an outbox in sequence order with an idempotent producer.

    Rows are found by their unpublished state, never by a high-water mark, so a row that
    commits late with a lower sequence number is still published. Replicas elect one leader
    through a PostgreSQL advisory lock; the others wait and take over if it goes away, so
    normal operation publishes each row once and a crash at worst republishes (same event id).
    Per-key order is commit order where writers of one aggregate serialise, as ERPs do.
    """

    def __init__(
        self,
        *,
        dsn: str,
        kafka_config: dict[str, Any],
        table: OutboxTable = OutboxTable(),
        batch_size: int = 2000,
        poll_interval_s: float = 1.0,
        blocked_retry_s: float = 30.0,
        delivery_timeout_ms: int = 10_000,
        encoder: RowEncoder | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        """Rows are published as they are, unless an ``encoder`` translates them; a row it
        refuses is set aside like an undelivered one, with its key. A batch takes up to
        ``batch_size`` rows: a backlog drains in few round trips, while at a light load a
        batch holds what has come."""
        self.table = table
        self.encoder = encoder
        self.liveness = liveness or Liveness(timeout_s=60)
        """The process's, for a relay deployable; its own, beside a consumer loop (whose
        heartbeat it must not stand in for)."""
        self.blocked_retry_s = blocked_retry_s
        self._blocked: dict[str, float] = {}
        self._failed: dict[str, KafkaError] = {}
        """The batch's keys with a row not delivered, and why."""
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._dsn = dsn
        self._producer = Producer(
            {
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # Only failures are reported: once flushed, a row with no report is delivered,
                # and no callback runs for each of the others.
                "delivery.report.only.error": True,
                "on_delivery": self._undelivered,
                # A row that cannot be delivered is reported within this, not after minutes.
                "message.timeout.ms": delivery_timeout_ms,
                "topic.metadata.propagation.max.ms": min(delivery_timeout_ms, 30_000),
            }
        )
        self._lock_id = zlib.crc32(table.lock_name.encode())
        self._stopping = threading.Event()
        self.outages = Outages(self.liveness, self._stopping, keep_group=lambda: None)
        self._select, self._mark = table.statements()

    @property
    def name(self) -> str:
        return self.table.table

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Publish until stopped (or idle as leader for ``max_idle_s``). A lost PostgreSQL is
        waited out with backoff, not ready meanwhile; leadership is taken again after it."""
        self.liveness.ready = True
        while not self._stopping.is_set():
            try:
                self._publish_until_stopped(max_idle_s)
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self.outages.wait_out(error)
        self._producer.flush(FLUSH_TIMEOUT_S)

    def _publish_until_stopped(self, max_idle_s: float | None) -> None:
        with (
            psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as control,
            psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as work,
        ):
            # The next rows in sequence order come from walking the seq index: statistics
            # taken while the outbox was nearly empty, as it usually is, would have the
            # planner sort the whole backlog for every batch. And a batch's commit does not
            # wait for the WAL's flush: a deletion (or mark) lost with a crash of PostgreSQL
            # only publishes its rows again, with the same event ids.
            work.execute("SET enable_sort = off")
            work.execute("SET synchronous_commit = off")
            if self.table.notify_channel:
                control.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(self.table.notify_channel))
                )
            self.outages.succeeded()
            leader = False
            idle_since = time.monotonic()
            while not self._stopping.is_set():
                self.liveness.beat()
                if not leader:
                    leader = self._try_lead(control)
                    if not leader:
                        self._stopping.wait(self.poll_interval_s)
                        continue
                    log.info("outbox %s: this relay is the leader", self.name)
                published = self.publish_batch(work)
                if published:
                    idle_since = time.monotonic()
                    continue
                self._report_backlog(work)
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                self._wait_for_rows(control)

    def _try_lead(self, control: psycopg.Connection[Any]) -> bool:
        """Session-level lock: held until this connection ends, then another replica leads."""
        row = control.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_id,)).fetchone()
        return bool(row and row[0])

    def publish_batch(self, connection: psycopg.Connection[Any]) -> int:
        """Publish the next unpublished rows in sequence order; returns how many went out.

        A key whose row could not be delivered (a missing topic, a broker refusal) is set
        aside for ``blocked_retry_s``: its later rows wait, so none overtakes it, while every
        other key flows on. One bad row never stalls the outbox.
        """
        now = time.monotonic()
        self._blocked = {key: until for key, until in self._blocked.items() if until > now}
        # Rows in binary: the ids and the payload's bytes as they are, no text to parse.
        with connection.transaction(), connection.cursor(binary=True) as cursor:
            rows = cursor.execute(self._select, (list(self._blocked), self.batch_size)).fetchall()
            if not rows:
                return 0
            self._failed = {}
            for row in rows:
                if (row[2] or "") not in self._failed:  # none overtakes a refused row
                    self._send_row(row)
            if self._producer.flush(FLUSH_TIMEOUT_S):
                # Still undelivered, and the producer does not say which: every key waits.
                self._failed |= {row[2] or "": KafkaError(KafkaError._TIMED_OUT) for row in rows}
            published = self._published_ids(rows)
            connection.execute(self._mark, (published,))
        OUTBOX_PUBLISHED.labels(self.name).inc(len(published))
        return len(published)

    def _send_row(self, row: tuple[Any, ...]) -> None:
        """Hand one row to the producer. One refused on the spot (by the encoder or the
        producer) fails its key at once; one the broker refuses, when its report comes."""
        row_id, aggregate_type, key, payload, topic, headers, kind, created = row
        destination = topic or self.table.route.format(aggregatetype=aggregate_type)
        pairs = h.from_json(json.loads(headers) if headers else [])
        if self.encoder is not None:
            try:
                destination, payload, pairs = self.encoder(
                    OutboxRow(row_id, aggregate_type, key, kind, payload, topic, pairs, created)
                )
            except Exception as error:  # this row and its key wait; the others go on
                refusal = described(error)  # logged at each try: never the row's values
                log.error("outbox %s: row %s not publishable: %s", self.name, row_id, refusal)
                self._failed[key or ""] = KafkaError(KafkaError._BAD_MSG, refusal)
                return
        while True:
            try:
                self._producer.produce(destination, key=key, value=payload, headers=pairs)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as refused:
                # Refused locally (too large, bad topic name): a failed delivery of this row.
                self._failed[key or ""] = refused.args[0]
                return

    def _undelivered(self, error: KafkaError | None, message: Message) -> None:
        """The producer's report of a row it could not deliver (it reports no other)."""
        if error is not None:
            self._failed.setdefault((message.key() or b"").decode(), error)

    def _published_ids(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        """Ids delivered: a key with a row not delivered waits whole, so none overtakes it
        (its rows delivered before that one go out again, with the same event ids)."""
        published = [row[0] for row in rows if (row[2] or "") not in self._failed]
        retry_at = time.monotonic() + self.blocked_retry_s
        for key, error in self._failed.items():
            self._blocked[key] = retry_at
            log.warning(
                "outbox %s: key %s not delivered (%s); retrying in %.0fs",
                self.name,
                key,
                error,
                self.blocked_retry_s,
            )
        return published

    def _wait_for_rows(self, control: psycopg.Connection[Any]) -> None:
        """Until a NOTIFY (at once), the poll interval (the fallback) or a stop (within
        :data:`STOP_CHECK_S`, however long the interval)."""
        if not self.table.notify_channel:
            self._stopping.wait(self.poll_interval_s)
            return
        deadline = time.monotonic() + self.poll_interval_s
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in control.notifies(timeout=min(left, STOP_CHECK_S), stop_after=1):
                return

    def _report_backlog(self, connection: psycopg.Connection[Any]) -> None:
        t = self.table
        pending = self.table.unpublished()
        oldest = (
            sql.SQL("extract(epoch FROM now() - min({}))").format(sql.Identifier(t.created_column))
            if t.created_column
            else sql.SQL("0")
        )
        query = sql.SQL(
            "SELECT count(*), coalesce({oldest}, 0) FROM {table} WHERE {pending}"
        ).format(oldest=oldest, table=sql.Identifier(*t.table.split(".")), pending=pending)
        with connection.transaction():
            count, age = connection.execute(query).fetchone()  # type: ignore[misc]
        OUTBOX_BACKLOG.labels(self.name).set(count)
        OUTBOX_OLDEST_AGE.labels(self.name).set(float(age))
