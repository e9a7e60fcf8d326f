"""Business Central's documents and customers as the changes a database ERP's outbox would
carry: a posted sales invoice as ``InvoicePosted``, a sales shipment as ``ShipmentConfirmed``,
a customer payment applied to an invoice as ``PaymentReceived``, each new version of a customer
linked to a CRM account as ``CustomerMastered``, and ``CreditStatusChanged`` when its credit
limit or blocked status moved. Pure: the records come in already read, with what the reading
side resolved for them (the order a document belongs to, the CRM account of a customer, the
payment terms' code)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from erp_inbound.sink import Change, event_id

SYSTEM = "business-central"
POSTED_INVOICE_STATUSES = frozenset({"Open", "Paid"})
"""A sales invoice in these states is posted; a draft is not yet, a cancelled or corrective
one is not a sale."""
NO_ID = "00000000-0000-0000-0000-000000000000"
"""The empty GUID Business Central fills a reference field with when it points at nothing."""
BLOCKED = {
    "": ("active", []),
    " ": ("active", []),
    "Ship": ("active", ["delivery"]),
    "Invoice": ("active", ["billing"]),
    "All": ("blocked", ["order", "delivery", "billing"]),
}
"""A customer's ``blocked`` as the reference ERP's status and blocks: ``All`` blocks every
transaction (the customer is blocked); ``Ship`` and ``Invoice`` block deliveries or billing
only, the customer staying active."""
PAYMENT_METHODS = frozenset({"wire_transfer", "ach", "card", "check", "direct_debit"})
"""The payment methods revsync reports by name."""
COMPLETENESS = "complete"
"""What a posted shipment reports: Business Central posts one shipment per shipped quantity
and gives no partial flag, so every posted shipment is reported complete for what it holds."""


class RecordInvalid(ValueError):
    """A Business Central record lacks what its change needs; says the entity, the record
    and the field, never the value."""

    def __init__(self, entity: str, record_id: str, field: str, reason: str) -> None:
        super().__init__(f"{SYSTEM}: {entity} {record_id}: {field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class Company:
    """One Business Central company revsync reads, and the legal entity it books for."""

    tenant: str
    """The tenant and environment (``tenant/environment``): a company id is unique in it."""
    id: str
    legal_entity: str
    currency: str
    """The company's own currency, which a blank ``currencyCode`` means."""

    @property
    def scope(self) -> str:
        return f"{self.tenant}/{self.id}"


@dataclass(frozen=True)
class OrderReference:
    """What every document's change says about the sales order it came from (the reference
    ERP's ``sales_order`` payload); ``external_id`` is the CRM order id, carried on the
    document as ``externalDocumentNumber``."""

    id: str
    number: str
    external_id: str
    customer_id: str
    crm_account_id: str
    legal_entity: str
    region: str
    currency: str

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "number": self.number,
            "external_id": self.external_id,
            "customer_id": self.customer_id,
            "crm_account_id": self.crm_account_id,
            "legal_entity": self.legal_entity,
            "region": self.region,
            "currency": self.currency,
            "correlation_id": None,
        }


@dataclass(frozen=True)
class CreditState:
    """The credit fields of one version of a customer: a change of these is a credit status
    change."""

    version: datetime
    credit_limit: Decimal
    standing: str
    """Business Central's ``blocked`` and the status revsync reports, together."""


def moment(value: object) -> datetime:
    """A Business Central timestamp (ISO 8601, UTC) as an aware datetime."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected an ISO timestamp")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("a timestamp without its UTC offset")
    return parsed.astimezone(UTC)


def stamp(value: datetime) -> str:
    """A timestamp as Business Central writes it in a filter: UTC, milliseconds, ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def modified(entity: str, record: Mapping[str, Any]) -> datetime:
    """A record's ``lastModifiedDateTime``: its version."""
    try:
        return moment(record.get("lastModifiedDateTime"))
    except ValueError as error:
        raise RecordInvalid(entity, _id(record), "lastModifiedDateTime", str(error)) from None


def reference_id(value: object) -> str | None:
    """A GUID reference, or None when it points at nothing."""
    if not isinstance(value, str) or not value or value == NO_ID:
        return None
    return value


def is_posted(invoice: Mapping[str, Any]) -> bool:
    return invoice.get("status") in POSTED_INVOICE_STATUSES


