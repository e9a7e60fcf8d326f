"""The ERP's native outbox rows become canonical events: every field filled from the ERP
document, keyed by the CRM id the row is (the order's, or the customer's account's), and
every broken payload refused naming the row, its type and the field."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from erp_outbox_publisher.logic import (
    ErpOutboxRow,
    ErpPayloadInvalid,
    UnknownErpEventType,
    canonical_event,
)
from leaks import told
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerStatus,
    InvoicePosted,
    PaymentMethod,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
    ShippedLine,
    SourceSystem,
)
from revsync.errors import RETRYABLE, ErrorClass, classify

ORDER_ID = "8015g00000AbCdEAAV"
SALES_ORDER: dict[str, Any] = {
    "id": "SO-5b0c",
    "number": "SO-000042",
    "external_id": ORDER_ID,
    "customer_id": "C-10042",
    "crm_account_id": "0015g00000AcMeAAA",
    "legal_entity": "US01",
    "region": "NA",
    "currency": "USD",
    "correlation_id": "corr-8015g00000AbCdE",
}
INVOICE: dict[str, Any] = {
    "invoice": {
        "id": "INV-77a1",
        "number": "INV-000042",
        "status": "posted",
        "currency": "USD",
        "subtotal": "1180.0000",
        "tax_total": "228.0000",
        "grand_total": "1408.0000",
        "amount_due": "1408.0000",
        "posting_date": "2026-12-01",
        "due_date": "2026-12-31",
        "payment_terms": "NET30",
        "posted_at": "2026-12-01T09:30:00.250000+00:00",
    },
    "sales_order": SALES_ORDER,
}
SHIPMENT: dict[str, Any] = {
    "shipment": {
        "id": "SH-91c2",
        "number": "SH-000042",
        "carrier": "UPS",
        "tracking_number": "1Z999AA10123456784",
        "tracking_url": "https://www.ups.com/track?tracknum=1Z999AA10123456784",
        "completeness": "complete",
        "warehouse": "WH-RENO",
        "shipped_at": "2026-12-02T16:00:00+01:00",
        "lines": [
            {"line_number": 1, "sku": "SKU-101", "quantity": "3.0000"},
            {"line_number": 2, "sku": "SKU-102", "quantity": "0.5000"},
        ],
    },
    "sales_order": SALES_ORDER,
}
PAYMENT: dict[str, Any] = {
    "payment": {
        "id": "PAY-3e0f",
        "number": "PAY-000042",
        "amount": "1408.0000",
        "currency": "USD",
        "method": "wire_transfer",
        "received_at": "2026-12-20T08:00:00+00:00",
    },
    "invoice": {
        "id": "INV-77a1",
        "number": "INV-000042",
        "grand_total": "1408.0000",
        "amount_due": "0.0000",
    },
    "sales_order": SALES_ORDER,
}
ACCOUNT_ID = "0015g00000AcMeAAA"
CUSTOMER: dict[str, Any] = {
    "id": "C-100042",
    "number": "100042",
    "name": "Acme Industrial",
    "crm_account_id": ACCOUNT_ID,
    "legal_entity": "US01",
    "status": "active",
    "credit_limit": "50000.0000",
    "currency": "USD",
    "payment_terms": "NET30",
    "blocks": ["delivery"],
    "tax_id": "12-3456789",
    "duns": "150483782",
    "country_code": "US",
    "billing_address": None,
    "updated_at": "2026-12-01T09:30:00.500000+00:00",
}
MASTERED: dict[str, Any] = {
    "customer": CUSTOMER,
    "changed_at": "2026-12-01T10:30:00.500000+01:00",
}
CREDIT: dict[str, Any] = {
    "customer": {**CUSTOMER, "status": "credit_hold", "credit_limit": "20000.0000"},
    "credit": {
        "status": "credit_hold",
        "currency": "USD",
        "credit_limit": "20000.0000",
        "exposure": "21250.5000",
        "available_credit": "-1250.5000",
    },
    "changed_at": "2026-12-01T09:30:00.500000+00:00",
}
PAYLOADS: dict[str, dict[str, Any]] = {
    "InvoicePosted": INVOICE,
    "ShipmentConfirmed": SHIPMENT,
    "PaymentReceived": PAYMENT,
    "CustomerMastered": MASTERED,
    "CreditStatusChanged": CREDIT,
}
KEYS = {"CustomerMastered": ACCOUNT_ID, "CreditStatusChanged": ACCOUNT_ID}
"""The aggregateid of a row of each type; the CRM order id for the rest."""


def row(event_type: str, payload: dict[str, Any] | None = None, **changes: Any) -> ErpOutboxRow:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "aggregatetype": event_type.lower(),
        "aggregateid": KEYS.get(event_type, ORDER_ID),
        "type": event_type,
        "payload": copy.deepcopy(PAYLOADS[event_type]) if payload is None else payload,
        "created_at": datetime(2026, 12, 1, 9, 30, 1, tzinfo=UTC),
    }
    return ErpOutboxRow(**{**fields, **changes})


def changed(event_type: str, path: str, value: Any) -> ErpOutboxRow:
    """A row whose payload has ``value`` at the dotted ``path`` (``...`` deletes it)."""
    payload = copy.deepcopy(PAYLOADS[event_type])
    *parents, last = path.split(".")
    node: Any = payload
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return row(event_type, payload)


def test_an_invoice_becomes_invoice_posted_with_every_field_from_the_erp() -> None:
    source = row("InvoicePosted")
    event = canonical_event(source)
    assert isinstance(event, InvoicePosted)
    posted_at = datetime(2026, 12, 1, 9, 30, 0, 250000, tzinfo=UTC)
    assert event.envelope.event_id == source.id
    assert event.envelope.event_type == InvoicePosted.event_type
    assert event.envelope.occurred_at == posted_at
    assert event.envelope.source_system is SourceSystem.ERP
    assert event.envelope.correlation_id == "corr-8015g00000AbCdE"
    assert event.envelope.causation_id is None
    assert event.envelope.schema_version == 1
    assert event.model_dump(exclude={"envelope"}) == {
        "crm_order_id": ORDER_ID,
        "erp_order_id": "SO-5b0c",
        "erp_invoice_id": "INV-77a1",
        "invoice_number": "INV-000042",
        "erp_customer_id": "C-10042",
        "crm_account_id": "0015g00000AcMeAAA",
        "currency": "USD",
        "subtotal": Decimal("1180.0000"),
        "tax_total": Decimal("228.0000"),
        "grand_total": Decimal("1408.0000"),
        "amount_due": Decimal("1408.0000"),
        "posting_date": date(2026, 12, 1),
        "due_date": date(2026, 12, 31),
        "payment_terms": "NET30",
        "legal_entity": "US01",
        "region": "NA",
        "posted_at": posted_at,
    }


def test_a_shipment_becomes_shipment_confirmed_in_utc() -> None:
    event = canonical_event(row("ShipmentConfirmed"))
    assert isinstance(event, ShipmentConfirmed)
    shipped_at = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
    assert event.envelope.occurred_at == shipped_at
    assert event.shipped_at == shipped_at
    assert event.shipped_at.tzinfo is UTC
    assert event.crm_order_id == ORDER_ID
    assert event.erp_order_id == "SO-5b0c"
    assert event.erp_shipment_id == "SH-91c2"
    assert event.lines == [
        ShippedLine(line_number=1, sku="SKU-101", quantity_shipped=Decimal("3.0000")),
        ShippedLine(line_number=2, sku="SKU-102", quantity_shipped=Decimal("0.5000")),
    ]
    assert (event.carrier, event.tracking_number) == ("UPS", "1Z999AA10123456784")
    assert event.tracking_url == "https://www.ups.com/track?tracknum=1Z999AA10123456784"
    assert event.completeness is ShipmentCompleteness.COMPLETE
    assert event.warehouse == "WH-RENO"


def test_a_partial_shipment_without_tracking_url_or_warehouse() -> None:
    payload = copy.deepcopy(SHIPMENT)
    payload["shipment"].update(completeness="partial", tracking_url=None)
    del payload["shipment"]["warehouse"]
    event = canonical_event(row("ShipmentConfirmed", payload))
    assert isinstance(event, ShipmentConfirmed)
    assert event.completeness is ShipmentCompleteness.PARTIAL
    assert event.tracking_url is None
    assert event.warehouse is None


def test_a_payment_becomes_payment_received() -> None:
    event = canonical_event(row("PaymentReceived"))
    assert isinstance(event, PaymentReceived)
    assert event.envelope.occurred_at == datetime(2026, 12, 20, 8, 0, tzinfo=UTC)
    assert event.model_dump(exclude={"envelope", "received_at"}) == {
        "crm_order_id": ORDER_ID,
        "erp_payment_id": "PAY-3e0f",
        "erp_invoice_id": "INV-77a1",
        "invoice_number": "INV-000042",
        "currency": "USD",
        "amount": Decimal("1408.0000"),
        "remaining_balance": Decimal("0.0000"),
        "payment_method": PaymentMethod.WIRE,
    }


@pytest.mark.parametrize(
    ("erp_method", "method"),
    [
        ("ach", PaymentMethod.ACH),
        ("card", PaymentMethod.CARD),
        ("check", PaymentMethod.CHECK),
        ("direct_debit", PaymentMethod.DIRECT_DEBIT),
        ("barter", PaymentMethod.OTHER),
    ],
)
def test_erp_payment_methods_map_to_the_contract(erp_method: str, method: PaymentMethod) -> None:
    event = canonical_event(changed("PaymentReceived", "payment.method", erp_method))
    assert isinstance(event, PaymentReceived)
    assert event.payment_method is method


def test_a_customer_change_becomes_customer_mastered_keyed_by_its_account() -> None:
    source = row("CustomerMastered")
    event = canonical_event(source)
    assert isinstance(event, CustomerMastered)
    changed_at = datetime(2026, 12, 1, 9, 30, 0, 500000, tzinfo=UTC)
    assert event.key == ACCOUNT_ID
    assert event.envelope.event_id == source.id
    assert event.envelope.event_type == CustomerMastered.event_type
    assert event.envelope.occurred_at == changed_at
    assert event.envelope.source_system is SourceSystem.ERP
    assert event.envelope.correlation_id == ACCOUNT_ID
    assert event.envelope.causation_id is None
    assert event.model_dump(exclude={"envelope"}) == {
        "crm_account_id": ACCOUNT_ID,
        "erp_customer_id": "C-100042",
        "customer_number": "100042",
        "name": "Acme Industrial",
        "legal_entity": "US01",
        "currency": "USD",
        "status": CustomerStatus.ACTIVE,
        "credit_limit": Decimal("50000.0000"),
        "payment_terms": "NET30",
        "blocks": ["delivery"],
        "changed_at": changed_at,
    }


def test_a_credit_change_becomes_credit_status_changed_over_its_limit() -> None:
    source = row("CreditStatusChanged")
    event = canonical_event(source)
    assert isinstance(event, CreditStatusChanged)
    assert (event.key, event.envelope.event_id) == (ACCOUNT_ID, source.id)
    assert event.envelope.event_type == CreditStatusChanged.event_type
    assert event.envelope.correlation_id == ACCOUNT_ID
    assert event.model_dump(exclude={"envelope"}) == {
        "crm_account_id": ACCOUNT_ID,
        "erp_customer_id": "C-100042",
        "status": CustomerStatus.CREDIT_HOLD,
        "currency": "USD",
        "credit_limit": Decimal("20000.0000"),
        "exposure": Decimal("21250.5000"),
        "available_credit": Decimal("-1250.5000"),
        "changed_at": datetime(2026, 12, 1, 9, 30, 0, 500000, tzinfo=UTC),
    }


def test_a_customer_without_blocks_has_none() -> None:
    event = canonical_event(changed("CustomerMastered", "customer.blocks", []))
    assert isinstance(event, CustomerMastered)
    assert event.blocks == []


@pytest.mark.parametrize(
    ("erp_status", "status"),
    [
        ("active", CustomerStatus.ACTIVE),
        ("blocked", CustomerStatus.BLOCKED),
        ("credit_hold", CustomerStatus.CREDIT_HOLD),
        ("dormant", CustomerStatus.OTHER),
    ],
)
@pytest.mark.parametrize(
    ("event_type", "path"),
    [("CustomerMastered", "customer.status"), ("CreditStatusChanged", "credit.status")],
)
def test_erp_customer_statuses_map_to_the_contract(
    event_type: str, path: str, erp_status: str, status: CustomerStatus
) -> None:
    event = canonical_event(changed(event_type, path, erp_status))
    assert isinstance(event, CustomerMastered | CreditStatusChanged)
    assert event.status is status


def test_the_same_row_is_the_same_event() -> None:
    """The event id is the row's: a relay publishing a row again publishes the same event."""
    source = row("CreditStatusChanged")
    assert canonical_event(source) == canonical_event(source)


