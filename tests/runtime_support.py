"""A recording handler with injectable faults, and helpers to drive the runtime for real."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.contracts.catalog import Catalog
from revsync.contracts.events import (
    CreditCheckOutcome,
    Event,
    OrderAccepted,
    OrderCreated,
    PricingOutcome,
)
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.errors import BusinessRuleViolation, DependencyNotReady, TransientError
from revsync.migrations import ensure
from revsync.runtime import headers as h
from revsync.runtime.handler import (
    Decision,
    Emission,
    Handler,
    Inbound,
    StateWrite,
    caused_envelope,
)
from revsync.runtime.loop import ConsumerLoop, Policy
from revsync.runtime.observability import Liveness
from revsync.runtime.records import Decoder
from revsync.runtime.storage import TABLES
from revsync.settings import Settings

EFFECTS = """
CREATE TABLE IF NOT EXISTS runtime_effects (
    seq          bigserial PRIMARY KEY,
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    crm_order_id text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
)"""
RECORD_EFFECT = (
    "INSERT INTO runtime_effects (consumer, event_id, crm_order_id) SELECT c, e, o "
    "FROM unnest(%s::text[], %s::uuid[], %s::text[]) WITH ORDINALITY AS r(c, e, o, n) ORDER BY n"
)


@dataclass
class Fault:
    """How the handler misbehaves for one order."""

    transient_failures: int = 0
    """Raise TransientError this many times, then succeed."""
    retry_after: float | None = None
    not_ready: threading.Event | None = None
    """Raise DependencyNotReady until this is set."""
    permanent: bool = False
    """Raise BusinessRuleViolation every time."""
    message: str = "credit hold on the account"
    """What the permanent failure says."""
    calls: int = 0

    def apply(self) -> None:
        self.calls += 1
        if self.permanent:
            raise BusinessRuleViolation(self.message)
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientError("ERP answered 503", retry_after=self.retry_after)
        if self.not_ready is not None and not self.not_ready.is_set():
            raise DependencyNotReady("the CRM does not know this order yet")


@dataclass
class RecordingHandler:
    """Records one effect row per handled event and emits an OrderAccepted for it."""

    consumer: str
    accepted_topic: str
    faults: dict[str, Fault] = field(default_factory=dict)
    delay_s: float = 0.0
    handled: list[str] = field(default_factory=list)

    def __call__(self, inbound: Inbound) -> Decision:
        assert isinstance(inbound, Event)
        event = inbound
        fault = self.faults.get(event.key)
        if fault is not None:
            fault.apply()
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        self.handled.append(event.key)
        write = StateWrite(RECORD_EFFECT, (self.consumer, event.envelope.event_id, event.key))
        if not isinstance(event, OrderCreated):
            return Decision(writes=[write])
        accepted = OrderAccepted(
            envelope=caused_envelope(event.envelope, OrderAccepted.event_type),
            crm_order_id=event.crm_order_id,
            erp_order_id=f"SO-{event.crm_order_id}",
            erp_order_number=event.crm_order_number,
            erp_customer_id=event.erp_customer_id or "C-0",
            credit_check=CreditCheckOutcome.APPROVED,
            pricing_outcome=PricingOutcome.MATCHED,
            currency=event.currency,
            erp_grand_total=Decimal(event.grand_total),
            accepted_at=event.ordered_at,
        )
        return Decision(writes=[write], emits=[Emission(self.accepted_topic, accepted)])


@dataclass
class RuntimeWorld:
    """An isolated, governed catalog and everything needed to run its order consumer."""

    settings: Settings
    contracts: Path
    catalog: Catalog

    @property
    def consumer(self) -> str:
        return next(name for name in self.catalog.consumers if name.startswith("order-sync"))

    @property
    def created_topic(self) -> str:
        return next(
            t.name
            for t in self.catalog.topics
            if t.name.endswith(".created.v1") and t.name.startswith("revsync.order")
        )

    @property
    def accepted_topic(self) -> str:
        return next(t.name for t in self.catalog.topics if ".accepted." in t.name)

    def serde(self, registry_url: str | None = None) -> EventSerde:
        config = self.settings.registry_config()
        if registry_url is not None:
            config["url"] = registry_url
        registry = SchemaRegistryClient(config)
        return EventSerde(registry, self.catalog, SchemaRepository(self.contracts))

    def loop(
        self,
        handler: Handler,
        *,
        liveness: Liveness | None = None,
        postgres_dsn: str | None = None,
        kafka_config: dict[str, Any] | None = None,
        serde: EventSerde | None = None,
        decoder: Decoder | None = None,
        **policy: Any,
    ) -> ConsumerLoop:
        """The order consumer's loop; the dependencies' addresses may be overridden (to reach
        them through a proxy)."""
        # The broker's minimum session timeout: a killed member's partitions move on quickly.
        defaults: dict[str, Any] = {
            "batch_timeout_s": 0.1,
            "in_process_max_wait_s": 0.2,
            "session_timeout_ms": 6000,
        }
        return ConsumerLoop(
            consumer=self.consumer,
            catalog=self.catalog,
            handler=handler,
            serde=serde or self.serde(),
            kafka_config=kafka_config or self.settings.kafka_config(),
            postgres_dsn=postgres_dsn or self.settings.postgres_dsn.get_secret_value(),
            policy=Policy(**{**defaults, **policy}),
            liveness=liveness,
            decoder=decoder,
        )

    def handler(self, **options: Any) -> RecordingHandler:
        return RecordingHandler(self.consumer, self.accepted_topic, **options)

    def produce(
        self,
        events: Iterable[Event],
        *,
        topic: str | None = None,
        raw: Iterable[tuple[bytes, bytes]] = (),
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Events (serialized) and raw (key, value) pairs, in that order, to one partition
        per key."""
        serde = self.serde()
        destination = topic or self.created_topic
        producer = Producer(self.settings.kafka_config(**{"enable.idempotence": True}))
        for event in events:
            producer.produce(
                destination,
                key=event.key.encode(),
                value=serde.serialize(destination, event),
                headers=headers,
            )
        for key, value in raw:
            producer.produce(destination, key=key, value=value)
        assert producer.flush(30) == 0

    def effects(self) -> list[tuple[str, str]]:
        """(crm_order_id, event_id) of every recorded effect, in the order they happened."""
        with psycopg.connect(self.settings.postgres_dsn.get_secret_value()) as connection:
            rows = connection.execute(
                "SELECT crm_order_id, event_id::text FROM runtime_effects WHERE consumer = %s "
                "ORDER BY seq",
                (self.consumer,),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def outbox_headers(self) -> list[h.Headers]:
        with psycopg.connect(self.settings.postgres_dsn.get_secret_value()) as connection:
            rows = connection.execute(
                "SELECT headers FROM revsync_outbox WHERE topic = %s", (self.accepted_topic,)
            ).fetchall()
        return [h.from_json(row[0]) for row in rows]

    def outbox_rows(self) -> int:
        with psycopg.connect(self.settings.postgres_dsn.get_secret_value()) as connection:
            row = connection.execute(
                "SELECT count(*) FROM revsync_outbox WHERE topic = %s", (self.accepted_topic,)
            ).fetchone()
        assert row is not None
        return int(row[0])


def prepare_database(settings: Settings) -> None:
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        ensure(connection, TABLES)
        connection.execute(EFFECTS)
        connection.commit()


def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 30) -> list[Message]:
    """Every record of ``topic`` from the start, once ``expect`` have arrived (or time is up)."""
    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": f"reader-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
        )
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    messages: list[Message] = []
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while len(messages) < expect and not deadline.is_set():
            messages += [m for m in consumer.consume(500, 0.5) if m.error() is None]
    finally:
        timer.cancel()
        consumer.close()
    return messages


def wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
