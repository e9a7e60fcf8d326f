"""The real servers answer: an Avro event through Kafka and the registry, PostgreSQL, topics,
and `revsync stack` reporting, restarting and refusing as it promises."""

from __future__ import annotations

import json
import socket
import struct
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from typer.testing import CliRunner

from revsync.cli import app
from revsync.contracts.topics import await_topic
from revsync.settings import Settings
from revsync_devstack.stack import LocalStack
from revsync_devstack.stack_check import ensure_topic, send_and_read_back

ORDER_TOTAL_SCHEMA = {
    "type": "record",
    "name": "OrderTotalProbe",
    "namespace": "io.revsync.tests",
    "doc": "A probe with the logical types revsync's events use.",
    "fields": [
        {"name": "order_id", "type": "string", "doc": "CRM order id."},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
            "doc": "Order total.",
        },
        {
            "name": "occurred_at",
            "type": {"type": "long", "logicalType": "timestamp-millis"},
            "doc": "When it happened (UTC).",
        },
    ],
}


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def test_avro_event_round_trips_through_broker_and_registry(settings: Settings) -> None:
    topic = unique("smoke.avro")
    assert ensure_topic(settings, topic)
    record = {
        "order_id": "8015g00000AbCdEAAV",
        "total": Decimal("1234.50"),
        "occurred_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    }
    trip = send_and_read_back(settings, topic, ORDER_TOTAL_SCHEMA, record)
    assert trip.read_back == record
    magic, schema_id = struct.unpack(">bI", trip.wire_bytes[:5])
    assert (magic, schema_id) == (0, trip.schema_id)
    registry = SchemaRegistryClient(settings.registry_config())
    registered = registry.get_latest_version(f"{topic}-value")
    assert registered.schema.schema_str is not None
    assert json.loads(registered.schema.schema_str)["name"] == "OrderTotalProbe"


def test_postgres_round_trip(settings: Settings) -> None:
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        connection.execute(
            "CREATE TEMP TABLE probe (id uuid PRIMARY KEY, amount numeric(18,2), at timestamptz)"
        )
        row = (uuid.uuid4(), Decimal("99.95"), datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
        connection.execute("INSERT INTO probe VALUES (%s, %s, %s)", row)
        assert connection.execute("SELECT id, amount, at FROM probe").fetchall() == [row]


def test_admin_client_creates_a_topic_once(settings: Settings) -> None:
    admin = AdminClient(settings.kafka_config())
    topic = unique("smoke.admin")
    spec = NewTopic(topic, num_partitions=3, config={"retention.ms": "3600000"})
    admin.create_topics([spec])[topic].result(timeout=30)

    assert len(await_topic(admin, topic).partitions) == 3
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["retention.ms"].value == "3600000"

    with pytest.raises(KafkaException) as again:
        admin.create_topics([spec])[topic].result(timeout=30)
    assert again.value.args[0].name() == "TOPIC_ALREADY_EXISTS"


def test_stack_status_reports_all_three_healthy(local_stack: LocalStack) -> None:
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    for component in ("postgres", "kafka", "registry"):
        line = next(line for line in result.output.splitlines() if component in line)
        assert "healthy" in line
        assert "unhealthy" not in line


def test_a_second_up_is_a_no_op(local_stack: LocalStack) -> None:
    pids = [component.pid() for component in local_stack.components]
    result = CliRunner().invoke(app, ["stack", "up"])
    assert result.exit_code == 0, result.output
    assert "stack already running: nothing to do" in result.output
    assert [component.pid() for component in local_stack.components] == pids


def test_registrations_survive_a_registry_restart(
    local_stack: LocalStack, settings: Settings
) -> None:
    subject = f"{unique('smoke.durable')}-value"
    registry = SchemaRegistryClient(settings.registry_config())
    schema_id = registry.register_schema(subject, Schema(json.dumps(ORDER_TOTAL_SCHEMA), "AVRO"))
    old_pid = local_stack.registry.pid()

    local_stack.registry.stop()
    report = local_stack.up()

    assert report.started == ["registry"]
    assert local_stack.registry.pid() not in (None, old_pid)
    fresh_client = SchemaRegistryClient(settings.registry_config())
    assert fresh_client.get_latest_version(subject).schema_id == schema_id


def test_a_taken_port_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setenv("REVSYNC_STACK_DIR", str(tmp_path))
        monkeypatch.setenv("REVSYNC_STACK_KAFKA_PORT", str(taken))
        for setting in (
            "KAFKA_CONTROLLER_PORT",
            "REGISTRY_PORT",
            "REGISTRY_MANAGEMENT_PORT",
            "POSTGRES_PORT",
        ):
            monkeypatch.setenv(f"REVSYNC_STACK_{setting}", str(free_port()))

        result = CliRunner().invoke(app, ["stack", "up"])

    assert result.exit_code == 2
    assert f"port {taken} (kafka client) is already in use" in result.output
    assert "REVSYNC_STACK_KAFKA_PORT" in result.output
    assert not list(tmp_path.glob("*.pid")), "nothing may start when a port is taken"


def test_stack_check_sends_one_event_and_reads_it_back(local_stack: LocalStack) -> None:
    result = CliRunner().invoke(app, ["stack", "check"])
    assert result.exit_code == 0, result.output
    assert "round trip intact" in result.output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