@pytest.mark.parametrize("missing", [None, ""])
def test_without_a_correlation_id_the_order_id_correlates(missing: str | None) -> None:
    event = canonical_event(changed("InvoicePosted", "sales_order.correlation_id", missing))
    assert event.envelope.correlation_id == ORDER_ID


def test_an_unknown_type_is_refused_permanently() -> None:
    source = row("InvoicePosted", type="CreditMemoIssued")
    with pytest.raises(UnknownErpEventType, match="CreditMemoIssued") as refused:
        canonical_event(source)
    assert str(source.id) in str(refused.value)
    assert classify(refused.value) not in RETRYABLE


@pytest.mark.parametrize(
    ("event_type", "path", "value", "field"),
    [
        ("InvoicePosted", "invoice.id", ..., "invoice.id"),
        ("InvoicePosted", "invoice.grand_total", 1408.0, "invoice.grand_total"),
        ("InvoicePosted", "invoice.grand_total", "lots", "invoice.grand_total"),
        ("InvoicePosted", "invoice.grand_total", "NaN", "invoice.grand_total"),
        ("InvoicePosted", "invoice.posting_date", "01/12/2026", "invoice.posting_date"),
        ("InvoicePosted", "invoice.posted_at", "2026-12-01T09:30:00", "invoice.posted_at"),
        ("InvoicePosted", "sales_order", ..., "sales_order.external_id"),
        ("InvoicePosted", "sales_order.region", "", "sales_order.region"),
        ("InvoicePosted", "invoice.currency", "XYZ", "currency"),
        ("ShipmentConfirmed", "shipment.lines", [], "shipment.lines"),
        ("ShipmentConfirmed", "shipment.lines.1.sku", ..., "shipment.lines.1.sku"),
        ("ShipmentConfirmed", "shipment.lines.0.line_number", "1", "shipment.lines.0.line_number"),
        ("ShipmentConfirmed", "shipment.lines.0.quantity", "0", "quantity_shipped"),
        ("ShipmentConfirmed", "shipment.completeness", "lost", "shipment.completeness"),
        ("ShipmentConfirmed", "shipment.tracking_url", 42, "shipment.tracking_url"),
        ("PaymentReceived", "payment.amount", "0.0000", "amount"),
        ("PaymentReceived", "invoice.amount_due", ..., "invoice.amount_due"),
        ("CustomerMastered", "customer", ..., "customer.crm_account_id"),
        ("CustomerMastered", "customer.number", ..., "customer.number"),
        ("CustomerMastered", "customer.status", None, "customer.status"),
        ("CustomerMastered", "customer.credit_limit", "-1.0000", "credit_limit"),
        ("CustomerMastered", "customer.currency", "XYZ", "currency"),
        ("CustomerMastered", "customer.blocks", "order", "customer.blocks"),
        ("CustomerMastered", "customer.blocks", ["order", ""], "customer.blocks.1"),
        ("CustomerMastered", "changed_at", ..., "changed_at"),
        ("CustomerMastered", "changed_at", "2026-12-01T09:30:00", "changed_at"),
        ("CreditStatusChanged", "credit", ..., "credit.status"),
        ("CreditStatusChanged", "credit.exposure", "-5.0000", "exposure"),
        ("CreditStatusChanged", "credit.available_credit", "plenty", "credit.available_credit"),
    ],
)
def test_a_broken_payload_names_the_row_type_and_field(
    event_type: str, path: str, value: Any, field: str
) -> None:
    source = changed(event_type, path, value)
    with pytest.raises(ErpPayloadInvalid) as refused:
        canonical_event(source)
    error = refused.value
    assert error.field == field
    assert (error.row_id, error.event_type) == (source.id, event_type)
    assert str(source.id) in str(error)
    assert event_type in str(error)
    assert error.error_class is ErrorClass.VALIDATION


