"""The floor of SCENARIO=runtime: the simplest plain code doing the durable work revsync's path
does for the bench's handler, so that revsync's own overhead is measured against it.

Per batch, in one transaction: the inbox rows of every event id (those already there are
skipped), one state upsert per order, one OrderAccepted written to the outbox (published by
the same relay as revsync's), the journey's two rows per order (processed, emitted) and the
order's facts; then the offsets, committed after the transaction. Batches close full or on
time, as revsync's do. Values are read and written with fastavro against the registry's
schemas, with nothing checked beyond the Avro itself: no validation, no retries, no dead
letters, no key holds.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from revsync.runtime.handler import EMITTED_EVENT_NAMESPACE
from revsync.settings import Settings

ACCEPTED_TYPE = "io.revsync.order.accepted"
CLAIM = (
    "INSERT INTO revsync_inbox (consumer, event_id) SELECT %s, unnest(%b::uuid[]) "
    "ON CONFLICT DO NOTHING RETURNING event_id::text"
)
OUTBOX = (
    "INSERT INTO revsync_outbox (id, aggregatetype, aggregateid, type, payload, topic, headers, "
    "service) SELECT id, 'order', key, %s, payload, %s, headers::jsonb, 'order_sync' "
    "FROM unnest(%b::uuid[], %b::text[], %b::bytea[], %b::text[]) WITH ORDINALITY "
    "AS r(id, key, payload, headers, n) ORDER BY n"
)
JOURNEY = (
    "COPY revsync_journey (consumer, order_key, at, outcome, event_id, event_type, "
    'correlation_id, topic, partition, "offset", occurred_at) FROM STDIN (FORMAT BINARY)'
)
JOURNEY_TYPES = [
    "text", "text", "timestamptz", "text", "uuid", "text", "text", "text", "int4", "int8",
    "timestamptz",
]  # fmt: skip
ORDERS = (
    "INSERT INTO revsync_orders (crm_order_id, crm_order_number, correlation_id, legal_entity, "
    "region, currency, product_lines, activated_at, erp_order_id, erp_order_number, "
    "accepted_at) SELECT DISTINCT ON (id) id, number, correlation, entity, region, currency, "
    "ARRAY[line], activated, erp_id, erp_id, accepted FROM unnest(%b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], "
    "%b::text[], %b::timestamptz[]) WITH ORDINALITY AS o(id, number, correlation, entity, "
    "region, currency, line, activated, erp_id, accepted, n) ORDER BY id, n DESC "
    "ON CONFLICT (crm_order_id) DO UPDATE SET erp_order_id = excluded.erp_order_id, "
    "erp_order_number = excluded.erp_order_number, accepted_at = excluded.accepted_at, "
    "updated_at = now()"
)


def registered(registry: SchemaRegistryClient, topic: str) -> tuple[int, Any]:
    """The id and parsed schema of ``topic``'s latest registered value schema."""
    latest = registry.get_latest_version(f"{topic}-value")
    assert latest.schema_id is not None
    return latest.schema_id, parse_schema(json.loads(str(latest.schema.schema_str)))


