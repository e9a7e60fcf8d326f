"""The order journey: what became of every record a consumer took, written in the batch's own
transaction, so it can never disagree with what happened.

Three tables, keyed by the record key: the CRM order id (every order-to-cash topic's key), the
CRM account id for customer master events:

- ``revsync_journey``: one row per record consumed (its topic, partition and offset) with its
  outcome — processed, duplicate skipped, retried at a tier, dead-lettered, parked — and one per
  event emitted and per key released. Pruned after the journey retention.
- ``revsync_orders``: one row per order, its identities in every system (CRM order number, ERP
  order id and number, correlation id) and when it reached each stage, from the events that
  passed; what the console looks orders up by and ages them with.
- ``revsync_exceptions``: the worklist. A dead letter opens one, with where it lies; a rejection
  emitted opens one with its reason code, and so does a duplicate customer suspected (keyed by
  its account). Each closes itself when its cause is gone: a dead letter's event processed by
  the same consumer (a replay), a rejected order accepted, the account's customer mastered. People
  resolve, assign, tag and discard them through :mod:`revsync.ops.exceptions`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from revsync.contracts.events import (
    CustomerMastered,
    CustomerUpserted,
    DuplicateCustomerSuspected,
    Event,
    InvoicePosted,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    ShipmentConfirmed,
)
from revsync.errors import classify, described
from revsync.runtime.handler import Inbound
from revsync.runtime.records import Hold, Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS revsync_journey (
    seq            bigserial   PRIMARY KEY,
    at             timestamptz NOT NULL,
    order_key      text,
    consumer       text        NOT NULL,
    outcome        text        NOT NULL,
    tier           text,
    event_id       uuid,
    event_type     text,
    correlation_id text,
    topic          text        NOT NULL,
    partition      integer,
    "offset"       bigint,
    occurred_at    timestamptz,
    detail         text
);
CREATE INDEX IF NOT EXISTS revsync_journey_order ON revsync_journey (order_key, at, seq);
CREATE INDEX IF NOT EXISTS revsync_journey_correlation
    ON revsync_journey (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS revsync_journey_at ON revsync_journey USING brin (at);

CREATE TABLE IF NOT EXISTS revsync_orders (
    crm_order_id       text        PRIMARY KEY,
    crm_order_number   text,
    erp_order_id       text,
    erp_order_number   text,
    correlation_id     text,
    legal_entity       text,
    region             text,
    currency           text,
    product_lines      text[]      NOT NULL DEFAULT '{}',
    activated_at       timestamptz,
    accepted_at        timestamptz,
    rejected_at        timestamptz,
    rejection_reason   text,
    invoiced_at        timestamptz,
    invoice_synced_at  timestamptz,
    shipped_at         timestamptz,
    shipment_synced_at timestamptz,
    cancelled_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS revsync_orders_crm_number ON revsync_orders (crm_order_number);
CREATE INDEX IF NOT EXISTS revsync_orders_erp_number ON revsync_orders (erp_order_number);
CREATE INDEX IF NOT EXISTS revsync_orders_correlation ON revsync_orders (correlation_id);
CREATE INDEX IF NOT EXISTS revsync_orders_activated ON revsync_orders (activated_at);
-- Orders waiting at each stage (neither cancelled nor shipped, and not rejected since their
-- activation), by the time they reached it: the worklist reads only those stuck past a stage's
-- age, however many orders are on their way.
DROP INDEX IF EXISTS revsync_orders_on_their_way;
CREATE INDEX IF NOT EXISTS revsync_orders_awaiting_acceptance ON revsync_orders (activated_at)
    WHERE cancelled_at IS NULL AND shipped_at IS NULL AND accepted_at IS NULL
      AND (rejected_at IS NULL OR rejected_at < activated_at);
CREATE INDEX IF NOT EXISTS revsync_orders_awaiting_invoice ON revsync_orders (accepted_at)
    WHERE cancelled_at IS NULL AND shipped_at IS NULL AND accepted_at IS NOT NULL
      AND invoiced_at IS NULL;
CREATE INDEX IF NOT EXISTS revsync_orders_awaiting_shipment ON revsync_orders (invoiced_at)
    WHERE cancelled_at IS NULL AND shipped_at IS NULL AND accepted_at IS NOT NULL
      AND invoiced_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS revsync_exceptions (
    id             bigserial   PRIMARY KEY,
    kind           text        NOT NULL,
    status         text        NOT NULL DEFAULT 'open',
    order_key      text,
    consumer       text        NOT NULL,
    reason         text        NOT NULL,
    summary        text        NOT NULL,
    event_id       uuid,
    event_type     text,
    correlation_id text,
    dlt_topic      text,
    dlt_partition  integer,
    dlt_offset     bigint,
    blocker        text,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    assignee       text,
    tags           text[]      NOT NULL DEFAULT '{}',
    resolved_at    timestamptz,
    resolved_by    text,
    resolution     text
);
CREATE INDEX IF NOT EXISTS revsync_exceptions_open
    ON revsync_exceptions (status, opened_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS revsync_exceptions_order ON revsync_exceptions (order_key);
CREATE INDEX IF NOT EXISTS revsync_exceptions_event
    ON revsync_exceptions (consumer, event_id) WHERE status = 'open';
CREATE UNIQUE INDEX IF NOT EXISTS revsync_exceptions_dead_letter
    ON revsync_exceptions (dlt_topic, dlt_partition, dlt_offset) WHERE dlt_topic IS NOT NULL;
"""
EDITABLE = ("status", "assignee", "tags", "resolved_at", "resolved_by", "resolution")
"""What people change on an exception (through the operators' audited commands)."""


