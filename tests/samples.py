"""One valid instance of every contract, as plain data, for any test to vary."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from revsync.connectors.cdc import RecordChange, decode_change
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerUpserted,
    DuplicateCustomerSuspected,
    Envelope,
    Event,
    InvoicePosted,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    PaymentReceived,
    ShipmentConfirmed,
    SourceSystem,
)

E = TypeVar("E", bound=Event)
SALES_REP = "005000000000002AAA"
"""The CRM user id of the sales rep who edits orders in the Salesforce UI."""


def sample_envelope(event_type: str, **overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "event_id": uuid.uuid4(),
        "event_type": event_type,
        "occurred_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        "source_system": SourceSystem.CRM,
        "correlation_id": "corr-8015g00000AbCdE",
        "causation_id": None,
        "schema_version": 1,
    }
    return Envelope.model_validate({**fields, **overrides})


def sample_order_line(number: int = 1, **overrides: object) -> dict[str, object]:
    line: dict[str, object] = {
        "line_number": number,
        "crm_line_id": f"8025g00000Line{number:03d}",
        "sku": f"SKU-{100 + number}",
        "product_name": f"Industrial sensor model {number}",
        "product_line": "SENSORS",
        "quantity": Decimal("3"),
        "unit_of_measure": "EA",
        "unit_price": Decimal("199.9900"),
        "discount_amount": Decimal("9.9700"),
        "tax_amount": Decimal("114.0000"),
        "line_total": Decimal("590.0000"),
    }
    return {**line, **overrides}


ADDRESS = {
    "street": "1 Market St",
    "city": "San Francisco",
    "state_province": "CA",
    "postal_code": "94105",
    "country_code": "US",
}


def sample_events() -> dict[type[Event], dict[str, object]]:
    """Valid field values for every event type, as plain data so tests can vary any field."""
    order_id = "8015g00000AbCdEAAV"
    account_id = "0015g00000XyZaBAAV"
    moment = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    return {
        OrderCreated: {
            "crm_order_id": order_id,
            "crm_order_number": "00000123",
            "crm_account_id": "0015g00000AcMeAAA",
            "erp_customer_id": "C-10042",
            "purchase_order_number": "PO-7781",
            "price_book_id": "01s5g00000StdPbAAA",
            "currency": "USD",
            "legal_entity": "US01",
            "region": "NA",
            "lines": [sample_order_line(1), sample_order_line(2)],
            "subtotal": Decimal("1180.0000"),
            "discount_total": Decimal("19.9400"),
            "tax_total": Decimal("228.0000"),
            "grand_total": Decimal("1408.0000"),
            "ordered_at": moment,
            "requested_delivery_date": date(2026, 12, 15),
            "billing_address": ADDRESS,
            "shipping_address": ADDRESS,
        },
        OrderAccepted: {
            "crm_order_id": order_id,
            "erp_order_id": "SO-900001",
            "erp_order_number": "900001",
            "erp_customer_id": "C-10042",
            "credit_check": "APPROVED",
            "pricing_outcome": "MATCHED",
            "currency": "USD",
            "erp_grand_total": Decimal("1408.0000"),
            "accepted_at": moment,
        },
        OrderRejected: {
            "crm_order_id": order_id,
            "reason_code": "UNKNOWN_PRODUCT",
            "message": "SKU-999 is not sold by legal entity US01",
            "offending_skus": ["SKU-999"],
            "legal_entity": "US01",
            "region": "NA",
            "rejected_at": moment,
        },
        OrderCancelled: {
            "crm_order_id": order_id,
            "erp_order_id": "SO-900001",
            "reason": "customer changed their mind",
            "cancelled_at": moment,
        },
        InvoicePosted: {
            "crm_order_id": order_id,
            "erp_order_id": "SO-900001",
            "erp_invoice_id": "INV-1",
            "invoice_number": "US01-2026-000001",
            "erp_customer_id": "C-10042",
            "crm_account_id": "0015g00000AcMeAAA",
            "currency": "USD",
            "subtotal": Decimal("1180.0000"),
            "tax_total": Decimal("228.0000"),
            "grand_total": Decimal("1408.0000"),
            "amount_due": Decimal("1408.0000"),
            "posting_date": date(2026, 12, 2),
            "due_date": date(2027, 1, 1),
            "payment_terms": "NET30",
            "legal_entity": "US01",
            "region": "NA",
            "posted_at": moment,
        },
        ShipmentConfirmed: {
            "crm_order_id": order_id,
            "erp_order_id": "SO-900001",
            "erp_shipment_id": "SH-77",
            "lines": [{"line_number": 1, "sku": "SKU-101", "quantity_shipped": Decimal("3")}],
            "carrier": "UPS",
            "tracking_number": "1Z999AA10123456784",
            "tracking_url": None,
            "completeness": "PARTIAL",
            "warehouse": "DC-WEST",
            "shipped_at": moment,
        },
        PaymentReceived: {
            "crm_order_id": order_id,
            "erp_payment_id": "PAY-5",
            "erp_invoice_id": "INV-1",
            "invoice_number": "US01-2026-000001",
            "currency": "USD",
            "amount": Decimal("408.0000"),
            "remaining_balance": Decimal("1000.0000"),
            "payment_method": "WIRE",
            "received_at": moment,
        },
        CustomerUpserted: {
            "crm_account_id": account_id,
            "erp_customer_id": "C-US01-0042",
            "created": True,
            "legal_entity": "US01",
            "fields": ["name", "tax_id", "billing_country"],
            "upserted_at": moment,
        },
        CustomerMastered: {
            "crm_account_id": account_id,
            "erp_customer_id": "C-US01-0042",
            "customer_number": "100042",
            "name": "Acme Industrial",
            "legal_entity": "US01",
            "currency": "USD",
            "status": "ACTIVE",
            "credit_limit": Decimal("50000.0000"),
            "payment_terms": "NET30",
            "blocks": [],
            "changed_at": moment,
        },
        CreditStatusChanged: {
            "crm_account_id": account_id,
            "erp_customer_id": "C-US01-0042",
            "status": "CREDIT_HOLD",
            "currency": "USD",
            "credit_limit": Decimal("50000.0000"),
            "exposure": Decimal("51250.5000"),
            "available_credit": Decimal("-1250.5000"),
            "changed_at": moment,
        },
        DuplicateCustomerSuspected: {
            "crm_account_id": account_id,
            "legal_entity": "US01",
            "matches": [
                {
                    "erp_customer_id": "C-US01-0007",
                    "customer_number": "100007",
                    "crm_account_id": None,
                    "matched_on": "TAX_ID",
                }
            ],
            "message": "matches 1 ERP customer by tax id; link the account or confirm a new one",
            "detected_at": moment,
        },
    }


def sample_event(event_type: type[E], **overrides: object) -> E:
    fields = {**sample_events()[event_type], **overrides}
    return event_type.model_validate({"envelope": sample_envelope(event_type.event_type), **fields})


def status_change(order_id: str, status: str = "Activated", **header: Any) -> RecordChange:
    """The change event of a sales rep moving the order to ``status`` in the Salesforce UI."""
    fields = {
        "entityName": "Order",
        "recordIds": [order_id],
        "changeType": "UPDATE",
        "changeOrigin": "",
        "transactionKey": str(uuid.uuid4()),
        "sequenceNumber": 2,
        "commitTimestamp": 1_764_583_200_000,
        "commitUser": SALES_REP,
        **header,
    }
    payload = {"ChangeEventHeader": fields, "Status": status}
    return decode_change("crm-change", json.dumps({"replayId": 1, "payload": payload}).encode())


def sample_order(order_id: str, correlation_id: str | None = None) -> OrderCreated:
    """A valid OrderCreated for ``order_id``, correlated as its own order unless told."""
    return sample_event(
        OrderCreated,
        crm_order_id=order_id,
        envelope=sample_envelope(
            OrderCreated.event_type, correlation_id=correlation_id or f"corr-{order_id}"
        ),
    )


def account_change(
    account_id: str, change_type: str = "UPDATE", user: str = SALES_REP, **fields: Any
) -> RecordChange:
    """An account's change event: ``fields`` changed by ``user`` (a sales rep by default)."""
    header = {
        "entityName": "Account",
        "recordIds": [account_id],
        "changeType": change_type,
        "changeOrigin": "",
        "transactionKey": str(uuid.uuid4()),
        "sequenceNumber": 1,
        "commitTimestamp": 1_764_583_200_000,
        "commitUser": user,
        "changedFields": sorted(fields) if change_type == "UPDATE" else [],
    }
    payload = {"ChangeEventHeader": header, **fields}
    return decode_change("crm-change", json.dumps({"replayId": 1, "payload": payload}).encode())
