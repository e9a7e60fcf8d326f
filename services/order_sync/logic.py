"""order_sync's decisions, free of I/O: which CRM changes matter, what canonical event a CRM
order becomes, what the ERP is asked to book, and what each outcome tells the CRM. Whether
the ERP may take an order is the shared rules' to say (:mod:`revsync.rules.checks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from revsync.connectors.cdc import ChangeType, Integration, RecordChange
from revsync.contracts.events import (
    CreditCheckOutcome,
    Envelope,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    PricingOutcome,
    SourceSystem,
)
from revsync.errors import invalid_fields
from revsync.ports.erp import Address, SalesOrder, SalesOrderLine, SalesOrderRequest
from revsync.rules.checks import Rejection
from revsync.runtime.handler import caused_envelope

ORDER = "Order"
ACTIVATED = "Activated"
CANCELLED = "Cancelled"
CRM_MESSAGE_LIMIT = 255
"""ERP_Message__c is a Text(255) field."""

ORDER_FIELDS = (
    "Id",
    "OrderNumber",
    "AccountId",
    "Pricebook2Id",
    "CurrencyIsoCode",
    "Status",
    "EffectiveDate",
    "ActivatedDate",
    "PoNumber",
    "Legal_Entity__c",
    "Region__c",
    "Requested_Delivery_Date__c",
    "BillingStreet",
    "BillingCity",
    "BillingState",
    "BillingPostalCode",
    "BillingCountryCode",
    "ShippingStreet",
    "ShippingCity",
    "ShippingState",
    "ShippingPostalCode",
    "ShippingCountryCode",
    "ERP_Order_Id__c",
    "ERP_Status__c",
    "Cancel_Reason__c",
    "LastModifiedDate",
)


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Refetch:
    """Read these orders as they are now and emit what their state says."""

    record_ids: tuple[str, ...]


@dataclass(frozen=True)
class Reconcile:
    """Salesforce dropped the details of a large transaction: read every order that moved on
    to a synced state since it committed."""

    since: datetime


Plan = Ignore | Refetch | Reconcile


def plan(change: RecordChange, integration: Integration) -> Plan:
    """What a change event asks for. Only an order reaching Activated or Cancelled does;
    revsync's own write-backs are ignored, so nothing echoes."""
    header = change.header
    if change.entity != ORDER:
        return Ignore(f"{change.entity} changes are not synced")
    # Before the echo check: whoever's transaction overflowed, or changed records Salesforce
    # names only by a wildcard ("801*"), other orders may have moved in it too.
    if header.changeType is ChangeType.GAP_OVERFLOW:
        # An overflow event names no real record (its one id is the empty id).
        return Reconcile(header.committed_at)
    if any(record_id.endswith("*") for record_id in header.recordIds):
        return Reconcile(header.committed_at)
    if integration.made(change):
        return Ignore("revsync's own change")
    if not header.recordIds:
        return Ignore("the change names no records")
    if header.changeType.is_gap:
        # Salesforce could not send the fields: the record itself says what happened.
        return Refetch(tuple(header.recordIds))
    if header.changeType in (ChangeType.DELETE, ChangeType.UNDELETE):
        return Ignore("only draft orders can be deleted, and drafts are not synced")
    status = change.fields.get("Status")
    if status in (ACTIVATED, CANCELLED):
        return Refetch(tuple(header.recordIds))
    return Ignore("no status change" if status is None else f"status {status} is not synced")


RECONCILE_MARGIN = timedelta(minutes=1)
"""A transaction's records are stamped before it commits; reach back this far before it."""


def reconcile_query(since: datetime) -> str:
    stamp = (since - RECONCILE_MARGIN).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # SOQL, not SQL: every part is a constant or a formatted timestamp.
    return (
        f"SELECT Id FROM {ORDER} WHERE SystemModstamp >= {stamp} "  # noqa: S608
        f"AND Status IN ('{ACTIVATED}', '{CANCELLED}') ORDER BY SystemModstamp"
    )


class InvalidCrmOrder(ValueError):
    """The CRM order cannot become a canonical event; the message says which field and why,
    never its value (it goes back to the CRM, and on to the rejection event)."""