class FloorLoop:
    """The plain loop, with the same hooks for timing as the bench's revsync loop."""

    def __init__(
        self, settings: Settings, setup: dict[str, Any], upsert: str, batch_size: int
    ) -> None:
        self.settings = settings
        self.setup = setup
        self.upsert = upsert
        self.batch_size = batch_size
        self.name = f"floor-{setup['tag']}"
        registry = SchemaRegistryClient(settings.registry_config())
        _, self.reader = registered(registry, setup["created"])
        accepted_id, self.writer = registered(registry, setup["accepted"])
        self.frame = b"\x00" + accepted_id.to_bytes(4, "big")
        self.stopping = threading.Event()
        self.started: float | None = None
        self.timings: list[tuple[float, int]] = []
        self.light_ms: list[float] | None = None
        """Once set to a list: each record's milliseconds from produced to committed."""

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        consumer = Consumer(
            self.settings.kafka_config(
                **{
                    "group.id": self.name,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        consumer.subscribe([self.setup["created"]])
        db = psycopg.connect(self.settings.postgres_dsn.get_secret_value())
        try:
            while not self.stopping.is_set():
                messages = consumer.consume(1, 0.5)
                if not messages:
                    continue
                messages += consumer.consume(self.batch_size - 1, 0.02)
                began = time.perf_counter()
                if self.started is None:
                    self.started = began
                self.batch(db, consumer, [m for m in messages if m.error() is None])
                self.timings.append((time.perf_counter() - began, len(messages)))
                if self.light_ms is not None:
                    now_ms = time.time() * 1000
                    self.light_ms += [now_ms - m.timestamp()[1] for m in messages]
        finally:
            consumer.close()
            db.close()

    def batch(
        self, db: psycopg.Connection[Any], consumer: Consumer, messages: list[Message]
    ) -> None:
        decoded: list[tuple[Message, dict[str, Any]]] = []
        for message in messages:
            value = message.value()
            assert value is not None
            body = io.BytesIO(value)
            body.seek(5)
            order = schemaless_reader(body, self.reader, None)
            assert isinstance(order, dict)
            decoded.append((message, order))
        now = datetime.now(UTC)
        with db.transaction():
            claimed = {
                row[0]
                for row in db.execute(
                    CLAIM, (self.name, [d["envelope"]["event_id"] for _, d in decoded])
                )
            }
            state: tuple[list[Any], ...] = ([], [], [])
            outbox: tuple[list[Any], ...] = ([], [], [], [])
            journey: tuple[list[Any], ...] = tuple([] for _ in range(10))
            orders: tuple[list[Any], ...] = tuple([] for _ in range(10))
            for message, order in decoded:
                envelope = order["envelope"]
                cause = envelope["event_id"]
                if str(cause) not in claimed:
                    continue
                key = order["crm_order_id"]
                erp_order_id = f"SO-{key}"
                event_id = uuid.uuid5(EMITTED_EVENT_NAMESPACE, f"{cause}/{ACCEPTED_TYPE}")
                payload = io.BytesIO(self.frame)
                payload.seek(5)
                schemaless_writer(
                    payload,
                    self.writer,
                    {
                        "envelope": {
                            "event_id": event_id,
                            "event_type": ACCEPTED_TYPE,
                            "occurred_at": now,
                            "source_system": "REVSYNC",
                            "correlation_id": envelope["correlation_id"],
                            "causation_id": str(cause),
                            "schema_version": 1,
                        },
                        "crm_order_id": key,
                        "erp_order_id": erp_order_id,
                        "erp_order_number": erp_order_id,
                        "erp_customer_id": order["erp_customer_id"] or "C-0",
                        "credit_check": "APPROVED",
                        "pricing_outcome": "MATCHED",
                        "currency": order["currency"],
                        "erp_grand_total": order["grand_total"],
                        "accepted_at": order["ordered_at"],
                    },
                )
                headers = [
                    ["ce_id", str(event_id)],
                    ["ce_type", ACCEPTED_TYPE],
                    ["ce_source", "/revsync/order_sync"],
                    ["ce_time", now.isoformat()],
                    ["ce_specversion", "1.0"],
                    ["content-type", "application/avro"],
                ]
                encoded = [[k, base64.b64encode(v.encode()).decode()] for k, v in headers]
                for column, value in zip(state, (key, "accepted", erp_order_id), strict=True):
                    column.append(value)
                for column, value in zip(
                    outbox, (event_id, key, payload.getvalue(), json.dumps(encoded)), strict=True
                ):
                    column.append(value)
                for step in (
                    (
                        key,
                        now,
                        "processed",
                        cause,
                        envelope["event_type"],
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        envelope["occurred_at"],
                    ),
                    (
                        key,
                        now,
                        "emitted",
                        event_id,
                        ACCEPTED_TYPE,
                        self.setup["accepted"],
                        None,
                        None,
                        now,
                    ),
                ):
                    (order_key, at, outcome, step_id, kind, topic, part, offset, occurred) = step
                    for column, value in zip(
                        journey,
                        (
                            order_key,
                            at,
                            outcome,
                            step_id,
                            kind,
                            envelope["correlation_id"],
                            topic,
                            part,
                            offset,
                            occurred,
                        ),
                        strict=True,
                    ):
                        column.append(value)
                facts = (
                    key,
                    order["crm_order_number"],
                    envelope["correlation_id"],
                    order["legal_entity"],
                    order["region"],
                    order["currency"],
                    order["lines"][0]["product_line"],
                    envelope["occurred_at"],
                    erp_order_id,
                    order["ordered_at"],
                )
                for column, value in zip(orders, facts, strict=True):
                    column.append(value)
            if state[0]:
                db.execute(self.upsert, state)
                db.execute(OUTBOX, (ACCEPTED_TYPE, self.setup["accepted"], *outbox))
                with db.cursor().copy(JOURNEY) as copy:
                    copy.set_types(JOURNEY_TYPES)
                    for row in zip(*journey, strict=True):
                        copy.write_row((self.name, *row))
                db.execute(ORDERS, orders)
        consumer.commit(asynchronous=False)  # every position consumed: this batch's
