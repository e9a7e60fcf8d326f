"""The contracts against the real broker and registry: every event round-trips, governance
refuses what breaks a released version, topics apply converges, bad bytes get typed errors."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from contract_fixtures import (
    BREAKING,
    ORDER_CREATED,
    add_optional_field,
    cli_for,
    drop_topics,
    edit_schema,
    governed,
    isolated_contracts,
)
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.events import EVENTS_BY_SCHEMA, OrderCreated
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import (
    FRAME,
    TOPIC_NAME_STRATEGY,
    EventSerde,
    SubjectNotRegistered,
)
from revsync.errors import (
    CorruptPayload,
    IncompatibleWriterSchema,
    NotConfluentFramed,
    PayloadInvalid,
    UnknownSchemaId,
)
from revsync.settings import Settings
from samples import sample_event, sample_order_line


@pytest.fixture
def revsync(settings: Settings) -> Any:
    return cli_for(settings)


@pytest.fixture
def contracts(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    folder = isolated_contracts(tmp_path / "avro")
    yield folder
    drop_topics(settings, folder)


def serde_for(settings: Settings, contracts: Path, catalog: Catalog) -> EventSerde:
    registry = SchemaRegistryClient(settings.registry_config())
    return EventSerde(registry, catalog, SchemaRepository(contracts))


def test_every_event_round_trips_through_broker_and_registry(
    settings: Settings, revsync: Any, contracts: Path
) -> None:
    catalog = governed(revsync, contracts)
    serde = serde_for(settings, contracts, catalog)
    serde.prepare([topic.name for topic in catalog.avro_topics])
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True}))
    events = {
        topic.name: sample_event(EVENTS_BY_SCHEMA[topic.avro_schema])
        for topic in catalog.avro_topics
    }
    positions: dict[str, tuple[int, int]] = {}

    def delivered(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        positions[topic] = (partition, offset)

    for name, event in events.items():
        producer.produce(
            name, key=event.key, value=serde.serialize(name, event), on_delivery=delivered
        )
    assert producer.flush(30) == 0
    consumer = Consumer(settings.kafka_config(**{"group.id": f"test-{uuid.uuid4()}"}))
    try:
        for topic_name, (partition, offset) in positions.items():
            consumer.assign([TopicPartition(topic_name, partition, offset)])
            received = consumer.poll(30)
            assert received is not None
            assert received.error() is None
            assert received.key() == events[topic_name].key.encode()
            assert serde.deserialize(topic_name, received.value()) == events[topic_name]
    finally:
        consumer.close()
    assert set(positions) == set(events)


def test_a_second_register_and_topics_apply_change_nothing(revsync: Any, contracts: Path) -> None:
    catalog = governed(revsync, contracts)
    registered = revsync("schemas", "register", "--dir", str(contracts))
    assert registered.exit_code == 0, registered.output
    lines = registered.output.strip().splitlines()
    assert len(lines) == len(catalog.avro_topics)
    assert all(line.endswith("unchanged") for line in lines)
    applied = revsync("topics", "apply", "--dir", str(contracts))
    assert applied.exit_code == 0, applied.output
    # Every topic of the catalog, and each consumer's retry, dead-letter and replay topics.
    assert f"all {len(catalog.topic_plan())} match the catalog" in applied.output


def test_topics_apply_shows_the_difference_before_fixing_it(
    settings: Settings, revsync: Any, contracts: Path
) -> None:
    catalog = governed(revsync, contracts)
    path = contracts / "catalog.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["topics"][0]["partitions"] = 8
    raw["topics"][0]["retention"] = "3d"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    topic = catalog.avro_topics[0].name

    dry = revsync("topics", "apply", "--dry-run", "--dir", str(contracts))
    assert dry.exit_code == 0, dry.output
    assert f"add partitions  {topic}  3 -> 8" in dry.output
    assert f"set config      {topic}  retention.ms 604800000 -> 259200000" in dry.output
    assert "applied" not in dry.output

    # The consumer's retry, dead-letter and replay topics grow with its widest input.
    consumer = catalog.avro_topics[0].consumers[0]
    assert f"add partitions  {catalog.dead_letter_topic(consumer)}  3 -> 8" in dry.output
    assert f"add partitions  {catalog.replay_topic(consumer)}  3 -> 8" in dry.output

    applied = revsync("topics", "apply", "--dir", str(contracts))
    assert applied.exit_code == 0, applied.output
    # The topic's partitions and retention; each of its consumers' retry tiers, dead-letter
    # and replay topics.
    consumers = catalog.avro_topics[0].consumers
    grown = sum(len(catalog.consumers[name].retry_tiers) + 2 for name in consumers)
    assert f"applied {2 + grown} change(s)" in applied.output
    everything = f"all {len(catalog.topic_plan())} match"
    assert everything in revsync("topics", "apply", "--dir", str(contracts)).output


@pytest.mark.parametrize("case", BREAKING, ids=list(BREAKING))
def test_register_refuses_a_breaking_change(
    settings: Settings, revsync: Any, contracts: Path, case: str
) -> None:
    catalog = governed(revsync, contracts)
    file, change, _ = BREAKING[case]
    edit_schema(contracts, file, change)

    refused = revsync("schemas", "register", "--dir", str(contracts))

    assert refused.exit_code == 1
    assert "not registering: fix the breaks above" in refused.output
    assert "break:" in refused.output
    assert "registered" not in refused.output
    # Nothing reached the registry: the latest version of every subject is still v1.
    registry = SchemaRegistryClient(settings.registry_config())
    for topic in catalog.avro_topics:
        assert registry.get_latest_version(topic.value_subject).version == 1


@pytest.mark.parametrize("case", ["field removed without default", "type changed"])
def test_the_registry_itself_refuses_what_breaks_full_transitive(
    revsync: Any, contracts: Path, case: str
) -> None:
    governed(revsync, contracts)
    file, change, _ = BREAKING[case]
    edit_schema(contracts, file, change)

    refused = revsync("schemas", "register", "--no-local-check", "--dir", str(contracts))

    assert refused.exit_code == 1
    assert "refused:" in refused.output
    assert "the registry refused the schema (HTTP 409)" in refused.output


def test_a_compatible_change_passes_check_and_registers_a_new_version(
    revsync: Any, contracts: Path
) -> None:
    catalog = governed(revsync, contracts)
    edit_schema(contracts, ORDER_CREATED, add_optional_field)

    assert revsync("schemas", "check", "--dir", str(contracts)).exit_code == 0
    registered = revsync("schemas", "register", "--dir", str(contracts))

    assert registered.exit_code == 0, registered.output
    order_created = catalog.topic(catalog.avro_topics[0].name).value_subject
    assert f"{order_created}  version 2" in registered.output


def test_a_value_a_newer_producer_wrote_is_read_with_its_writer_schema_resolved(
    settings: Settings, revsync: Any, contracts: Path, tmp_path: Path
) -> None:
    """A producer already on a compatible newer version (a field added): its values carry
    the new schema id, fetched from the registry once and resolved to the reader's."""
    catalog = governed(revsync, contracts)
    topic = catalog.topic_for(OrderCreated.schema_name).name
    reader = serde_for(settings, contracts, catalog)
    reader.prepare([topic])
    newer = tmp_path / "newer"
    shutil.copytree(contracts, newer)
    edit_schema(newer, ORDER_CREATED, add_optional_field)
    assert revsync("schemas", "register", "--dir", str(newer)).exit_code == 0
    event = sample_event(OrderCreated)
    datum = {**event.to_avro(), "sales_channel": "web"}
    written = [
        _written_by_another_producer(settings, newer, topic, datum | {"crm_order_id": key})
        for key in ("8015g0000NEWER1", "8015g0000NEWER2")
    ]
    own_id = FRAME.unpack_from(reader.serialize(topic, event))[1]
    assert FRAME.unpack_from(written[0])[1] != own_id

    fetched: list[int] = []
    get_schema = reader.registry.get_schema

    def counted(schema_id: int, *args: Any, **kwargs: Any) -> Any:
        fetched.append(schema_id)
        return get_schema(schema_id, *args, **kwargs)

    reader.registry.get_schema = counted  # type: ignore[method-assign]
    read = [reader.deserialize(topic, data) for data in written]

    assert read == [
        event.model_copy(update={"crm_order_id": key})
        for key in ("8015g0000NEWER1", "8015g0000NEWER2")
    ]
    assert fetched == [FRAME.unpack_from(written[0])[1]]


