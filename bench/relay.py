"""SCENARIO=relay: revsync's outbox relay against Debezium's outbox event router (its
PostgreSQL connector on Kafka Connect) publishing the same outbox table, on the same PostgreSQL
and broker in the same run.

The outbox is revsync's own table, made by revsync's DDL in a schema of its own
(``bench_relay.revsync_outbox``), and its rows are one service's as that service writes them:
a 500-byte payload in the Confluent wire format, CloudEvents headers and a trace. Each publisher
has a topic of its own whose broker stamps every record as it arrives (LogAppendTime), and in
turn:

- saturated: ``events`` rows written as fast as one writer can (500 rows a transaction) while
  it publishes; latency from each row's commit (taken as the commit returns) to its record's
  arrival on the topic, p50 and p99;
- light: 200 rows/s for 10 s, one row a transaction; the same latency;
- drain: ``events`` rows committed while it is stopped (the relay) or paused (the connector),
  then started: rows/s from the arrival of the backlog's first fifth to its last row.

Every run checks that each row arrived once and each key's rows in the order written.

revsync's relay runs in a process of its own as a service runs it (that service's rows, its
default batches, NOTIFY wake-ups) and deletes what it has published. Debezium reads the
inserts from the WAL through a publication of that service's rows and leaves the rows where
they are (its router ignores deletes): the bench empties the table after each of its runs.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Protocol

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from psycopg.types.json import Jsonb
from sandbox.harness import free_port

from bench.process_api import percentile
from bench.runtime import sample_order
from revsync.contracts.topics import await_topic
from revsync.runtime import headers as h
from revsync.runtime import outbox
from revsync.runtime.relay import OutboxRelay, OutboxTable
from revsync.settings import Settings
from revsync_devstack.connect import KafkaConnect, OutboxConnector
from revsync_devstack.settings import REPO_ROOT, StackSettings

SCHEMA = "bench_relay"
SERVICE = "order_sync"
TABLE = OutboxTable(table=f"{SCHEMA}.revsync_outbox", owner_column="service", owner=SERVICE)
CONNECTOR = "revsync_outbox_bench"
PARTITIONS = 6
KEYS = 2_000
PAYLOAD_BYTES = 500
ROWS_PER_TRANSACTION = 500
WARM_UP_ROWS = 5_000
LIGHT_ROWS_PER_S = 200
LIGHT_SECONDS = 10
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def run(settings: Settings, events: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    table = Outbox(settings)
    admin = AdminClient(settings.kafka_config())
    topics = {name: f"bench.relay-{tag}.{name}.v1" for name in ("revsync", "debezium")}
    # Stamped by the broker as each record arrives, whoever produced it.
    created = admin.create_topics(
        [
            NewTopic(topic, PARTITIONS, config={"message.timestamp.type": "LogAppendTime"})
            for topic in topics.values()
        ]
    )
    for topic, future in created.items():
        future.result(timeout=30)
        await_topic(admin, topic)
    table.create()
    try:
        with RelayProcess() as relay:
            revsync = measure(relay, table, settings, topics["revsync"], events)
        started = time.monotonic()
        connector = OutboxConnector(CONNECTOR, TABLE, settings.postgres_dsn.get_secret_value())
        connect = KafkaConnect(
            StackSettings.load(), connector, settings.bootstrap_servers, free_port()
        )
        with connect:
            start_s = time.monotonic() - started
            debezium = measure(connect, table, settings, topics["debezium"], events)
    finally:
        table.drop()
        for future in admin.delete_topics(list(topics.values())).values():
            future.result(timeout=30)
    figures: dict[str, Any] = {
        "rows": events,
        "payload_bytes": PAYLOAD_BYTES,
        "keys": KEYS,
        "light_rows_per_s": LIGHT_ROWS_PER_S,
        **{f"revsync_{name}": value for name, value in revsync.items()},
        **{f"debezium_{name}": value for name, value in debezium.items()},
        "debezium_start_s": round(start_s, 1),
        "throughput_ratio": round(revsync["rows_per_s"] / debezium["rows_per_s"], 2),
        "saturated_p99_ratio": round(
            revsync["saturated_p99_ms"] / max(debezium["saturated_p99_ms"], 1.0), 2
        ),
        "light_p99_ratio": round(revsync["light_p99_ms"] / max(debezium["light_p99_ms"], 1.0), 2),
    }
    figures["verdict"] = verdict(figures)
    return figures


def verdict(figures: dict[str, Any]) -> str:
    """ "passed", or what was lost, doubled or out of order, or which target was missed."""
    broken = [
        f"{name} {figures[name]}"
        for name in sorted(figures)
        if name.endswith(("_lost", "_doubled", "_out_of_order")) and figures[name]
    ]
    if figures["throughput_ratio"] < 1:
        broken.append(f"revsync publishes {figures['throughput_ratio']}x Debezium's rows/s")
    for run in ("saturated", "light"):
        if figures[f"revsync_{run}_p99_ms"] > figures[f"debezium_{run}_p99_ms"]:
            broken.append(f"revsync's p99 {run} is above Debezium's")
    return "; ".join(broken) or "passed"


class Publisher(Protocol):
    """Publishes the bench's outbox; rows committed while it is paused wait for it."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class RelayProcess:
    """revsync's relay in a process of its own, as a service's relay runs; paused, it is
    stopped."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RelayProcess:
        self.resume()
        return self

    def __exit__(self, *_: object) -> None:
        self.pause()

    def resume(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.relay"], cwd=REPO_ROOT)

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None


def measure(
    publisher: Publisher, table: Outbox, settings: Settings, topic: str, events: int
) -> dict[str, Any]:
    """The three runs of a running publisher."""
    arrivals = Arrivals(settings, topic)
    figures: dict[str, Any] = {}
    try:
        # Rows through first, so that no run times a publisher's start-up or warm-up.
        arrivals.expect(table.write(topic, WARM_UP_ROWS, ROWS_PER_TRANSACTION))
        saturated = table.write(topic, events, ROWS_PER_TRANSACTION)
        arrived = arrivals.expect(saturated)
        figures |= latency("saturated", saturated, arrived)
        figures["saturated_rows_per_s"] = round(
            events / ((max(arrived.values()) - min(saturated.values())) / 1000)
        )
        light = table.write(topic, LIGHT_ROWS_PER_S * LIGHT_SECONDS, 1, LIGHT_ROWS_PER_S)
        figures |= latency("light", light, arrivals.expect(light))
        publisher.pause()
        backlog = table.write(topic, events, ROWS_PER_TRANSACTION)
        publisher.resume()
        drained = arrivals.expect(backlog)
    finally:
        arrivals.close()
    # The steady rate, from the arrival of the backlog's first fifth to its last row: neither
    # the relay's process start nor what the connector decoded ahead while paused (up to its
    # queue, 8,192 changes) is timed.
    stamps = sorted(drained.values())
    skipped = len(stamps) // 5
    figures["rows_per_s"] = round(
        (len(stamps) - 1 - skipped) / max((stamps[-1] - stamps[skipped]) / 1000, 0.001)
    )
    return figures | arrivals.problems


def latency(run: str, committed: dict[str, float], arrived: dict[str, int]) -> dict[str, float]:
    waits = [arrived[row] - committed[row] for row in committed if row in arrived]
    return {
        f"{run}_p50_ms": round(percentile(waits, 0.50), 1),
        f"{run}_p99_ms": round(percentile(waits, 0.99), 1),
    }


class Outbox:
    """The bench's outbox (revsync's table, in a schema of its own) and one writer of it."""

    def __init__(self, settings: Settings) -> None:
        self.dsn = settings.postgres_dsn.get_secret_value()
        self.rng = random.Random(7)  # noqa: S311 - payload bytes, not a secret
        event = sample_order()
        self.headers = [
            (name, value)
            for name, value in outbox.cloud_event_headers(event, f"/revsync/{SERVICE}", TRACEPARENT)
            if name != "ce_id"
        ]
        self.event_type = event.envelope.event_type

    def create(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as database:
            database.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
            )
            database.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
            database.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
            database.execute(outbox.SCHEMA)

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as database:
            database.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))

    def write(
        self, topic: str, count: int, per_transaction: int, rows_per_s: float | None = None
    ) -> dict[str, float]:
        """``count`` rows for ``topic``, at ``rows_per_s`` or as fast as they go; when each
        row's transaction committed (epoch ms), by row id, in the order written. What the
        last run left behind goes first: Debezium leaves its rows (the relay deletes its own)."""
        table = sql.Identifier(*TABLE.table.split("."))
        insert = sql.SQL(
            "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, topic, headers, "
            "service) VALUES (%s, 'order', %s, %s, %s, %s, %s, %s)"
        ).format(table)
        committed: dict[str, float] = {}
        with psycopg.connect(self.dsn) as database:
            database.execute(sql.SQL("TRUNCATE {}").format(table))
            database.commit()
            started = time.monotonic()
            for first in range(0, count, per_transaction):
                if rows_per_s is not None:
                    time.sleep(max(started + first / rows_per_s - time.monotonic(), 0))
                rows = [self._row(topic) for _ in range(min(per_transaction, count - first))]
                with database.cursor() as cursor:
                    cursor.executemany(insert, rows)
                database.commit()
                now = time.time() * 1000
                committed |= {str(row[0]): now for row in rows}
        return committed

    def _row(self, topic: str) -> tuple[Any, ...]:
        row_id = uuid.uuid4()
        key = f"8015g{self.rng.randrange(KEYS):013d}"
        # The Confluent wire format: magic byte, schema id, then the Avro body.
        payload = b"\x00" + (17).to_bytes(4, "big") + self.rng.randbytes(PAYLOAD_BYTES - 5)
        headers = [("ce_id", str(row_id).encode()), *self.headers]
        return (row_id, key, self.event_type, payload, topic, Jsonb(h.to_json(headers)), SERVICE)


class Arrivals:
    """Reads a publisher's topic as rows are expected on it: when each arrived, and what
    arrived twice, never, or out of its key's order."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            settings.kafka_config(
                **{"group.id": f"bench-relay-{uuid.uuid4()}", "enable.auto.commit": False}
            )
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.problems = {"lost": 0, "doubled": 0, "out_of_order": 0}
        self.seen: set[str] = set()
        self.last_of_key: dict[bytes, tuple[int, int]] = {}
        self.order: dict[str, int] = {}

    def expect(self, rows: dict[str, float], timeout_s: float = 600) -> dict[str, int]:
        """Read until every one of ``rows`` has arrived (or time is up): arrival (epoch ms)
        by row id."""
        self.order = {row: index for index, row in enumerate(rows)}
        self.last_of_key = {}
        arrived: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(arrived) < len(rows) and time.monotonic() < deadline:
            for message in self.consumer.consume(1000, 0.2):
                if message.error() is not None:
                    continue
                row = h.get(message.headers(), "ce_id") or ""
                if row in self.seen or row not in self.order:
                    self.problems["doubled"] += 1
                    continue
                self.seen.add(row)
                arrived[row] = message.timestamp()[1]
                self._check_order(message.key() or b"", row, message.partition() or 0)
        self.problems["lost"] += len(rows) - len(arrived)
        return arrived

    def _check_order(self, key: bytes, row: str, partition: int) -> None:
        """Each key's rows in one partition, in the order they were written."""
        index = self.order.get(row, -1)
        last = self.last_of_key.get(key)
        if last is not None and (last[0] != partition or last[1] > index):
            self.problems["out_of_order"] += 1
        self.last_of_key[key] = (partition, index)

    def close(self) -> None:
        self.consumer.close()


def publish(settings: Settings) -> None:
    """The relay process: the relay as a service runs it beside its loop, until SIGTERM."""
    relay = OutboxRelay(
        dsn=settings.postgres_dsn.get_secret_value(),
        kafka_config=settings.kafka_config(),
        table=TABLE,
    )
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    relay.run()


if __name__ == "__main__":
    publish(Settings.load())