def _id(record: Mapping[str, Any]) -> str:
    value = record.get("id")
    return value if isinstance(value, str) and value else "(no id)"


class _Fields:
    """Reads one record's fields; every failure names the entity, the record and the field."""

    def __init__(self, entity: str, record: Mapping[str, Any]) -> None:
        self.entity = entity
        self.record = record
        self.id = _id(record)

    def invalid(self, field: str, reason: str) -> RecordInvalid:
        return RecordInvalid(self.entity, self.id, field, reason)

    def text(self, field: str) -> str:
        value = self.record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise self.invalid(field, "expected non-empty text")
        return value

    def optional_text(self, field: str) -> str | None:
        value = self.record.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise self.invalid(field, "expected text")
        return value

    def amount(self, field: str) -> str:
        """A decimal amount as the reference ERP's payloads carry it: text, four places."""
        value = self.record.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise self.invalid(field, "expected a number")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise self.invalid(field, "expected a number") from None
        if not number.is_finite():
            raise self.invalid(field, "expected a finite number")
        return f"{number.quantize(Decimal('0.0001')):f}"

    def day(self, field: str) -> str:
        value = self.text(field)
        try:
            return datetime.fromisoformat(value[:10]).date().isoformat()
        except ValueError:
            raise self.invalid(field, "expected an ISO date") from None

    def modified(self) -> datetime:
        return modified(self.entity, self.record)


def document_id(company: Company, entity: str, record_id: str, event_type: str) -> Any:
    """The event id of a document's change: a document happens once, so it has no version."""
    return event_id(SYSTEM, company.scope, entity, record_id, event_type, "")


def customer_event_id(
    company: Company, customer_id: str, event_type: str, version: datetime
) -> Any:
    """The event id of one version of a customer."""
    return event_id(SYSTEM, company.scope, "customers", customer_id, event_type, stamp(version))


def invoice_posted(
    company: Company,
    invoice: Mapping[str, Any],
    order: OrderReference,
    payment_terms: str,
    read_at: datetime,
) -> Change:
    """A posted sales invoice as ``InvoicePosted``, its amount due what was still open when
    read. Business Central keeps no posting time: an invoice read while still open was
    posted at its ``lastModifiedDateTime``; one first read already paid (its notification
    missed) was changed since, so it is said posted at the start of its posting date."""
    fields = _Fields("salesInvoices", invoice)
    posted_at = fields.modified()
    if invoice.get("status") != "Open":
        posting_day = datetime.fromisoformat(fields.day("postingDate")).replace(tzinfo=UTC)
        posted_at = min(posted_at, posting_day)
    payload = {
        "invoice": {
            "id": fields.id,
            "number": fields.text("number"),
            "status": "posted",
            "currency": order.currency,
            "subtotal": fields.amount("totalAmountExcludingTax"),
            "tax_total": fields.amount("totalTaxAmount"),
            "grand_total": fields.amount("totalAmountIncludingTax"),
            "amount_due": fields.amount("remainingAmount"),
            "posting_date": fields.day("postingDate"),
            "due_date": fields.day("dueDate"),
            "payment_terms": payment_terms,
            "posted_at": posted_at.isoformat(),
        },
        "sales_order": order.payload(),
    }
    return Change(
        id=document_id(company, "salesInvoices", fields.id, "InvoicePosted"),
        type="InvoicePosted",
        aggregateid=order.external_id,
        payload=payload,
        read_at=read_at,
    )


