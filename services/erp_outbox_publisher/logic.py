"""The ERP outbox publisher's logic: an ERP outbox row (the ERP's own JSON, Debezium's outbox
columns) as revsync's canonical event. Pure: no I/O."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerStatus,
    Envelope,
    Event,
    InvoicePosted,
    PaymentMethod,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
    ShippedLine,
    SourceSystem,
    decimal_text,
)
from revsync.errors import ErrorClass, RevsyncError, invalid_fields

SCHEMA_VERSION = 1


class UnknownErpEventType(RevsyncError):
    """An ERP outbox row of a type revsync has no canonical event for."""

    error_class = ErrorClass.SCHEMA

    def __init__(self, row_id: uuid.UUID, event_type: str) -> None:
        super().__init__(f"erp outbox row {row_id}: unknown type {event_type!r}")
        self.row_id = row_id
        self.event_type = event_type


class ErpPayloadInvalid(RevsyncError):
    """An ERP outbox row whose payload cannot become its canonical event; ``field`` names
    the culprit (a dotted path into the payload, or the event field). The reason says what
    was expected and, at most, the type found: never the value, which may be the customer's
    (the relay logs a row that will not publish each time it tries it again)."""

    error_class = ErrorClass.VALIDATION

    def __init__(self, row_id: uuid.UUID, event_type: str, field: str, reason: str) -> None:
        super().__init__(f"erp outbox row {row_id} ({event_type}): {field}: {reason}")
        self.row_id = row_id
        self.event_type = event_type
        self.field = field


@dataclass(frozen=True)
class ErpOutboxRow:
    """One row of the ERP's Debezium-style outbox; ``aggregateid`` is the CRM id its event is
    keyed by: the order's for an order's documents, the account's for a customer."""

    id: uuid.UUID
    aggregatetype: str
    aggregateid: str
    type: str
    payload: Mapping[str, Any]
    created_at: datetime


ERP_COMPLETENESS = {
    "complete": ShipmentCompleteness.COMPLETE,
    "partial": ShipmentCompleteness.PARTIAL,
}
ERP_PAYMENT_METHODS = {
    "wire_transfer": PaymentMethod.WIRE,
    "ach": PaymentMethod.ACH,
    "card": PaymentMethod.CARD,
    "check": PaymentMethod.CHECK,
    "direct_debit": PaymentMethod.DIRECT_DEBIT,
}
"""ERP payment method codes; any other code is ``PaymentMethod.OTHER``."""
ERP_CUSTOMER_STATUSES = {
    "active": CustomerStatus.ACTIVE,
    "blocked": CustomerStatus.BLOCKED,
    "credit_hold": CustomerStatus.CREDIT_HOLD,
}
"""ERP customer statuses; any other is ``CustomerStatus.OTHER``."""


class _Payload:
    """Reads an outbox payload by dotted path; every failure names the row and the path."""

    def __init__(self, row: ErpOutboxRow) -> None:
        self.row = row

    def invalid(self, field: str, reason: str) -> ErpPayloadInvalid:
        return ErpPayloadInvalid(self.row.id, self.row.type, field, reason)

    def value(self, path: str) -> object:
        node: object = self.row.payload
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                raise self.invalid(path, "missing")
        return node

    def text(self, path: str) -> str:
        value = self.value(path)
        if not isinstance(value, str) or not value:
            raise self.invalid(path, f"expected non-empty text, got {_kind(value)}")
        return value

    def optional_text(self, path: str) -> str | None:
        try:
            value = self.value(path)
        except ErpPayloadInvalid:
            return None
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.invalid(path, f"expected text, got {_kind(value)}")
        return value or None

    def amount(self, path: str) -> Decimal:
        value = self.value(path)
        try:
            return decimal_text(value)
        except (TypeError, ValueError, InvalidOperation):
            raise self.invalid(path, f"expected a decimal string, got {_kind(value)}") from None

    def day(self, path: str) -> date:
        value = self.text(path)
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise self.invalid(path, "expected an ISO date") from None

    def moment(self, path: str) -> datetime:
        value = self.text(path)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.invalid(path, "expected an ISO timestamp") from None
        if moment.tzinfo is None:
            raise self.invalid(path, "a timestamp without its UTC offset")
        return moment

    def integer(self, path: str) -> int:
        value = self.value(path)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.invalid(path, f"expected an integer, got {_kind(value)}")
        return value

    def texts(self, path: str) -> list[str]:
        """The list of text at ``path``, empty or not."""
        value = self.value(path)
        if not isinstance(value, list):
            raise self.invalid(path, f"expected a list, got {_kind(value)}")
        return [self.text(f"{path}.{index}") for index in range(len(value))]

    def elements(self, path: str) -> list[str]:
        """The paths of the elements of the non-empty list at ``path``."""
        value = self.value(path)
        if not isinstance(value, list) or not value:
            raise self.invalid(path, "expected a non-empty list")
        return [f"{path}.{index}" for index in range(len(value))]


