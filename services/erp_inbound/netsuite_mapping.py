"""NetSuite's records, as SuiteQL answers them, as the ERP outbox rows revsync's canonical
events are made from: an invoice (``CustInvc``) is an ``InvoicePosted``, a shipped item
fulfilment (``ItemShip``) a ``ShipmentConfirmed``, a customer payment (``CustPymt``) one
``PaymentReceived`` for each invoice it is applied to, and each new version of a customer
whose external id is a CRM account a ``CustomerMastered``, with a ``CreditStatusChanged``
when its credit limit or hold moved. Pure: no I/O.

SuiteQL answers every value as text and leaves a null column out of its item, so a row is a
mapping of lower-cased column names to text; the queries (:mod:`erp_inbound.netsuite`) name
their columns as this module reads them. Local times are the account's, at second precision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from erp_inbound.sink import Change, event_id

SYSTEM = "netsuite"
LOCAL_TIME = "%Y-%m-%d %H:%M:%S"
"""How the queries format a date-time: ``TO_CHAR(x, 'YYYY-MM-DD HH24:MI:SS')``."""
LOCAL_DATE = "%Y-%m-%d"
SHIPPED = "C"
"""An item fulfilment's ``shipstatus`` once shipped (A picked, B packed)."""
CREDIT_HOLD_ON = "ON"
"""``creditholdoverride`` that puts a customer on credit hold (AUTO lets NetSuite decide)."""
PAYMENT_METHODS = {
    "wire": "wire_transfer",
    "wire transfer": "wire_transfer",
    "ach": "ach",
    "eft": "ach",
    "check": "check",
    "cheque": "check",
    "card": "card",
    "credit card": "card",
    "visa": "card",
    "master card": "card",
    "mastercard": "card",
    "american express": "card",
    "discover": "card",
    "direct debit": "direct_debit",
}
"""NetSuite payment method names (lower-cased) as the reference ERP's method codes; any other
name passes as it is, which the canonical event reports as OTHER."""


class Kind(StrEnum):
    """A kind of record revsync reads from NetSuite, by its REST record type."""

    INVOICE = "invoice"
    """An invoice (SuiteQL ``transaction`` of type ``CustInvc``): InvoicePosted."""
    FULFILLMENT = "itemFulfillment"
    """An item fulfilment (type ``ItemShip``), once shipped: ShipmentConfirmed."""
    PAYMENT = "customerPayment"
    """A customer payment (type ``CustPymt``) applied to invoices: PaymentReceived."""
    CUSTOMER = "customer"
    """A customer with a CRM account's id as its external id: CustomerMastered, and
    CreditStatusChanged when its credit moved."""

    @classmethod
    def of_record_type(cls, record_type: str) -> Kind | None:
        """The kind of a record type as NetSuite spells it anywhere (REST ``itemFulfillment``,
        SuiteScript's ``itemfulfillment``), or None for a type revsync does not read."""
        return _BY_LOWER.get(record_type.lower())


_BY_LOWER = {kind.value.lower(): kind for kind in Kind}


class RowInvalid(ValueError):
    """A SuiteQL row revsync cannot read: ``column`` names the culprit; never its value."""

    def __init__(self, kind: Kind, record_id: str, column: str, reason: str) -> None:
        super().__init__(f"netsuite {kind} {record_id}: {column}: {reason}")
        self.column = column


# --- the account's clock ----------------------------------------------------------------------


def earliest_instant(local: str, zone: ZoneInfo) -> datetime:
    """The earliest moment the account's local time ``local`` can name, in UTC: in the hour a
    clock turned back twice, its first pass; in the hour skipped going forward (which NetSuite
    never answers), the hour before. A watermark made of these is never later than the
    truth, so nothing behind it is skipped; what it re-reads is known by its event id."""
    naive = datetime.strptime(local, LOCAL_TIME)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return min(first, second)