def shipment_confirmed(
    company: Company,
    shipment: Mapping[str, Any],
    order: OrderReference,
    skus: Mapping[str, str],
    read_at: datetime,
) -> Change:
    """A posted sales shipment (with its ``salesShipmentLines``) as ``ShipmentConfirmed``:
    its item lines, the shipping agent as carrier and the package tracking number. ``skus``
    are item numbers by item id, for lines that name their item only by id."""
    fields = _Fields("salesShipments", shipment)
    lines_value = shipment.get("salesShipmentLines")
    if not isinstance(lines_value, list):
        raise fields.invalid("salesShipmentLines", "expected the expanded lines")
    lines = []
    for index, value in enumerate(lines_value):
        if not isinstance(value, Mapping):
            raise fields.invalid(f"salesShipmentLines.{index}", "expected a line")
        line = _Fields("salesShipmentLines", value)
        if value.get("lineType", "Item") != "Item":
            continue
        sku = line.optional_text("lineObjectNumber") or skus.get(str(value.get("itemId")))
        if sku is None:
            raise fields.invalid(f"salesShipmentLines.{index}.lineObjectNumber", "no item")
        sequence = value.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise fields.invalid(f"salesShipmentLines.{index}.sequence", "expected an integer")
        lines.append({"line_number": sequence, "sku": sku, "quantity": line.amount("quantity")})
    shipped_at = fields.modified()
    payload = {
        "shipment": {
            "id": fields.id,
            "number": fields.text("number"),
            "carrier": fields.text("shippingAgentCode"),
            "tracking_number": fields.text("packageTrackingNo"),
            "tracking_url": fields.optional_text("packageTrackingUrl"),
            "completeness": COMPLETENESS,
            "warehouse": fields.optional_text("locationCode"),
            "lines": lines,
            "shipped_at": shipped_at.isoformat(),
        },
        "sales_order": order.payload(),
    }
    return Change(
        id=document_id(company, "salesShipments", fields.id, "ShipmentConfirmed"),
        type="ShipmentConfirmed",
        aggregateid=order.external_id,
        payload=payload,
        read_at=read_at,
    )


def payment_received(
    company: Company,
    payment: Mapping[str, Any],
    invoice: Mapping[str, Any],
    order: OrderReference,
    read_at: datetime,
) -> Change:
    """A customer payment applied to ``invoice`` as ``PaymentReceived``: in the invoice's
    currency, the invoice's remaining amount as read the balance left."""
    fields = _Fields("customerPayments", payment)
    invoice_fields = _Fields("salesInvoices", invoice)
    payload = {
        "payment": {
            "id": fields.id,
            "number": fields.optional_text("documentNumber") or fields.id,
            "amount": f"{abs(Decimal(fields.amount('amount'))):f}",
            "currency": order.currency,
            "method": _payment_method(fields),
            "received_at": fields.modified().isoformat(),
        },
        "invoice": {
            "id": invoice_fields.id,
            "number": invoice_fields.text("number"),
            "grand_total": invoice_fields.amount("totalAmountIncludingTax"),
            "amount_due": invoice_fields.amount("remainingAmount"),
        },
        "sales_order": order.payload(),
    }
    return Change(
        id=document_id(company, "customerPayments", fields.id, "PaymentReceived"),
        type="PaymentReceived",
        aggregateid=order.external_id,
        payload=payload,
        read_at=read_at,
    )


LINK_CREDIT_STATUSES = {"Active": "active", "Blocked": "blocked", "Credit Hold": "credit_hold"}
"""revsync's customer link's ``creditStatus`` as the reference ERP's customer status."""


@dataclass(frozen=True)
class Standing:
    """What a customer's version says of its credit: the reference ERP's status and blocks,
    its credit limit, and its exposure (what it owes and has on order)."""

    status: str
    blocks: list[str]
    credit_limit: Decimal
    exposure: Decimal
    blocked: str
    """Business Central's own ``blocked``."""

    def state(self, version: datetime) -> CreditState:
        return CreditState(version, self.credit_limit, f"{self.blocked}|{self.status}")


def standing(customer: Mapping[str, Any], link: Mapping[str, Any] | None) -> Standing:
    """A customer's credit standing: from revsync's customer link where it says it (its
    ``creditStatus``, ``blocks`` and ``exposure``, the reference ERP's own terms), else from
    Business Central's ``blocked`` and ``balanceDue``."""
    fields = _Fields("customers", customer)
    blocked = customer.get("blocked") or " "
    if not isinstance(blocked, str):
        raise fields.invalid("blocked", "expected text")
    blocked = blocked.strip() or " "
    derived = BLOCKED.get(blocked)
    if derived is None:
        raise fields.invalid("blocked", f"not one of {', '.join(repr(b) for b in BLOCKED)}")
    status, blocks = derived[0], list(derived[1])
    link = link or {}
    linked_status = link.get("creditStatus")
    if isinstance(linked_status, str) and linked_status in LINK_CREDIT_STATUSES:
        status = LINK_CREDIT_STATUSES[linked_status]
    linked_blocks = link.get("blocks")
    if isinstance(linked_blocks, str):
        blocks = [block for block in linked_blocks.split(",") if block]
    if link.get("exposure") is not None:
        exposure = Decimal(_Fields("customerLinks", link).amount("exposure"))
    else:
        exposure = Decimal(fields.amount("balanceDue"))
    return Standing(status, blocks, Decimal(fields.amount("creditLimit")), exposure, blocked)