def canonical_event(row: ErpOutboxRow) -> Event:
    """The canonical event for one ERP outbox row.

    Raises :class:`UnknownErpEventType` for a type revsync does not map and
    :class:`ErpPayloadInvalid` for a payload that cannot fill its event.
    """
    mapping = _MAPPINGS.get(row.type)
    if mapping is None:
        raise UnknownErpEventType(row.id, row.type)
    payload = _Payload(row)
    if payload.text(mapping.key) != row.aggregateid:
        raise payload.invalid(mapping.key, "not the row's aggregateid")
    try:
        return mapping.build(payload)
    except ValidationError as error:
        field, why = invalid_fields(error)[0]
        raise payload.invalid(field or row.type, why) from None


def _kind(value: object) -> str:
    """What a value is, for an error that may not quote it."""
    if isinstance(value, str):
        return "other text" if value else "an empty string"
    return "null" if value is None else type(value).__name__


def _envelope(
    payload: _Payload, event_type: str, occurred_at: datetime, correlation_id: str
) -> Envelope:
    return Envelope(
        event_id=payload.row.id,
        event_type=event_type,
        occurred_at=occurred_at,
        source_system=SourceSystem.ERP,
        correlation_id=correlation_id,
        causation_id=None,
        schema_version=SCHEMA_VERSION,
    )


def _order_envelope(payload: _Payload, event_type: str, occurred_at: datetime) -> Envelope:
    """An order document's envelope, correlated as the order was booked (else by the order)."""
    correlation_id = payload.optional_text("sales_order.correlation_id")
    return _envelope(
        payload,
        event_type,
        occurred_at,
        correlation_id or payload.text("sales_order.external_id"),
    )


def _customer_envelope(payload: _Payload, event_type: str) -> Envelope:
    """A customer change's envelope, correlated by the CRM account."""
    return _envelope(
        payload,
        event_type,
        payload.moment("changed_at"),
        payload.text("customer.crm_account_id"),
    )


def _invoice_posted(payload: _Payload) -> InvoicePosted:
    return InvoicePosted(
        envelope=_order_envelope(
            payload, InvoicePosted.event_type, payload.moment("invoice.posted_at")
        ),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_order_id=payload.text("sales_order.id"),
        erp_invoice_id=payload.text("invoice.id"),
        invoice_number=payload.text("invoice.number"),
        erp_customer_id=payload.text("sales_order.customer_id"),
        crm_account_id=payload.text("sales_order.crm_account_id"),
        currency=payload.text("invoice.currency"),
        subtotal=payload.amount("invoice.subtotal"),
        tax_total=payload.amount("invoice.tax_total"),
        grand_total=payload.amount("invoice.grand_total"),
        amount_due=payload.amount("invoice.amount_due"),
        posting_date=payload.day("invoice.posting_date"),
        due_date=payload.day("invoice.due_date"),
        payment_terms=payload.text("invoice.payment_terms"),
        legal_entity=payload.text("sales_order.legal_entity"),
        region=payload.text("sales_order.region"),
        posted_at=payload.moment("invoice.posted_at"),
    )