def local_text(instant: datetime, zone: ZoneInfo) -> str:
    """``instant`` as the account's local time, as a query compares it with
    ``TO_TIMESTAMP(..., 'YYYY-MM-DD HH24:MI:SS')``; a fraction of a second is cut, never
    rounded up, so the bound it makes is not later than ``instant``."""
    return instant.astimezone(zone).strftime(LOCAL_TIME)


def query_bound(instant: datetime, zone: ZoneInfo) -> str:
    """The local time a query reads from so that nothing modified at or after ``instant`` is
    left out, whichever moment NetSuite takes a local time to be. In the hour a clock turns
    back, a local time names two moments, and a database may take either (PostgreSQL takes
    the later): a bound there is moved back before the repeated hour, which only widens the
    window."""
    while True:
        text = local_text(instant, zone)
        naive = datetime.strptime(text, LOCAL_TIME)
        latest = max(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
        if latest <= instant:
            return text
        instant -= latest - instant


# --- reading rows ------------------------------------------------------------------------------


class _Row:
    """One SuiteQL item of one record; every failure names the record and the column."""

    def __init__(self, kind: Kind, values: Mapping[str, Any]) -> None:
        self.kind = kind
        self.values = values
        self.id = str(values.get("id") or "?")

    def invalid(self, column: str, reason: str) -> RowInvalid:
        return RowInvalid(self.kind, self.id, column, reason)

    def optional(self, column: str) -> str | None:
        value = self.values.get(column)
        if value is None or value == "":
            return None
        return str(value)

    def text(self, column: str) -> str:
        value = self.optional(column)
        if value is None:
            raise self.invalid(column, "missing")
        return value

    def amount(self, column: str, default: str | None = None) -> str:
        """A decimal as the canonical text the outbox payloads carry (``1200.5000`` and
        ``1200.5`` alike are ``1200.5``)."""
        value = self.optional(column) or default
        if value is None:
            raise self.invalid(column, "missing")
        try:
            return decimal_text(value)
        except ValueError:
            raise self.invalid(column, "not a decimal") from None

    def day(self, column: str) -> date:
        text = self.text(column)
        try:
            return datetime.strptime(text, LOCAL_DATE).date()
        except ValueError:
            raise self.invalid(column, "not a YYYY-MM-DD date") from None

    def moment(self, column: str, zone: ZoneInfo) -> datetime:
        text = self.text(column)
        try:
            return earliest_instant(text, zone)
        except ValueError:
            raise self.invalid(column, "not a YYYY-MM-DD HH24:MI:SS time") from None

    def flag(self, column: str) -> bool:
        """NetSuite's booleans: ``T``/``F`` in SuiteQL (``true``/``false`` elsewhere)."""
        return (self.optional(column) or "F").upper() in ("T", "TRUE")


def decimal_text(value: str) -> str:
    """A decimal's text without trailing zeros (``1200.5000`` is ``1200.5``); ValueError for
    text that is no finite decimal."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError("not a decimal") from None
    if not number.is_finite():
        raise ValueError("not a finite decimal")
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "") else text


# --- what the mapping knows beyond the row ------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The account's settings the mapping needs."""

    account_id: str
    entities: Mapping[str, str]
    """Legal entity by subsidiary internal id: only these subsidiaries' records are read."""
    zone: ZoneInfo
    regions: Mapping[str, str] = field(default_factory=dict)
    """Sales region by legal entity, for a sales order that names no location."""
    locations: Mapping[str, str] = field(default_factory=dict)
    """Sales region by location internal id; a location not here is a region itself."""

    def region(self, location: str | None, entity: str) -> str | None:
        """The sales region of an order at ``location`` of legal entity ``entity``."""
        if location is None:
            return self.regions.get(entity)
        return self.locations.get(location, location)


@dataclass(frozen=True)
class ShippedLine:
    line_number: int
    sku: str
    quantity: str


@dataclass(frozen=True)
class Application:
    """A payment's application to one invoice, with that invoice's figures."""

    invoice_id: str
    invoice_number: str
    amount: str
    invoice_total: str
    invoice_remaining: str


@dataclass(frozen=True)
class CreditState:
    """What revsync last published of a customer's credit."""

    version: str
    credit_limit: str
    status: str


@dataclass(frozen=True)
class Exposure:
    """A customer's exposure in its currency: open orders and unpaid invoices."""

    amount: str


def legal_entity(row: _Row, account: Account) -> str | None:
    subsidiary = row.optional("subsidiary")
    return None if subsidiary is None else account.entities.get(subsidiary)


def _change(
    account: Account,
    kind: Kind,
    record_id: str,
    event_type: str,
    version: str,
    aggregateid: str,
    payload: dict[str, Any],
    read_at: datetime,
) -> Change:
    return Change(
        id=event_id(SYSTEM, account.account_id, kind.value, record_id, event_type, version),
        type=event_type,
        aggregateid=aggregateid,
        payload=payload,
        read_at=read_at,
    )


def placed_by_revsync(row: _Row) -> bool:
    """Whether a document's sales order came from a CRM order (its external id is the CRM
    order id): the documents of orders entered in NetSuite itself, or of none, are not the
    CRM's to hear of."""
    return row.optional("so_externalid") is not None


def sales_order_reference(row: _Row, account: Account, entity: str) -> dict[str, Any]:
    """What every document's payload says about its sales order (columns ``so_*``), as the
    reference ERP's outbox rows do: its CRM order id is the order's external id, its region
    the order's location's (else the legal entity's)."""
    return {
        "id": row.optional("so_id"),
        "number": row.optional("so_tranid"),
        "external_id": row.optional("so_externalid"),
        "customer_id": row.optional("entity"),
        "crm_account_id": row.optional("crm_account_id"),
        "legal_entity": entity,
        "region": account.region(row.optional("so_location"), entity),
        "currency": row.optional("currency"),
        "correlation_id": row.optional("so_memo"),
    }


def invoice_changes(values: Mapping[str, Any], account: Account, read_at: datetime) -> list[Change]:
    """An invoice of a configured subsidiary as its ``InvoicePosted`` (once: its id does not
    depend on the invoice's later edits or payments)."""
    row = _Row(Kind.INVOICE, values)
    entity = legal_entity(row, account)
    if entity is None or not placed_by_revsync(row):
        return []
    order = sales_order_reference(row, account, entity)
    total = row.amount("total")
    subtotal = row.amount("subtotal", total)
    tax_total = row.amount("taxtotal", str(Decimal(total) - Decimal(subtotal)))
    posted_at = row.moment("created", account.zone)
    payload = {
        "invoice": {
            "id": row.id,
            "number": row.optional("tranid"),
            "status": "posted",
            "currency": row.optional("currency"),
            "subtotal": subtotal,
            "tax_total": tax_total,
            "grand_total": total,
            "amount_due": row.amount("remaining", total),
            "posting_date": row.day("trandate").isoformat(),
            "due_date": row.day("duedate").isoformat() if row.optional("duedate") else None,
            "payment_terms": row.optional("terms"),
            "posted_at": posted_at.isoformat(),
        },
        "sales_order": order,
    }
    return [
        _change(
            account,
            Kind.INVOICE,
            row.id,
            "InvoicePosted",
            "",
            order["external_id"] or "",
            payload,
            read_at,
        )
    ]


def fulfillment_changes(
    values: Mapping[str, Any],
    lines: Sequence[ShippedLine],
    account: Account,
    read_at: datetime,
) -> list[Change]:
    """A shipped item fulfilment of a configured subsidiary as its ``ShipmentConfirmed``;
    one not shipped yet (picked, packed) is nothing yet: it is read again when it ships."""
    row = _Row(Kind.FULFILLMENT, values)
    entity = legal_entity(row, account)
    if entity is None or (row.optional("shipstatus") or "").upper() != SHIPPED:
        return []
    if not placed_by_revsync(row):
        return []
    order = sales_order_reference(row, account, entity)
    shipped_at = row.moment("modified", account.zone)
    payload = {
        "shipment": {
            "id": row.id,
            "number": row.optional("tranid"),
            "carrier": row.optional("carrier"),
            "tracking_number": row.optional("trackingnumber"),
            "tracking_url": row.optional("trackingurl"),
            "completeness": "partial" if row.flag("partial") else "complete",
            "warehouse": row.optional("location"),
            "lines": [
                {"line_number": line.line_number, "sku": line.sku, "quantity": line.quantity}
                for line in lines
            ],
            "shipped_at": shipped_at.isoformat(),
        },
        "sales_order": order,
    }
    return [
        _change(
            account,
            Kind.FULFILLMENT,
            row.id,
            "ShipmentConfirmed",
            "",
            order["external_id"] or "",
            payload,
            read_at,
        )
    ]


def payment_method(name: str | None) -> str:
    if name is None:
        return "other"
    return PAYMENT_METHODS.get(name.strip().lower(), name)


def payment_changes(
    values: Mapping[str, Any],
    applications: Sequence[tuple[Mapping[str, Any], Application]],
    account: Account,
    read_at: datetime,
) -> list[Change]:
    """A customer payment of a configured subsidiary as one ``PaymentReceived`` for each
    invoice it is applied to (each with that invoice's order, in ``applications`` as the row
    of the invoice's sales order and the application); an unapplied payment is nothing yet."""
    row = _Row(Kind.PAYMENT, values)
    entity = legal_entity(row, account)
    if entity is None:
        return []
    received_at = row.moment("created", account.zone)
    changes = []
    for order_values, applied in applications:
        order_row = _Row(Kind.PAYMENT, order_values)
        if not placed_by_revsync(order_row):
            continue
        order = sales_order_reference(order_row, account, entity)
        payload = {
            "payment": {
                "id": row.id,
                "number": row.optional("tranid"),
                "amount": applied.amount,
                "currency": row.optional("currency"),
                "method": payment_method(row.optional("paymentmethod")),
                "received_at": received_at.isoformat(),
            },
            "invoice": {
                "id": applied.invoice_id,
                "number": applied.invoice_number,
                "grand_total": applied.invoice_total,
                "amount_due": applied.invoice_remaining,
            },
            "sales_order": order,
        }
        changes.append(
            _change(
                account,
                Kind.PAYMENT,
                f"{row.id}/{applied.invoice_id}",
                "PaymentReceived",
                "",
                order["external_id"] or "",
                payload,
                read_at,
            )
        )
    return changes


def customer_status(row: _Row) -> str:
    """The reference ERP's status of a customer: inactive is blocked, a credit hold set on
    is credit_hold, else active."""
    if row.flag("isinactive"):
        return "blocked"
    if (row.optional("creditholdoverride") or "").upper() == CREDIT_HOLD_ON:
        return "credit_hold"
    return "active"


def blocks(listed: str | None) -> list[str]:
    """The customer's blocks (``order``, ``delivery``, ``billing``), kept in a custom entity
    field as a comma-separated list."""
    if listed is None:
        return []
    return sorted({block.strip() for block in listed.split(",") if block.strip()})


@dataclass(frozen=True)
class CustomerVersion:
    """One version of a customer as read: its document, credit and version text."""

    customer_id: str
    crm_account_id: str | None
    entity: str
    version: str
    document: dict[str, Any]
    changed_at: datetime
    credit: CreditState


def customer_version(values: Mapping[str, Any], account: Account) -> CustomerVersion | None:
    """A customer of a configured subsidiary as read now, or None for one revsync does not
    publish (another subsidiary's).

    Its version is its last-modified time with a digest of what revsync publishes of it: two
    edits within one second (NetSuite's times are read to the second) are two versions, and
    the same state read again is the same version."""
    row = _Row(Kind.CUSTOMER, values)
    entity = legal_entity(row, account)
    if entity is None:
        return None
    status = customer_status(row)
    credit_limit = row.amount("creditlimit", "0")
    document = {
        "id": row.id,
        "number": row.optional("entityid"),
        "name": row.optional("companyname"),
        "crm_account_id": row.optional("externalid"),
        "legal_entity": entity,
        "status": status,
        "credit_limit": credit_limit,
        "currency": row.optional("currency"),
        "payment_terms": row.optional("terms"),
        "blocks": blocks(row.optional("custentity_revsync_blocks")),
        "tax_id": row.optional("vatregnumber"),
        "duns": row.optional("custentity_revsync_duns"),
    }
    modified = row.text("modified")
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]
    version = f"{modified} {digest}"
    return CustomerVersion(
        customer_id=row.id,
        crm_account_id=row.optional("externalid"),
        entity=entity,
        version=version,
        document=document,
        changed_at=row.moment("modified", account.zone),
        credit=CreditState(version, credit_limit, status),
    )