class Outcome(StrEnum):
    """What became of a record a consumer took (or, for ``emitted`` and ``released``, of the
    event it emitted and the key it freed)."""

    PROCESSED = "processed"
    DUPLICATE = "duplicate skipped"
    RETRIED = "retried"
    DEAD_LETTERED = "dead-lettered"
    PARKED = "parked"
    RELEASED = "released"
    EMITTED = "emitted"


class Kind(StrEnum):
    REJECTION = "rejection"
    DEAD_LETTER = "dead letter"


class Status(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    DISCARDED = "discarded"


@dataclass(frozen=True)
class Step:
    """One journey row."""

    order_key: str | None
    outcome: Outcome
    topic: str
    at: datetime
    """When it happened: a batch's outcomes are recorded together, at its commit, but each
    when its record's handling began, so one order's journey across consumers reads in
    causal order."""
    partition: int | None = None
    offset: int | None = None
    event_id: uuid.UUID | None = None
    event_type: str | None = None
    correlation_id: str | None = None
    occurred_at: datetime | None = None
    tier: str | None = None
    detail: str | None = None

    def columns(self) -> tuple[Any, ...]:
        """Its values in :data:`STEP_COLUMNS` order."""
        return (
            self.order_key,
            self.at,
            self.outcome.value,
            self.tier,
            self.event_id,
            self.event_type,
            self.correlation_id,
            self.topic,
            self.partition,
            self.offset,
            self.occurred_at,
            self.detail,
        )


STEP_COLUMNS = (
    ("order_key", "text"),
    ("at", "timestamptz"),
    ("outcome", "text"),
    ("tier", "text"),
    ("event_id", "uuid"),
    ("event_type", "text"),
    ("correlation_id", "text"),
    ("topic", "text"),
    ("partition", "int4"),
    ('"offset"', "int8"),
    ("occurred_at", "timestamptz"),
    ("detail", "text"),
)
COPY_STEPS = (
    "COPY revsync_journey (consumer, "
    + ", ".join(name for name, _ in STEP_COLUMNS)
    + ") FROM STDIN (FORMAT BINARY)"
)
"""A batch's journey in one statement, in binary: the table is only ever appended to."""


ORDER_COLUMNS = (
    "crm_order_number",
    "erp_order_id",
    "erp_order_number",
    "correlation_id",
    "legal_entity",
    "region",
    "currency",
    "product_lines",
    "activated_at",
    "accepted_at",
    "rejected_at",
    "rejection_reason",
    "invoiced_at",
    "invoice_synced_at",
    "shipped_at",
    "shipment_synced_at",
    "cancelled_at",
)
Facts = dict[str, Any]
_UPDATES = ", ".join(
    f"{name} = COALESCE(EXCLUDED.{name}, revsync_orders.{name})"
    if name != "product_lines"
    else "product_lines = CASE WHEN cardinality(EXCLUDED.product_lines) > 0 "
    "THEN EXCLUDED.product_lines ELSE revsync_orders.product_lines END"
    for name in ORDER_COLUMNS
)
UPSERT_ORDERS = (
    f"INSERT INTO revsync_orders (crm_order_id, {', '.join(ORDER_COLUMNS)}) "  # noqa: S608
    "SELECT crm_order_id, "
    + ", ".join(
        "coalesce(product_lines::text[], '{}')" if name == "product_lines" else name
        for name in ORDER_COLUMNS
    )
    + " FROM unnest(%b::text[], "
    + ", ".join(
        f"%b::{'timestamptz' if name.endswith('_at') else 'text'}[]" for name in ORDER_COLUMNS
    )
    + f") AS o(crm_order_id, {', '.join(ORDER_COLUMNS)}) ORDER BY crm_order_id "
    f"ON CONFLICT (crm_order_id) DO UPDATE SET {_UPDATES}, updated_at = now()"
)
"""A batch's order facts in one statement, one binary array per column (the product lines
as each order's text[] literal): what a fact does not say keeps what the row had."""


def _created(event: OrderCreated, now: datetime) -> Facts:
    return {
        "crm_order_number": event.crm_order_number,
        "correlation_id": event.envelope.correlation_id,
        "legal_entity": event.legal_entity,
        "region": event.region,
        "currency": event.currency,
        "product_lines": sorted({line.product_line for line in event.lines}),
        "activated_at": event.envelope.occurred_at,
    }


def _accepted(event: OrderAccepted, now: datetime) -> Facts:
    return {
        "erp_order_id": event.erp_order_id,
        "erp_order_number": event.erp_order_number,
        "accepted_at": event.accepted_at,
    }


def _rejected(event: OrderRejected, now: datetime) -> Facts:
    return {
        "legal_entity": event.legal_entity,
        "region": event.region,
        "rejected_at": event.rejected_at,
        "rejection_reason": event.reason_code.value,
    }


def _invoiced(event: InvoicePosted, now: datetime) -> Facts:
    return {
        "erp_order_id": event.erp_order_id,
        "invoiced_at": event.posted_at,
        "invoice_synced_at": now,
    }


def _shipped(event: ShipmentConfirmed, now: datetime) -> Facts:
    return {"shipped_at": event.shipped_at, "shipment_synced_at": now}


def _cancelled(event: OrderCancelled, now: datetime) -> Facts:
    return {"cancelled_at": event.envelope.occurred_at}


ORDER_FACTS: dict[type[Event], Callable[[Any, datetime], Facts]] = {
    OrderCreated: _created,
    OrderAccepted: _accepted,
    OrderRejected: _rejected,
    InvoicePosted: _invoiced,
    ShipmentConfirmed: _shipped,
    OrderCancelled: _cancelled,
}
"""What each order-to-cash event tells of its order, once it has passed (processed by its
consumer, or emitted): the stage it reached and the identities it carries. A later event of
the same stage (a second invoice) moves the stage's time on; an identity, once known, stays
unless a later event names another."""


Rejected = OrderRejected | DuplicateCustomerSuspected
"""The business exceptions an emitted event opens."""
DUPLICATE_CUSTOMER = "DUPLICATE_CUSTOMER"
"""The reason of a duplicate customer's exception."""
CLOSES: dict[type[Event], str] = {
    OrderAccepted: "accepted by the ERP",
    CustomerUpserted: "mastered in the ERP",
    CustomerMastered: "mastered in the ERP",
}
"""The events that close their key's business exception, and the resolution they give."""


@dataclass(frozen=True)
class DeadLettered:
    step: Step
    error_class: str
    summary: str
    blocker: str
    """The record's first place (``topic:partition:offset``): what its key's hold names."""


@dataclass
class JourneyBatch:
    """One batch's journey, exceptions and order facts, written with its effects."""

    steps: list[Step] = field(default_factory=list)
    facts: dict[str, Facts] = field(default_factory=dict)
    rejections: list[Rejected] = field(default_factory=list)
    """Business exceptions emitted, in the batch's order: each opens one."""
    accepted: dict[str, str] = field(default_factory=dict)
    """Keys whose business exception is gone, and why (an order accepted, an account's
    customer mastered)."""
    processed: set[str] = field(default_factory=set)
    """Event ids this consumer processed: their open dead letters close."""
    failed: list[DeadLettered] = field(default_factory=list)
    """What was dead-lettered, in the order sent."""

    def learn(self, event: Event, now: datetime) -> None:
        key = event.key
        facts = ORDER_FACTS.get(type(event))
        if facts is not None:
            self.facts.setdefault(key, {}).update(
                {name: value for name, value in facts(event, now).items() if value is not None}
            )
        closing = CLOSES.get(type(event))
        if isinstance(event, OrderRejected | DuplicateCustomerSuspected) or closing:
            # In the batch's order: an order rejected and then accepted within one batch (a
            # consumer catching up) opens no rejection; a second rejection replaces the first.
            self.rejections = [r for r in self.rejections if r.key != key]
        if isinstance(event, OrderRejected | DuplicateCustomerSuspected):
            self.rejections.append(event)
            self.accepted.pop(key, None)
        elif closing:
            self.accepted[key] = closing


def order_key(record: Record) -> str | None:
    return None if record.key is None else record.key.decode(errors="replace")


class Journal:
    """One consumer's journey writer."""

    def __init__(self, consumer: str, clock: Callable[[], datetime]) -> None:
        self.consumer = consumer
        self.clock = clock

    def consumed(
        self,
        batch: JourneyBatch,
        record: Record,
        inbound: Inbound | None,
        outcome: Outcome,
        *,
        tier: str | None = None,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> Step:
        envelope = None if inbound is None else inbound.envelope
        step = Step(
            order_key=order_key(record),
            outcome=outcome,
            topic=record.topic,
            at=at or self.clock(),
            partition=record.partition,
            offset=record.offset,
            event_id=envelope.event_id if envelope else None,
            event_type=envelope.event_type if envelope else None,
            correlation_id=envelope.correlation_id if envelope else None,
            occurred_at=envelope.occurred_at if envelope else None,
            tier=tier,
            detail=detail,
        )
        batch.steps.append(step)
        if outcome is Outcome.PROCESSED and envelope is not None:
            batch.processed.add(str(envelope.event_id))
            if isinstance(inbound, Event):
                batch.learn(inbound, self.clock())
        return step

    def failed(
        self,
        batch: JourneyBatch,
        record: Record,
        inbound: Inbound | None,
        error: BaseException,
        target: str,
        tiers: Sequence[str],
    ) -> None:
        """A failed record sent on to ``target``: a retry tier or the dead letters."""
        error_class = classify(error).value
        summary = described(error)
        if target in tiers:
            tier = target.rsplit(".", 1)[1]
            self.consumed(batch, record, inbound, Outcome.RETRIED, tier=tier, detail=error_class)
        else:
            step = self.consumed(batch, record, inbound, Outcome.DEAD_LETTERED, detail=error_class)
            batch.failed.append(DeadLettered(step, error_class, summary, record.blocker_id))

    def emitted(
        self, batch: JourneyBatch, event: Event, topic: str, at: datetime | None = None
    ) -> None:
        envelope = event.envelope
        batch.steps.append(
            Step(
                order_key=getattr(event, "crm_order_id", None),
                outcome=Outcome.EMITTED,
                topic=topic,
                at=at or self.clock(),
                event_id=envelope.event_id,
                event_type=envelope.event_type,
                correlation_id=envelope.correlation_id,
                occurred_at=envelope.occurred_at,
            )
        )
        batch.learn(event, self.clock())

    def released(self, batch: JourneyBatch, hold: Hold, blocker: str) -> None:
        batch.steps.append(
            Step(
                order_key=hold[0].decode(errors="replace"),
                outcome=Outcome.RELEASED,
                topic=hold[1],
                at=self.clock(),
                detail=f"held by {blocker}",
            )
        )

    def write(
        self,
        cursor: psycopg.Cursor[Any],
        batch: JourneyBatch,
        dead_letters: Sequence[tuple[str, int, int]],
    ) -> None:
        """The batch's journey rows, order facts and exceptions; ``dead_letters`` are where
        Kafka put the batch's dead-letter copies, in the order they were sent."""
        if batch.steps:
            with cursor.copy(COPY_STEPS) as copy:
                copy.set_types(["text", *(kind for _, kind in STEP_COLUMNS)])
                for step in batch.steps:
                    copy.write_row((self.consumer, *step.columns()))
        self._orders(cursor, batch.facts)
        self._close(cursor, batch)
        self._open(cursor, batch, dead_letters)

    def _orders(self, cursor: psycopg.Cursor[Any], facts: dict[str, Facts]) -> None:
        if not facts:
            return
        # One statement, rows in key order: consumers updating the same orders lock them in
        # one order, so they wait for each other but never deadlock.
        keys = sorted(facts)
        columns = [keys] + [
            [
                _array_literal(facts[key].get(name))
                if name == "product_lines"
                else facts[key].get(name)
                for key in keys
            ]
            for name in ORDER_COLUMNS
        ]
        cursor.execute(UPSERT_ORDERS, columns)

    def _close(self, cursor: psycopg.Cursor[Any], batch: JourneyBatch) -> None:
        """Exceptions whose cause is gone: a dead letter's event processed by this consumer
        (replayed and handled), a rejected order accepted; and those a new one of the same
        cause replaces (an order rejected again, an event dead-lettered again)."""
        superseded = [
            (Kind.REJECTION.value, sorted({r.key for r in batch.rejections}), []),
            (
                Kind.DEAD_LETTER.value,
                [],
                sorted({f.step.event_id for f in batch.failed if f.step.event_id}),
            ),
        ]
        for kind, keys, event_ids in superseded:
            if keys or event_ids:
                cursor.execute(
                    "UPDATE revsync_exceptions SET status = 'resolved', resolved_at = now(), "
                    "resolved_by = 'revsync', resolution = 'superseded by a later one' "
                    "WHERE status = 'open' AND kind = %s AND consumer = %s "
                    "AND (order_key = ANY(%s) OR event_id = ANY(%s::uuid[]))",
                    (kind, self.consumer, keys, event_ids),
                )
        if batch.processed:
            cursor.execute(
                "UPDATE revsync_exceptions SET status = 'resolved', resolved_at = now(), "
                "resolved_by = 'revsync', resolution = 'processed on a later attempt' "
                "WHERE status = 'open' AND consumer = %s AND event_id = ANY(%s::uuid[])",
                (self.consumer, sorted(batch.processed)),
            )
        for resolution in sorted(set(batch.accepted.values())):
            cursor.execute(
                "UPDATE revsync_exceptions SET status = 'resolved', resolved_at = now(), "
                "resolved_by = 'revsync', resolution = %s "
                "WHERE status = 'open' AND kind = %s AND order_key = ANY(%s)",
                (
                    resolution,
                    Kind.REJECTION.value,
                    sorted(k for k, why in batch.accepted.items() if why == resolution),
                ),
            )

    def _open(
        self,
        cursor: psycopg.Cursor[Any],
        batch: JourneyBatch,
        dead_letters: Sequence[tuple[str, int, int]],
    ) -> None:
        rows: list[dict[str, Any]] = [
            {
                "kind": Kind.REJECTION.value,
                "order_key": rejection.key,
                "reason": (
                    rejection.reason_code.value
                    if isinstance(rejection, OrderRejected)
                    else DUPLICATE_CUSTOMER
                ),
                "summary": rejection.message,
                "event_id": str(rejection.envelope.event_id),
                "event_type": rejection.envelope.event_type,
                "correlation_id": rejection.envelope.correlation_id,
            }
            for rejection in batch.rejections
        ]
        for failed, (topic, partition, offset) in zip(batch.failed, dead_letters, strict=True):
            rows.append(
                {
                    "kind": Kind.DEAD_LETTER.value,
                    "order_key": failed.step.order_key,
                    "reason": failed.error_class,
                    "summary": failed.summary,
                    "event_id": str(failed.step.event_id) if failed.step.event_id else None,
                    "event_type": failed.step.event_type,
                    "correlation_id": failed.step.correlation_id,
                    "dlt_topic": topic,
                    "dlt_partition": partition,
                    "dlt_offset": offset,
                    "blocker": failed.blocker,
                }
            )
        if not rows:
            return
        cursor.execute(
            "INSERT INTO revsync_exceptions (kind, order_key, consumer, reason, summary, "
            "event_id, event_type, correlation_id, dlt_topic, dlt_partition, dlt_offset, blocker) "
            "SELECT kind, order_key, %s, reason, summary, event_id, event_type, correlation_id, "
            "dlt_topic, dlt_partition, dlt_offset, blocker FROM jsonb_to_recordset(%s) AS x(kind "
            "text, order_key text, reason text, summary text, event_id uuid, event_type text, "
            "correlation_id text, dlt_topic text, dlt_partition integer, dlt_offset bigint, "
            "blocker text) ON CONFLICT DO NOTHING",
            (self.consumer, Jsonb(rows)),
        )


def _array_literal(values: list[str] | None) -> str | None:
    """A text[] literal of ``values``: the product lines travel as one text per order."""
    if values is None:
        return None
    quoted = (value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return "{" + ",".join(f'"{value}"' for value in quoted) + "}"


def purge_journey(connection: psycopg.Connection[Any], retention: timedelta) -> int:
    """Delete journey rows older than ``retention``; how many went."""
    with connection.transaction():
        cursor = connection.execute(
            "DELETE FROM revsync_journey WHERE at < now() - %s", (retention,)
        )
    return cursor.rowcount