def _shipment_confirmed(payload: _Payload) -> ShipmentConfirmed:
    completeness = payload.text("shipment.completeness")
    if completeness not in ERP_COMPLETENESS:
        raise payload.invalid(
            "shipment.completeness", f"not one of {', '.join(sorted(ERP_COMPLETENESS))}"
        )
    lines = [
        ShippedLine(
            line_number=payload.integer(f"{line}.line_number"),
            sku=payload.text(f"{line}.sku"),
            quantity_shipped=payload.amount(f"{line}.quantity"),
        )
        for line in payload.elements("shipment.lines")
    ]
    return ShipmentConfirmed(
        envelope=_order_envelope(
            payload, ShipmentConfirmed.event_type, payload.moment("shipment.shipped_at")
        ),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_order_id=payload.text("sales_order.id"),
        erp_shipment_id=payload.text("shipment.id"),
        lines=lines,
        carrier=payload.text("shipment.carrier"),
        tracking_number=payload.text("shipment.tracking_number"),
        tracking_url=payload.optional_text("shipment.tracking_url"),
        completeness=ERP_COMPLETENESS[completeness],
        warehouse=payload.optional_text("shipment.warehouse"),
        shipped_at=payload.moment("shipment.shipped_at"),
    )


def _payment_received(payload: _Payload) -> PaymentReceived:
    method = payload.text("payment.method")
    return PaymentReceived(
        envelope=_order_envelope(
            payload, PaymentReceived.event_type, payload.moment("payment.received_at")
        ),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_payment_id=payload.text("payment.id"),
        erp_invoice_id=payload.text("invoice.id"),
        invoice_number=payload.text("invoice.number"),
        currency=payload.text("payment.currency"),
        amount=payload.amount("payment.amount"),
        remaining_balance=payload.amount("invoice.amount_due"),
        payment_method=ERP_PAYMENT_METHODS.get(method, PaymentMethod.OTHER),
        received_at=payload.moment("payment.received_at"),
    )


def _customer_status(payload: _Payload, path: str) -> CustomerStatus:
    return ERP_CUSTOMER_STATUSES.get(payload.text(path), CustomerStatus.OTHER)


def _customer_mastered(payload: _Payload) -> CustomerMastered:
    return CustomerMastered(
        envelope=_customer_envelope(payload, CustomerMastered.event_type),
        crm_account_id=payload.text("customer.crm_account_id"),
        erp_customer_id=payload.text("customer.id"),
        customer_number=payload.text("customer.number"),
        name=payload.text("customer.name"),
        legal_entity=payload.text("customer.legal_entity"),
        currency=payload.text("customer.currency"),
        status=_customer_status(payload, "customer.status"),
        credit_limit=payload.amount("customer.credit_limit"),
        payment_terms=payload.text("customer.payment_terms"),
        blocks=payload.texts("customer.blocks"),
        changed_at=payload.moment("changed_at"),
    )


def _credit_status_changed(payload: _Payload) -> CreditStatusChanged:
    return CreditStatusChanged(
        envelope=_customer_envelope(payload, CreditStatusChanged.event_type),
        crm_account_id=payload.text("customer.crm_account_id"),
        erp_customer_id=payload.text("customer.id"),
        status=_customer_status(payload, "credit.status"),
        currency=payload.text("credit.currency"),
        credit_limit=payload.amount("credit.credit_limit"),
        exposure=payload.amount("credit.exposure"),
        available_credit=payload.amount("credit.available_credit"),
        changed_at=payload.moment("changed_at"),
    )


@dataclass(frozen=True)
class _Mapping:
    """How one type of row becomes its event."""

    key: str
    """The payload path of the CRM id the row must be keyed by (its ``aggregateid``)."""
    build: Callable[[_Payload], Event]


_ORDER_KEY = "sales_order.external_id"
_ACCOUNT_KEY = "customer.crm_account_id"
_MAPPINGS: dict[str, _Mapping] = {
    "InvoicePosted": _Mapping(_ORDER_KEY, _invoice_posted),
    "ShipmentConfirmed": _Mapping(_ORDER_KEY, _shipment_confirmed),
    "PaymentReceived": _Mapping(_ORDER_KEY, _payment_received),
    "CustomerMastered": _Mapping(_ACCOUNT_KEY, _customer_mastered),
    "CreditStatusChanged": _Mapping(_ACCOUNT_KEY, _credit_status_changed),
}