def test_a_subject_missing_from_the_registry_fails_at_start_up(
    settings: Settings, contracts: Path
) -> None:
    catalog = load_catalog(contracts)
    serde = serde_for(settings, contracts, catalog)
    with pytest.raises(SubjectNotRegistered) as raised:
        serde.prepare([catalog.avro_topics[0].name, catalog.avro_topics[1].name])
    message = str(raised.value)
    assert f"subject {catalog.avro_topics[0].value_subject} has no registered version" in message
    assert catalog.avro_topics[1].value_subject in message
    assert "revsync schemas register" in message


class TestBadBytes:
    """Each kind of undecodable value gets its own typed error."""

    @pytest.fixture
    def setup(self, settings: Settings, revsync: Any, contracts: Path) -> tuple[EventSerde, str]:
        catalog = governed(revsync, contracts)
        serde = serde_for(settings, contracts, catalog)
        topic = catalog.avro_topics[0].name
        serde.prepare([topic])
        return serde, topic

    @pytest.mark.parametrize(
        "data", [b"", b'{"crm_order_id": "x"}', b"\x01\x00\x00\x00\x01xx", None]
    )
    def test_unframed_bytes(self, setup: tuple[EventSerde, str], data: bytes | None) -> None:
        serde, topic = setup
        with pytest.raises(NotConfluentFramed, match="no Confluent frame"):
            serde.deserialize(topic, data)

    def test_unknown_schema_id(self, setup: tuple[EventSerde, str]) -> None:
        serde, topic = setup
        with pytest.raises(UnknownSchemaId) as raised:
            serde.deserialize(topic, b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x02")
        assert raised.value.schema_id == 2**31 - 7

    def test_incompatible_writer_schema(
        self, setup: tuple[EventSerde, str], settings: Settings
    ) -> None:
        serde, topic = setup
        unrelated = json.dumps(
            {
                "type": "record",
                "name": "Unrelated",
                "namespace": "tests",
                "fields": [{"name": "x", "type": "int"}],
            }
        )
        other_topic = f"tests.unrelated.{uuid.uuid4().hex[:8]}"
        registry = SchemaRegistryClient(settings.registry_config())
        registry.register_schema(f"{other_topic}-value", Schema(unrelated, "AVRO"))
        data = AvroSerializer(
            registry, unrelated, conf={"auto.register.schemas": False, **TOPIC_NAME_STRATEGY}
        )({"x": 1}, SerializationContext(other_topic, MessageField.VALUE))
        with pytest.raises(IncompatibleWriterSchema, match="does not resolve to"):
            serde.deserialize(topic, data)

    def test_corrupt_avro_body(self, setup: tuple[EventSerde, str]) -> None:
        serde, topic = setup
        whole = serde.serialize(topic, sample_event(OrderCreated))
        with pytest.raises(CorruptPayload, match="Avro body unreadable"):
            serde.deserialize(topic, whole[:40])

    def test_valid_avro_that_breaks_business_rules(
        self, setup: tuple[EventSerde, str], settings: Settings, contracts: Path
    ) -> None:
        serde, topic = setup
        datum = sample_event(OrderCreated).to_avro()
        datum["lines"][0] = sample_order_line(1, quantity=Decimal("-3"))
        data = _written_by_another_producer(settings, contracts, topic, datum)
        with pytest.raises(PayloadInvalid) as raised:
            serde.deserialize(topic, data)
        assert raised.value.field == "lines.0.quantity"
        assert "greater than 0" in str(raised.value)

    def test_a_refused_value_is_never_quoted(
        self, setup: tuple[EventSerde, str], settings: Settings, contracts: Path
    ) -> None:
        serde, topic = setup
        datum = sample_event(OrderCreated).to_avro()
        datum["currency"] = "Z9@customer.example"  # a validator's message would quote it
        data = _written_by_another_producer(settings, contracts, topic, datum)

        with pytest.raises(PayloadInvalid) as raised:
            serde.deserialize(topic, data)
        with pytest.raises(NotConfluentFramed) as unframed:
            serde.deserialize(topic, b"jane@customer.example")

        assert raised.value.field == "currency"
        assert "customer.example" not in str(raised.value)
        assert "customer.example" not in str(unframed.value)
        assert "21 bytes" in str(unframed.value)


def _written_by_another_producer(
    settings: Settings, contracts: Path, topic: str, datum: dict[str, Any]
) -> bytes:
    """``datum`` as valid Avro in the wire format, the way a producer that skips revsync's
    model validation would write it."""
    schema = SchemaRepository(contracts).expanded_json(OrderCreated.schema_name)
    registry = SchemaRegistryClient(settings.registry_config())
    data = AvroSerializer(
        registry, schema, conf={"auto.register.schemas": False, **TOPIC_NAME_STRATEGY}
    )(datum, SerializationContext(topic, MessageField.VALUE))
    assert isinstance(data, bytes)
    return data
