"""Where the ERP inbound sources put what they learn: each change of a vendor's record as the
ERP outbox row a database ERP would have written (the payload shapes
:mod:`erp_outbox_publisher.logic` reads), translated by that module into its canonical event
and written to revsync's outbox in the caller's transaction, beside the source's own position.

An event's id is derived from the record and its version (:func:`event_id`), so reading a
change twice (a re-poll over an overlap, a repeated webhook notification, the reconciliation
poll finding what a notification brought) writes the same event again, which revsync's outbox
and every consumer's inbox take as the one they have. A change that cannot become its event
does not stop the others: it is kept in ``revsync_erp_inbound_refusals`` with the reason, for
a person, and counted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erp_outbox_publisher.logic import (
    ErpOutboxRow,
    ErpPayloadInvalid,
    UnknownErpEventType,
    canonical_event,
)
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
from revsync.deployables import output_topics
from revsync.errors import described
from revsync.migrations import Tables
from revsync.runtime.outbox import OutboxWriter
from revsync.security import POSTGRES_SERVICE

log = logging.getLogger(__name__)

SERVICE = "erp_inbound"
OUTPUTS: tuple[type[Event], ...] = (
    InvoicePosted,
    ShipmentConfirmed,
    PaymentReceived,
    CustomerMastered,
    CreditStatusChanged,
)
EVENT_IDS = uuid.UUID("6f0d8f0e-5a51-4c8e-9f57-1b7a3c2e9d40")
"""The namespace of inbound event ids (UUID version 5)."""

SCHEMA = """
-- A change an ERP inbound source read but could not turn into its canonical event: kept for a
-- person, never retried by itself (the same change read again is refused again).
CREATE TABLE IF NOT EXISTS revsync_erp_inbound_refusals (
    event_id     uuid        PRIMARY KEY,
    source       text        NOT NULL,
    type         text        NOT NULL,
    aggregateid  text        NOT NULL,
    reason       text        NOT NULL,
    payload      jsonb       NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);
"""
TABLES = (Tables(SCHEMA, writers=(POSTGRES_SERVICE,)),)


def event_id(*parts: str) -> uuid.UUID:
    """The id of the event for one version of one record: the same parts, the same id. The
    parts name the system and its tenant, the record's type and id, the event's type, and the
    version (a last-modified time, or nothing for a document that happens once)."""
    if not parts or any(not part for part in parts[:-1]):
        raise ValueError("an inbound event id needs its system, record and event type")
    return uuid.uuid5(EVENT_IDS, "\x1f".join(parts))


@dataclass(frozen=True)
class Change:
    """One change read from an ERP, as a database ERP's outbox row would say it."""

    id: uuid.UUID
    """Its event's id: :func:`event_id` of the record and its version."""
    type: str
    """The canonical event type: ``InvoicePosted``, ``ShipmentConfirmed``, ``PaymentReceived``,
    ``CustomerMastered`` or ``CreditStatusChanged``."""
    aggregateid: str
    """The CRM id the event is keyed by: the order's external id, or the account's."""
    payload: dict[str, Any]
    """The payload the reference ERP's outbox row of this type carries."""
    read_at: datetime


@dataclass
class Written:
    published: int = 0
    refused: list[tuple[Change, str]] = field(default_factory=list)


class InboundSink:
    """Writes changes as canonical events through revsync's outbox, in the caller's
    transaction."""

    def __init__(self, catalog: Catalog, serde: EventSerde, source: str) -> None:
        self.source = source
        self.topics = output_topics(catalog, OUTPUTS)
        self.outbox = OutboxWriter(serde, SERVICE)

    def write(self, cursor: psycopg.Cursor[Any], changes: Sequence[Change]) -> Written:
        """The events of ``changes``, in their order; a change that cannot be its event is
        recorded as refused instead, and the rest go on."""
        written = Written()
        emissions: list[tuple[Event, str, str | None]] = []
        for change in changes:
            try:
                event = canonical_event(
                    ErpOutboxRow(
                        id=change.id,
                        aggregatetype=_aggregate_type(change.type),
                        aggregateid=change.aggregateid,
                        type=change.type,
                        payload=change.payload,
                        created_at=change.read_at,
                    )
                )
            except (UnknownErpEventType, ErpPayloadInvalid) as error:
                written.refused.append((change, described(error)))
                continue
            emissions.append((event, self.topics[type(event)], None))
        self.outbox.write_traced(cursor, emissions)
        written.published = len(emissions)
        for change, reason in written.refused:
            log.warning("%s: change %s refused: %s", self.source, change.id, reason)
            cursor.execute(
                "INSERT INTO revsync_erp_inbound_refusals (event_id, source, type, aggregateid, "
                "reason, payload) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (change.id, self.source, change.type, change.aggregateid, reason,
                 Jsonb(change.payload)),
            )  # fmt: skip
        return written


def _aggregate_type(event_type: str) -> str:
    return "customer" if event_type in ("CustomerMastered", "CreditStatusChanged") else "order"
