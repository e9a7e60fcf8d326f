"""erp_outbox_publisher's wiring: the shared relay over the ERP's outbox table, each row
translated by :mod:`erp_outbox_publisher.logic` into its canonical Avro event."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from erp_outbox_publisher.logic import ErpOutboxRow, UnknownErpEventType, canonical_event
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    Event,
    InvoicePosted,
    PaymentReceived,
    ShipmentConfirmed,
)
from revsync.contracts.serde import EventSerde
from revsync.deployables import Context, RelayDeployable, output_topics
from revsync.runtime import headers as h
from revsync.runtime.observability import Liveness
from revsync.runtime.outbox import cloud_event_headers
from revsync.runtime.relay import OutboxRelay, OutboxRow, OutboxTable, RowEncoder

SOURCE = "/erp/outbox"
OUTPUTS: tuple[type[Event], ...] = (
    InvoicePosted,
    ShipmentConfirmed,
    PaymentReceived,
    CustomerMastered,
    CreditStatusChanged,
)


def row_encoder(catalog: Catalog, serde: EventSerde) -> RowEncoder:
    """An ERP-native row as its canonical event's topic, Avro bytes and CloudEvents headers."""
    topics = output_topics(catalog, OUTPUTS)

    def encode(row: OutboxRow) -> tuple[str, bytes, h.Headers]:
        event = canonical_event(
            ErpOutboxRow(
                id=row.id,
                aggregatetype=row.aggregate_type,
                aggregateid=row.aggregate_id or "",
                type=row.type,
                payload=row.payload,
                created_at=row.created_at or datetime.now(UTC),
            )
        )
        topic = topics.get(type(event))
        if topic is None:  # mapped, but not declared: the declaration is what is published
            raise UnknownErpEventType(row.id, row.type)
        return topic, serde.serialize(topic, event), cloud_event_headers(event, SOURCE)

    return encode


def build(context: Context, liveness: Liveness) -> OutboxRelay:
    s = context.service
    dsn = (s.erp_outbox_dsn or context.settings.postgres_dsn).get_secret_value()
    with psycopg.connect(dsn, connect_timeout=10):
        pass  # fail fast, naming the database, before the relay's loop starts
    return OutboxRelay(
        dsn=dsn,
        kafka_config=context.settings.kafka_config(),
        table=OutboxTable(
            table=s.erp_outbox_table,
            topic_column=None,
            headers_column=None,
            published_column=s.erp_outbox_published_column,
            notify_channel=s.erp_outbox_channel,
        ),
        encoder=row_encoder(context.catalog, context.serde),
        liveness=liveness,
    )


DEPLOYABLE = RelayDeployable(
    name="erp-outbox-publisher", service="erp_outbox_publisher", outputs=OUTPUTS, build=build
)
