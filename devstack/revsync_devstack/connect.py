"""Kafka Connect with Debezium's PostgreSQL connector, publishing an outbox table of revsync's
shape through Debezium's outbox event router: what the relay benchmark measures revsync's
relay against, and what the Debezium outbox test runs.

Both come from Maven Central through ``deploy/local/connect/pom.xml``, resolved on first use
(never by ``stack up``). The worker runs standalone, in a process of its own, its offsets in a
file; the connector reads one publication through one replication slot, both dropped when the
worker stops (a slot left behind would hold the server's WAL for ever).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from revsync.runtime.relay import OutboxTable
from revsync_devstack.secure import write_private
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import (
    DEPLOY_LOCAL,
    Component,
    StackError,
    resolve_from_maven,
    wait_until_healthy,
)

CONNECT_POM = DEPLOY_LOCAL / "connect" / "pom.xml"
CLASSPATH = "connect.classpath"
WORKER = "org.apache.kafka.connect.cli.ConnectStandalone"
ROUTED = "${routedByValue}"
"""The event router's placeholder for the value of the routing column."""


@dataclass(frozen=True)
class OutboxConnector:
    """Debezium's connector for one outbox table: each inserted row published as revsync's
    relay publishes it, to the topic its row names (or the relay's route over its aggregate
    type), keyed by its aggregate id, its payload's bytes unchanged.

    Headers: the event id and type as ``ce_id`` and ``ce_type`` (from their columns), the
    content type as a constant, and the router's own ``id``. The router cannot expand the JSON
    headers column into Kafka headers, so ``ce_source``, ``ce_time`` and ``traceparent`` do not
    reach Kafka; nor does ``ce_specversion``, which Kafka's InsertHeader would write as ``1``
    (it parses the literal ``1.0`` as a number). The publication carries inserts alone, and
    with an owner column only the owner's rows, as the owner's relay would publish them.
    """

    name: str
    """The connector's, and its replication slot's and publication's: lower-case letters,
    digits and underscores."""
    table: OutboxTable
    postgres_dsn: str

    @property
    def qualified_table(self) -> tuple[str, str]:
        schema, _, table = self.table.table.rpartition(".")
        return schema or "public", table

    def properties(self) -> dict[str, str]:
        t = self.table
        database = conninfo_to_dict(self.postgres_dsn)
        if t.topic_column:
            route_by, replacement = t.topic_column, ROUTED
        else:
            route_by, replacement = t.aggregate_type_column, t.route.format(aggregatetype=ROUTED)
        connection = {
            "database.hostname": str(database.get("host", "127.0.0.1")),
            "database.port": str(database.get("port", 5432)),
            "database.user": str(database["user"]),
            "database.dbname": str(database["dbname"]),
        }
        if database.get("password"):
            connection["database.password"] = str(database["password"])
        return {
            "name": self.name,
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            **connection,
            "topic.prefix": self.name,
            "plugin.name": "pgoutput",
            "slot.name": self.name,
            "publication.name": self.name,
            "publication.autocreate.mode": "disabled",
            "table.include.list": ".".join(self.qualified_table),
            # Rows committed from the slot's creation on; none from before.
            "snapshot.mode": "no_data",
            # Without Debezium's own context headers (connector name, task, run id).
            "extended.headers.enabled": "false",
            # Debezium hands a batch to Connect once it is full or this long after its first
            # change (500 ms by default): at a light load each row would wait that long.
            "poll.interval.ms": "10",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            "transforms": "outbox,contenttype",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": t.id_column,
            "transforms.outbox.table.field.event.key": t.aggregate_id_column,
            "transforms.outbox.table.field.event.payload": t.payload_column,
            "transforms.outbox.route.by.field": route_by,
            "transforms.outbox.route.topic.replacement": replacement,
            "transforms.outbox.table.fields.additional.placement": (
                f"{t.id_column}:header:ce_id,{t.type_column}:header:ce_type"
            ),
            "transforms.contenttype.type": "org.apache.kafka.connect.transforms.InsertHeader",
            "transforms.contenttype.header": "content-type",
            "transforms.contenttype.value.literal": "application/avro",
        }

    def publication(self) -> sql.Composed:
        """The publication the connector reads: inserts only (the relay's deletes are no
        events), and only the owner's rows where the table has owners."""
        t = self.table
        owner = (
            sql.SQL(" WHERE ({} = {})").format(sql.Identifier(t.owner_column), sql.Literal(t.owner))
            if t.owner_column
            else sql.SQL("")
        )
        return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{} WITH (publish = 'insert')").format(
            sql.Identifier(self.name), sql.Identifier(*self.qualified_table), owner
        )