def canonical(
    cause: Envelope,
    order: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    erp_customer_id: str | None,
    attempt: str | None = None,
) -> OrderCreated | OrderCancelled | None:
    """The canonical event for a CRM order in its current state; None while it is a draft,
    and for a cancelled order the ERP never had (never activated, or rejected).

    Ids derive from the order (and its activation), not the change that revealed it, so a
    duplicate change, a gap re-read and a reconciliation all emit the same event and
    downstream inboxes keep one; an order activated again after a rejection is new, and so is
    a person's retry (``attempt``), which runs the order again as it now stands.
    """
    status = order.get("Status")
    order_id = str(order["Id"])
    try:
        if status == ACTIVATED:
            return _created(cause, order, items, erp_customer_id, attempt)
        never_placed = not order.get("ActivatedDate") or order.get("ERP_Status__c") == "Rejected"
        if status == CANCELLED and not never_placed:
            return OrderCancelled(
                envelope=caused_envelope(
                    cause,
                    OrderCancelled.event_type,
                    source_system=SourceSystem.CRM,
                    occurred_at=_datetime(order.get("LastModifiedDate")) or cause.occurred_at,
                    identity=order_id,
                ),
                crm_order_id=order_id,
                erp_order_id=order.get("ERP_Order_Id__c"),
                reason=order.get("Cancel_Reason__c"),
                cancelled_at=_datetime(order.get("LastModifiedDate")) or cause.occurred_at,
            )
    except ValidationError as error:
        where, why = invalid_fields(error)[0]
        raise InvalidCrmOrder(
            f"order {order.get('OrderNumber', order_id)}: {where}: {why}"
        ) from None
    return None


def _created(
    cause: Envelope,
    order: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    erp_customer_id: str | None,
    attempt: str | None = None,
) -> OrderCreated:
    lines = [
        {
            "line_number": int(item["OrderItemNumber"]),
            "crm_line_id": item["Id"],
            "sku": item.get("SKU__c"),
            "product_name": item.get("Product_Name__c"),
            "product_line": item.get("Product_Line__c"),
            "quantity": _decimal(item.get("Quantity")),
            "unit_of_measure": item.get("Unit_Of_Measure__c") or "EA",
            "unit_price": _decimal(item.get("UnitPrice")),
            "discount_amount": _decimal(item.get("Discount__c") or 0),
            "tax_amount": _decimal(item.get("Tax__c") or 0),
            "line_total": _decimal(item.get("TotalPrice")),
        }
        for item in sorted(items, key=lambda item: str(item.get("OrderItemNumber")))
    ]
    subtotal = sum((line["line_total"] for line in lines), Decimal(0))
    tax = sum((line["tax_amount"] for line in lines), Decimal(0))
    activated = _datetime(order.get("ActivatedDate")) or cause.occurred_at
    order_id = str(order["Id"])
    return OrderCreated.model_validate(
        {
            "envelope": caused_envelope(
                cause,
                OrderCreated.event_type,
                source_system=SourceSystem.CRM,
                occurred_at=activated,
                identity=attempted(f"{order_id}@{activated.isoformat()}", attempt),
            ),
            "crm_order_id": order_id,
            "crm_order_number": order.get("OrderNumber"),
            "crm_account_id": order.get("AccountId"),
            "erp_customer_id": erp_customer_id,
            "purchase_order_number": order.get("PoNumber"),
            "price_book_id": order.get("Pricebook2Id"),
            "currency": order.get("CurrencyIsoCode"),
            "legal_entity": order.get("Legal_Entity__c"),
            "region": order.get("Region__c"),
            "lines": lines,
            "subtotal": subtotal,
            "discount_total": sum((line["discount_amount"] for line in lines), Decimal(0)),
            "tax_total": tax,
            "grand_total": subtotal + tax,
            "ordered_at": activated,
            "requested_delivery_date": order.get("Requested_Delivery_Date__c"),
            "billing_address": _address(order, "Billing"),
            "shipping_address": _address(order, "Shipping"),
        }
    )


def attempted(identity: str, attempt: str | None) -> str:
    """An emitted fact's identity, made new by a person's retry."""
    return identity if attempt is None else f"{identity}/{attempt}"