def test_amounts_that_do_not_add_up_are_refused_by_the_contract() -> None:
    with pytest.raises(ErpPayloadInvalid) as refused:
        canonical_event(changed("InvoicePosted", "invoice.grand_total", "1.0000"))
    assert refused.value.field == "InvoicePosted"
    assert str(refused.value).endswith("InvoicePosted: not a valid value (value_error)")
    assert "1.0000" not in told(refused.value)


def test_a_payload_for_another_order_than_its_key_is_refused() -> None:
    source = row("ShipmentConfirmed", aggregateid="8015g00000OtHeRAAV")
    with pytest.raises(ErpPayloadInvalid, match="aggregateid") as refused:
        canonical_event(source)
    assert refused.value.field == "sales_order.external_id"
    assert ORDER_ID not in told(refused.value)


@pytest.mark.parametrize("event_type", ["CustomerMastered", "CreditStatusChanged"])
def test_a_payload_for_another_account_than_its_key_is_refused(event_type: str) -> None:
    source = row(event_type, aggregateid="0015g00000OtHeRAAV")
    with pytest.raises(ErpPayloadInvalid, match="aggregateid") as refused:
        canonical_event(source)
    assert refused.value.field == "customer.crm_account_id"
    assert ACCOUNT_ID not in told(refused.value)


