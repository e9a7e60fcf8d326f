"""`revsync stack check`: one Avro event through the broker and the registry and back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from revsync.contracts.serde import TOPIC_NAME_STRATEGY
from revsync.contracts.topics import await_topic
from revsync.settings import Settings

STACK_CHECK_TOPIC = "revsync.probe.stack-check"
STACK_CHECK_SCHEMA = {
    "type": "record",
    "name": "StackChecked",
    "namespace": "io.revsync.probe",
    "doc": "A probe sent by `revsync stack check` to show the broker and the registry at work.",
    "fields": [
        {"name": "check_id", "type": "string", "doc": "Unique id of this check."},
        {
            "name": "checked_at",
            "type": {"type": "long", "logicalType": "timestamp-millis"},
            "doc": "When the check was sent (UTC).",
        },
    ],
}


@dataclass(frozen=True)
class RoundTrip:
    """What one event looked like on the way in and on the way out."""

    schema_id: int
    partition: int
    offset: int
    wire_bytes: bytes
    read_back: dict[str, Any]


def ensure_topic(settings: Settings, topic: str, partitions: int = 1) -> bool:
    """Create ``topic`` if it does not exist; True when it was created now."""
    admin = AdminClient(settings.kafka_config())
    if topic in admin.list_topics(timeout=10).topics:
        return False
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
    try:
        future.result(timeout=30)
    except KafkaException as error:
        if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise
        return False
    await_topic(admin, topic)
    return True


def send_and_read_back(
    settings: Settings, topic: str, schema: dict[str, Any], record: dict[str, Any]
) -> RoundTrip:
    """Register ``schema``, produce ``record`` in Confluent wire format, consume it back."""
    registry = SchemaRegistryClient(settings.registry_config())
    subject = f"{topic}-value"
    schema_id = registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    context = SerializationContext(topic, MessageField.VALUE)
    serialize = AvroSerializer(
        registry, json.dumps(schema), conf={"auto.register.schemas": False, **TOPIC_NAME_STRATEGY}
    )
    wire_bytes = serialize(record, context)
    assert wire_bytes is not None

    producer = Producer(settings.kafka_config(**{"enable.idempotence": True}))
    delivered: list[Any] = []
    producer.produce(topic, value=wire_bytes, on_delivery=lambda e, m: delivered.append((e, m)))
    if producer.flush(30) or not delivered:
        raise RuntimeError(f"the event to {topic} was not acknowledged within 30s")
    error, sent = delivered[0]
    if error is not None:
        raise KafkaException(error)
    partition, offset = sent.partition(), sent.offset()

    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": f"revsync-probe-{uuid.uuid4()}", "enable.auto.commit": False}
        )
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        message = consumer.poll(30)
    finally:
        consumer.close()
    if message is None or message.error():
        raise RuntimeError(f"could not read back {topic}[{partition}]@{offset}: {message}")
    read_back = AvroDeserializer(registry, conf=TOPIC_NAME_STRATEGY)(message.value(), context)
    return RoundTrip(schema_id, partition, offset, wire_bytes, read_back)


def run_stack_check(settings: Settings) -> Iterator[str]:
    """Send one event through the stack and say, step by step, what happened."""
    created = ensure_topic(settings, STACK_CHECK_TOPIC)
    yield f"topic {STACK_CHECK_TOPIC}: {'created' if created else 'already there'}"
    record = {"check_id": str(uuid.uuid4()), "checked_at": datetime.now(UTC)}
    trip = send_and_read_back(settings, STACK_CHECK_TOPIC, STACK_CHECK_SCHEMA, record)
    yield (
        f"registered {STACK_CHECK_TOPIC}-value as schema id {trip.schema_id} "
        f"at {settings.schema_registry_url}"
    )
    yield (
        f"produced {len(trip.wire_bytes)} bytes (Confluent wire format, magic byte 0, "
        f"schema id {trip.schema_id}) to {STACK_CHECK_TOPIC}[{trip.partition}]@{trip.offset}"
    )
    yield f"consumed and decoded it through the registry: {trip.read_back}"
    same = trip.read_back["check_id"] == record["check_id"]
    yield "round trip intact" if same else "round trip CHANGED the event"
    if not same:
        raise RuntimeError("the event read back differs from the one sent")
