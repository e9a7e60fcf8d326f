"""Debezium's outbox event router publishing revsync's outbox, its connector configured as
the relay benchmark configures it (``revsync_devstack.connect``): rows that revsync's own
OutboxWriter wrote from real events reach Kafka as the relay publishes them (topic, key,
value bytes, event id and type) and a revsync consumer handles them alike, each event once.

What differs, and stays so here: the router cannot expand the headers column, so
``ce_source``, ``ce_time``, ``ce_specversion`` and ``traceparent`` are missing; it adds its
own ``id``; and Kafka Connect's Java producer partitions keys by murmur2, revsync's by
librdkafka's CRC32, so a key may land in another partition than the relay would put it in.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sandbox.harness import free_port

from revsync.contracts.events import OrderCreated
from revsync.runtime import headers as h
from revsync.runtime import outbox
from revsync.runtime.handler import Decision, Handler, Inbound, StateWrite
from revsync.runtime.relay import OutboxRelay, OutboxTable
from revsync_devstack.connect import KafkaConnect, OutboxConnector
from revsync_devstack.stack import LocalStack
from runtime_support import RECORD_EFFECT, RuntimeWorld, read_topic
from samples import sample_order

SERVICE = "order_sync"
CONNECTOR = "revsync_outbox_test"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def private_outbox(world: RuntimeWorld) -> Iterator[str]:
    """revsync's outbox table, made by revsync's own DDL, in a schema of this test's."""
    schema = f"debezium_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        db.execute(outbox.SCHEMA)
    yield schema
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def write_events(
    world: RuntimeWorld, schema: str, service: str, events: list[OrderCreated]
) -> None:
    """As a service's batch writes what it emits: OutboxWriter, in one transaction."""
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        with db.cursor() as cursor:
            outbox.OutboxWriter(world.serde(), service).write_traced(
                cursor, [(event, world.created_topic, TRACEPARENT) for event in events]
            )


def record_effect(consumer: str) -> Handler:
    """A handler that records each event it handles, and emits nothing."""

    def handle(inbound: Inbound) -> Decision:
        assert isinstance(inbound, OrderCreated)
        effect = (consumer, inbound.envelope.event_id, inbound.key)
        return Decision(writes=[StateWrite(RECORD_EFFECT, effect)])

    return handle


def test_debezium_publishes_revsyncs_outbox_as_the_relay_does_and_a_consumer_handles_it_once(
    world: RuntimeWorld, private_outbox: str, local_stack: LocalStack
) -> None:
    settings = world.settings
    dsn = settings.postgres_dsn.get_secret_value()
    table = OutboxTable(
        table=f"{private_outbox}.revsync_outbox", owner_column="service", owner=SERVICE
    )
    orders = [f"8015g0000000{n:05d}" for n in range(4)]
    # Three events per order, in two transactions: the keys interleave across them.
    events = [sample_order(order) for _ in range(3) for order in orders]
    connector = OutboxConnector(CONNECTOR, table, dsn)
    with KafkaConnect(local_stack.settings, connector, settings.bootstrap_servers, free_port()):
        write_events(world, private_outbox, SERVICE, events[:6])
        write_events(world, private_outbox, SERVICE, events[6:])
        # Another service's row: its own relay's, never this connector's.
        write_events(world, private_outbox, "customer_sync", [sample_order("8015g0000000other")])
        from_debezium = read_topic(settings, world.created_topic, len(events))
    with psycopg.connect(dsn) as db:
        slots = db.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (CONNECTOR,)
        ).fetchone()
    assert slots == (0,), "the slot is dropped with the worker: it would hold the WAL"

    serde = world.serde()
    by_id = {str(event.envelope.event_id): event for event in events}
    assert len(from_debezium) == len(events)
    for message in from_debezium:
        headers = h.as_list(message.headers())
        event = by_id[h.get(headers, "ce_id") or ""]
        assert message.topic() == world.created_topic
        assert message.key() == event.key.encode()
        assert serde.deserialize(world.created_topic, message.value()) == event
        assert h.get(headers, "ce_type") == event.envelope.event_type
        assert h.get(headers, "content-type") == "application/avro"
        assert h.get(headers, "id") == str(event.envelope.event_id)
        for missing in ("ce_source", "ce_time", "ce_specversion", "traceparent"):
            assert h.get(headers, missing) is None, missing
    assert_in_key_order(from_debezium, events)

    world.loop(record_effect(world.consumer)).run(max_idle_s=2)
    handled = world.effects()
    assert sorted(event_id for _, event_id in handled) == sorted(by_id)
    assert_effects_in_key_order(handled, events)

    # revsync's relay on the same rows (Debezium leaves them): the same records once more,
    # with every header the rows carry, and no event handled twice.
    relay = OutboxRelay(dsn=dsn, kafka_config=settings.kafka_config(), table=table)
    with psycopg.connect(dsn, autocommit=True) as work:
        assert relay.publish_batch(work) == len(events)
    everything = read_topic(settings, world.created_topic, 2 * len(events))
    from_relay = [m for m in everything if h.get(h.as_list(m.headers()), "id") is None]
    assert len(from_relay) == len(events)
    debezium_record = {h.get(h.as_list(m.headers()), "ce_id"): m for m in from_debezium}
    for message in from_relay:
        headers = h.as_list(message.headers())
        twin = debezium_record[h.get(headers, "ce_id")]
        assert (message.topic(), message.key(), message.value()) == (
            twin.topic(),
            twin.key(),
            twin.value(),
        )
        assert h.get(headers, "ce_source") == f"/revsync/{SERVICE}"
        assert h.get(headers, "traceparent") == TRACEPARENT
    world.loop(record_effect(world.consumer)).run(max_idle_s=2)
    assert world.effects() == handled


def assert_in_key_order(messages: list[Any], events: list[OrderCreated]) -> None:
    """Each key's records in one partition, in the order they were written."""
    written = [str(event.envelope.event_id) for event in events]
    by_key: defaultdict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
    for message in messages:
        row = written.index(h.get(h.as_list(message.headers()), "ce_id") or "")
        by_key[message.key()].append((message.partition(), message.offset(), row))
    for key, records in by_key.items():
        assert len({partition for partition, _, _ in records}) == 1, key
        assert [row for _, _, row in sorted(records)] == sorted(row for _, _, row in records)


def assert_effects_in_key_order(handled: list[tuple[str, str]], events: list[OrderCreated]) -> None:
    written = {str(event.envelope.event_id): index for index, event in enumerate(events)}
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    for key, event_id in handled:
        by_key[key].append(written[event_id])
    for key, order in by_key.items():
        assert order == sorted(order), key