def test_a_customer_row_is_not_read_as_an_order_document() -> None:
    """Each type is keyed by its own path: a customer's payload has no sales order."""
    payload = {**copy.deepcopy(MASTERED), "sales_order": {"external_id": ACCOUNT_ID}}
    event = canonical_event(row("CustomerMastered", payload))
    assert isinstance(event, CustomerMastered)
    with pytest.raises(ErpPayloadInvalid) as refused:
        canonical_event(row("InvoicePosted", copy.deepcopy(MASTERED), aggregateid=ACCOUNT_ID))
    assert refused.value.field == "sales_order.external_id"


PHONE = "+1 555 0100"
EMAIL = "ap@acme.example"
STREET = "17 Quill Lane"


@pytest.mark.parametrize(
    ("event_type", "path", "value", "reason"),
    [
        ("InvoicePosted", "invoice.id", 5550100, "expected non-empty text, got int"),
        (
            "InvoicePosted",
            "invoice.grand_total",
            PHONE,
            "expected a decimal string, got other text",
        ),
        ("InvoicePosted", "invoice.posting_date", EMAIL, "expected an ISO date"),
        ("InvoicePosted", "invoice.posted_at", STREET, "expected an ISO timestamp"),
        (
            "InvoicePosted",
            "invoice.posted_at",
            "2026-12-01T09:30:00",
            "a timestamp without its UTC offset",
        ),
        ("InvoicePosted", "invoice.currency", EMAIL, "not a valid value (value_error)"),
        ("ShipmentConfirmed", "shipment.lines.0.line_number", STREET, "expected an integer, got"),
        ("ShipmentConfirmed", "shipment.completeness", STREET, "not one of complete, partial"),
        ("ShipmentConfirmed", "shipment.tracking_url", {"to": STREET}, "expected text, got dict"),
        ("ShipmentConfirmed", "shipment.carrier", "", "expected non-empty text, got an empty"),
        ("CustomerMastered", "customer.name", 5550100, "expected non-empty text, got int"),
        ("CustomerMastered", "customer.credit_limit", PHONE, "expected a decimal string"),
        ("CustomerMastered", "customer.blocks", STREET, "expected a list, got other text"),
        ("CustomerMastered", "changed_at", EMAIL, "expected an ISO timestamp"),
        ("CreditStatusChanged", "credit.exposure", PHONE, "expected a decimal string"),
    ],
)
def test_a_broken_payload_is_told_by_its_field_and_never_its_value(
    event_type: str, path: str, value: Any, reason: str
) -> None:
    """No customer data in errors: the relay logs a row that will not publish, again and
    again, so the reason names what was expected, at most the type found."""
    with pytest.raises(ErpPayloadInvalid) as refused:
        canonical_event(changed(event_type, path, value))
    assert reason in str(refused.value)
    for quoted in (PHONE, EMAIL, STREET, "2026-12-01T09:30:00", "5550100"):
        assert quoted not in told(refused.value)