def credit_moved(before: CreditState | None, after: CreditState) -> bool:
    """Whether a customer's credit limit or hold moved since revsync last published it; a
    customer seen for the first time has nothing to move from."""
    if before is None:
        return False
    return (Decimal(before.credit_limit), before.status) != (
        Decimal(after.credit_limit),
        after.status,
    )


def customer_changes(
    customer: CustomerVersion,
    before: CreditState | None,
    exposure: Exposure | None,
    account: Account,
    read_at: datetime,
) -> list[Change]:
    """A customer's new version as ``CustomerMastered``, and ``CreditStatusChanged`` too when
    its credit moved (``exposure`` is then its exposure); a customer no CRM account masters
    has nothing to be keyed by, and the same version read again is nothing new."""
    if customer.crm_account_id is None:
        return []
    if before is not None and before.version == customer.version:
        return []
    changed_at = customer.changed_at.isoformat()
    document = {**customer.document, "updated_at": changed_at}
    changes = [
        _change(
            account,
            Kind.CUSTOMER,
            customer.customer_id,
            "CustomerMastered",
            customer.version,
            customer.crm_account_id,
            {"customer": document, "changed_at": changed_at},
            read_at,
        )
    ]
    if credit_moved(before, customer.credit):
        owed = Decimal(exposure.amount if exposure is not None else "0")
        limit = Decimal(customer.credit.credit_limit)
        changes.append(
            _change(
                account,
                Kind.CUSTOMER,
                customer.customer_id,
                "CreditStatusChanged",
                customer.version,
                customer.crm_account_id,
                {
                    "customer": document,
                    "credit": {
                        "status": customer.credit.status,
                        "currency": customer.document["currency"],
                        "credit_limit": customer.credit.credit_limit,
                        "exposure": decimal_text(str(owed)),
                        "available_credit": decimal_text(str(limit - owed)),
                    },
                    "changed_at": changed_at,
                },
                read_at,
            )
        )
    return changes