def _payment_method(fields: _Fields) -> str:
    """A payment's method: its payment method code, or the method its journal line's
    description names; any other is reported as ``other``."""
    for name in ("paymentMethodCode", "description"):
        value = fields.optional_text(name)
        if value is not None and value.strip().lower() in PAYMENT_METHODS:
            return value.strip().lower()
    return "other"


def credit_state(customer: Mapping[str, Any], link: Mapping[str, Any] | None) -> CreditState:
    """The credit fields of a customer's version, as compared with the next."""
    return standing(customer, link).state(modified("customers", customer))


def customer_changes(
    company: Company,
    customer: Mapping[str, Any],
    link: Mapping[str, Any],
    payment_terms: str,
    previous: CreditState | None,
    read_at: datetime,
) -> list[Change]:
    """One version of a customer linked to a CRM account (``link``, revsync's customer link,
    names it): its ``CustomerMastered``, and its ``CreditStatusChanged`` when its credit limit
    or blocked status differ from the ``previous`` version revsync saw (none on first sight:
    the customer's first version is no change of credit)."""
    fields = _Fields("customers", customer)
    crm_account_id = _Fields("customerLinks", link).text("crmAccountId")
    credit = standing(customer, link)
    version = fields.modified()
    state = credit.state(version)
    currency = fields.optional_text("currencyCode") or company.currency
    changed_at = version.isoformat()
    document = {
        "id": fields.id,
        "number": fields.text("number"),
        "name": fields.text("displayName"),
        "crm_account_id": crm_account_id,
        "legal_entity": company.legal_entity,
        "status": credit.status,
        "credit_limit": fields.amount("creditLimit"),
        "currency": currency,
        "payment_terms": payment_terms,
        "blocks": credit.blocks,
    }
    changes = [
        Change(
            id=customer_event_id(company, fields.id, "CustomerMastered", version),
            type="CustomerMastered",
            aggregateid=crm_account_id,
            payload={"customer": document, "changed_at": changed_at},
            read_at=read_at,
        )
    ]
    if previous is not None and (
        previous.credit_limit != state.credit_limit or previous.standing != state.standing
    ):
        changes.append(
            Change(
                id=customer_event_id(company, fields.id, "CreditStatusChanged", version),
                type="CreditStatusChanged",
                aggregateid=crm_account_id,
                payload={
                    "customer": document,
                    "credit": {
                        "status": credit.status,
                        "currency": currency,
                        "credit_limit": document["credit_limit"],
                        "exposure": f"{credit.exposure:f}",
                        "available_credit": f"{credit.credit_limit - credit.exposure:f}",
                    },
                    "changed_at": changed_at,
                },
                read_at=read_at,
            )
        )
    return changes


def order_reference(
    company: Company,
    entity: str,
    document: Mapping[str, Any],
    order: Mapping[str, Any] | None,
    crm_account_id: str,
) -> OrderReference:
    """The order a document came from: the sales order as read when Business Central still
    has it (it deletes an order once fully shipped and invoiced), else what the document
    itself carries of it. The CRM order id is the ``externalDocumentNumber`` the document
    carried over from its order; the currency is the document's, blank meaning the
    company's own; the region is the order's first shortcut dimension (where revsync books
    it), as the document or else its order carries it."""
    fields = _Fields(entity, document)
    source = _Fields("salesOrders", order) if order is not None else None
    order_id = (
        (source.id if source is not None else None)
        or reference_id(document.get("orderId"))
        or fields.text("orderNumber")
    )
    number = (
        (source.optional_text("number") if source is not None else None)
        or fields.optional_text("orderNumber")
        or order_id
    )
    return OrderReference(
        id=order_id,
        number=number,
        external_id=fields.text("externalDocumentNumber"),
        customer_id=fields.text("customerId"),
        crm_account_id=crm_account_id,
        legal_entity=company.legal_entity,
        region=fields.optional_text("shortcutDimension1Code")
        or (source.optional_text("shortcutDimension1Code") if source is not None else None)
        or "",
        currency=fields.optional_text("currencyCode") or company.currency,
    )