class KafkaConnect(Component):
    """A standalone Connect worker running one :class:`OutboxConnector`; healthy once the
    connector's task runs and its slot streams, so every row committed after start-up is
    published. As a context manager: started on entry, stopped on exit (slot and publication
    dropped)."""

    def __init__(
        self,
        settings: StackSettings,
        connector: OutboxConnector,
        bootstrap_servers: str,
        port: int,
        heap: str = "512m",
    ) -> None:
        self.name = f"connect-{connector.name}"
        super().__init__(settings)
        self.connector = connector
        self.bootstrap_servers = bootstrap_servers
        self.port = port
        self.heap = heap

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/connectors/{self.connector.name}"

    def ports(self) -> dict[str, int]:
        return {"rest": self.port}

    def pid(self) -> int | None:
        return self._java_pid(WORKER)

    def prepare(self) -> None:
        """The classpath from Maven; a fresh publication, slot and offsets file."""
        resolve_from_maven(
            self.settings, CONNECT_POM, [self.settings.dir / CLASSPATH], "Kafka Connect"
        )
        self._drop_slot_and_publication()
        with self._database() as database:
            level = database.execute("SHOW wal_level").fetchone()
            if level is None or level[0] != "logical":
                raise StackError(
                    f"{self.name}: PostgreSQL runs with wal_level={level and level[0]}, and "
                    "Debezium needs logical; restart the stack (revsync stack down, then up) "
                    "to start it with logical decoding"
                )
            database.execute(self.connector.publication())
        self.home.mkdir(parents=True, exist_ok=True)
        offsets = self.home / "offsets"
        offsets.unlink(missing_ok=True)
        worker = {
            "bootstrap.servers": self.bootstrap_servers,
            "listeners": f"http://127.0.0.1:{self.port}",
            "offset.storage.file.filename": str(offsets),
            "offset.flush.interval.ms": "1000",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        }
        for name, properties in (
            ("worker", worker),
            ("connector", self.connector.properties()),
        ):
            # Owner-only: the connector's holds the database password where there is one.
            text = "".join(f"{key}={value}\n" for key, value in properties.items())
            write_private(self.home / f"{name}.properties", text.encode())

    def spawn(self) -> None:
        classpath = (self.settings.dir / CLASSPATH).read_text().strip()
        self._spawn_java(
            [
                "java",
                "-Xms256m",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={DEPLOY_LOCAL / 'connect' / 'log4j2.properties'}",
                "-cp",
                classpath,
                WORKER,
                str(self.home / "worker.properties"),
                str(self.home / "connector.properties"),
            ]
        )

    def healthy(self) -> bool:
        """The task runs and the slot streams; a failed task raises, naming its error."""
        status = self._status()
        if status is None:
            return False
        tasks = status.get("tasks", [])
        for task in tasks:
            if task.get("state") == "FAILED":
                trace = str(task.get("trace", "")).splitlines()[:3]
                raise StackError(f"{self.name}: the connector's task failed: {' / '.join(trace)}")
        if not tasks or any(task.get("state") != "RUNNING" for task in tasks):
            return False
        with self._database() as database:
            row = database.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                (self.connector.name,),
            ).fetchone()
        return bool(row and row[0])

    def __enter__(self) -> KafkaConnect:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.pid() is not None:
            raise StackError(f"{self.name} is running already (pid {self.pid()})")
        self.prepare()
        self.spawn()
        try:
            wait_until_healthy(self, self.settings.start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker, then drop the slot and the publication."""
        super().stop(timeout_s)
        self._drop_slot_and_publication()

    def pause(self) -> None:
        """The connector stops publishing; its slot keeps what is committed meanwhile."""
        self._set_state("pause", "PAUSED")

    def resume(self) -> None:
        self._set_state("resume", "RUNNING")

    def _set_state(self, verb: str, state: str) -> None:
        httpx.put(f"{self.url}/{verb}", timeout=10).raise_for_status()
        deadline = time.monotonic() + 30
        while True:
            status = self._status() or {}
            tasks = status.get("tasks", [])
            if tasks and all(task.get("state") == state for task in tasks):
                return
            if time.monotonic() > deadline:
                raise StackError(f"{self.name}: the connector is not {state} after 30s: {status}")
            time.sleep(0.05)

    def _status(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.url}/status", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def _database(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.connector.postgres_dsn, autocommit=True, connect_timeout=10)

    def _drop_slot_and_publication(self) -> None:
        """What an earlier worker may have left too; a slot still held by a stream that has
        not noticed its worker's end is let go first."""
        slot = self.connector.name
        with self._database() as database:
            database.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (slot,),
            )
            deadline = time.monotonic() + 10
            while True:
                row = database.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
                if row is None:
                    break
                if not row[0]:
                    database.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"{self.name}: replication slot {slot} is still in use")
                time.sleep(0.1)
            database.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(slot)))