def shipped_line(values: Mapping[str, Any], kind: Kind = Kind.FULFILLMENT) -> ShippedLine:
    """One line of an item fulfilment (columns ``line``, ``sku``, ``quantity``)."""
    row = _Row(kind, values)
    try:
        number = int(row.text("line"))
    except ValueError:
        raise row.invalid("line", "not an integer") from None
    quantity = row.amount("quantity")
    return ShippedLine(number, row.text("sku"), decimal_text(str(abs(Decimal(quantity)))))


def application(values: Mapping[str, Any]) -> Application:
    """One application of a payment to an invoice (columns ``invoice_id``,
    ``invoice_tranid``, ``applied``, ``invoice_total``, ``invoice_remaining``)."""
    row = _Row(Kind.PAYMENT, values)
    return Application(
        invoice_id=row.text("invoice_id"),
        invoice_number=row.optional("invoice_tranid") or row.text("invoice_id"),
        amount=row.amount("applied"),
        invoice_total=row.amount("invoice_total"),
        invoice_remaining=row.amount("invoice_remaining", "0"),
    )


def since(watermark: datetime | None, overlap_s: float, first: datetime) -> datetime:
    """Where a poll reads from: ``overlap_s`` before the watermark (for what was modified
    before a slower transaction committed it), or ``first`` before any watermark."""
    if watermark is None:
        return first
    return watermark - timedelta(seconds=overlap_s)