def _address(order: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "street": order.get(f"{kind}Street"),
        "city": order.get(f"{kind}City"),
        "state_province": order.get(f"{kind}State"),
        "postal_code": order.get(f"{kind}PostalCode"),
        "country_code": order.get(f"{kind}CountryCode"),
    }


def _decimal(value: Any) -> Any:
    # The adapter reads Salesforce's JSON numbers as Decimal (whole ones as int); anything
    # else is left for the contract's validation to judge.
    return Decimal(str(value)) if isinstance(value, int | Decimal) else value


def _datetime(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def sales_order_request(order: OrderCreated) -> SalesOrderRequest:
    address = order.shipping_address
    assert order.erp_customer_id is not None  # validated before
    return SalesOrderRequest(
        external_id=order.crm_order_id,
        customer_id=order.erp_customer_id,
        currency=order.currency,
        price_book_id=order.price_book_id,
        legal_entity=order.legal_entity,
        region=order.region,
        po_number=order.purchase_order_number,
        requested_delivery_date=order.requested_delivery_date,
        ship_to=Address(
            street=address.street,
            city=address.city,
            state_province=address.state_province,
            postal_code=address.postal_code,
            country_code=address.country_code,
        ),
        lines=tuple(
            SalesOrderLine(
                line_number=line.line_number,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=line.unit_price,
                discount_amount=line.discount_amount,
                tax_amount=line.tax_amount,
            )
            for line in order.lines
        ),
        correlation_id=order.envelope.correlation_id,
    )


def idempotency_key(action: str, crm_order_id: str) -> str:
    """One key per order and action: a retry of the same call is recognised by the ERP."""
    return f"revsync:order-sync:{action}:{crm_order_id}"


def create_key(order: OrderCreated) -> str:
    """Per activation: an order fixed and activated again after a rejection is a new create."""
    return f"{idempotency_key('create', order.crm_order_id)}@{order.ordered_at.isoformat()}"


def accepted(order: OrderCreated, sales_order: SalesOrder, now: datetime) -> OrderAccepted:
    return OrderAccepted(
        envelope=caused_envelope(order.envelope, OrderAccepted.event_type, occurred_at=now),
        crm_order_id=order.crm_order_id,
        erp_order_id=sales_order.id,
        erp_order_number=sales_order.number,
        erp_customer_id=sales_order.customer_id,
        credit_check=CreditCheckOutcome(sales_order.credit_check),
        pricing_outcome=PricingOutcome(sales_order.pricing_outcome),
        currency=sales_order.currency,
        erp_grand_total=sales_order.grand_total,
        accepted_at=sales_order.created_at,
    )


def rejected(
    cause: Envelope,
    crm_order_id: str,
    rejection: Rejection,
    legal_entity: str | None,
    region: str | None,
    now: datetime,
    identity: str | None = None,
) -> OrderRejected:
    """``identity``: for a rejection at capture, the order's activation, so every change
    that reveals the same invalid order rejects it once."""
    return OrderRejected(
        envelope=caused_envelope(
            cause, OrderRejected.event_type, occurred_at=now, identity=identity
        ),
        crm_order_id=crm_order_id,
        reason_code=rejection.reason,
        message=rejection.message,
        offending_skus=list(rejection.skus),
        legal_entity=legal_entity or "UNKNOWN",
        region=region or "UNKNOWN",
        rejected_at=now,
    )


def crm_accepted_fields(sales_order: SalesOrder) -> dict[str, Any]:
    return {
        "ERP_Order_Id__c": sales_order.id,
        "ERP_Order_Number__c": sales_order.number,
        "ERP_Status__c": "Accepted",
        "ERP_Message__c": None,
    }


def crm_rejected_fields(rejection: Rejection) -> dict[str, Any]:
    """The compensating write-back: the CRM user sees why the ERP did not take the order."""
    message = f"{rejection.reason.value}: {rejection.message}"
    if len(message) > CRM_MESSAGE_LIMIT:
        message = message[: CRM_MESSAGE_LIMIT - 1] + "…"
    return {"ERP_Status__c": "Rejected", "ERP_Message__c": message}


def crm_cancelled_fields(reason: str | None) -> dict[str, Any]:
    return {"ERP_Status__c": "Cancelled", "ERP_Message__c": reason}
