"""What invoice_sync and fulfillment_sync write to the CRM for each ERP event: the child
record keyed by its ERP id, and the status it moves the order on to."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from fulfillment_sync import logic as fulfillment
from invoice_sync import logic as invoicing
from revsync.contracts.events import (
    InvoicePosted,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
)
from samples import sample_event

ORDER_ID = "8015g00000AbCdEAAV"


def test_a_posted_invoice_is_upserted_by_its_erp_id_on_the_order() -> None:
    write = invoicing.invoice_posted(sample_event(InvoicePosted))

    assert (write.sobject, write.external_id_field, write.external_id) == (
        "Invoice__c",
        "ERP_Invoice_Id__c",
        "INV-1",
    )
    assert write.record == {
        "ERP_Invoice_Id__c": "INV-1",
        "Name": "US01-2026-000001",
        "Order__c": ORDER_ID,
        "Account__c": "0015g00000AcMeAAA",
        "CurrencyIsoCode": "USD",
        "Subtotal__c": Decimal("1180.0000"),
        "Tax__c": Decimal("228.0000"),
        "Total__c": Decimal("1408.0000"),
        "Amount_Due__c": Decimal("1408.0000"),
        "Posting_Date__c": "2026-12-02",
        "Due_Date__c": "2027-01-01",
        "Payment_Terms__c": "NET30",
        "Status__c": "Posted",
    }
    assert write.order_id == ORDER_ID
    assert write.order_fields == {"Billing_Status__c": "Invoiced"}


def test_an_invoice_posted_already_settled_is_paid() -> None:
    write = invoicing.invoice_posted(sample_event(InvoicePosted, amount_due=Decimal("0.0000")))

    assert write.record["Status__c"] == "Paid"
    assert write.record["Amount_Due__c"] == Decimal(0)
    assert write.order_fields == {"Billing_Status__c": "Paid"}


def test_money_reaches_the_crm_as_decimals() -> None:
    record = invoicing.invoice_posted(sample_event(InvoicePosted)).record

    for name in ("Subtotal__c", "Tax__c", "Total__c", "Amount_Due__c"):
        assert isinstance(record[name], Decimal), name


@pytest.mark.parametrize(
    ("remaining", "status"),
    [("1000.0000", "Partially Paid"), ("0.0001", "Partially Paid"), ("0.0000", "Paid")],
)
def test_a_payment_moves_the_invoice_and_the_order_on(remaining: str, status: str) -> None:
    payment = sample_event(PaymentReceived, remaining_balance=Decimal(remaining))

    write = invoicing.payment_received(payment)

    assert write.sobject == "Invoice__c"
    assert write.external_id == "INV-1"
    assert write.record == {
        "ERP_Invoice_Id__c": "INV-1",
        "Amount_Due__c": Decimal(remaining),
        "Status__c": status,
    }
    assert write.order_id == ORDER_ID
    assert write.order_fields == {"Billing_Status__c": status}


LOOKUP = "SELECT Id FROM Invoice__c WHERE ERP_Invoice_Id__c = "


@pytest.mark.parametrize(
    ("erp_invoice_id", "literal"),
    [
        ("INV-1", "'INV-1'"),
        ("INV-O'Brien", "'INV-O\\'Brien'"),
        ("INV-'; DELETE", "'INV-\\'; DELETE'"),
        ("INV\\'1", "'INV\\\\\\'1'"),
    ],
    ids=["plain", "quote", "injection", "backslash then quote"],
)
def test_the_invoice_lookup_escapes_its_literal_as_soql_wants(
    erp_invoice_id: str, literal: str
) -> None:
    assert invoicing.invoice_lookup(erp_invoice_id) == LOOKUP + literal


def test_a_shipment_is_upserted_by_its_erp_id_with_carrier_and_tracking() -> None:
    shipment = sample_event(
        ShipmentConfirmed, tracking_url="https://ups.example/track/1Z999AA10123456784"
    )

    write = fulfillment.shipment_confirmed(shipment)

    assert (write.sobject, write.external_id_field, write.external_id) == (
        "Shipment__c",
        "ERP_Shipment_Id__c",
        "SH-77",
    )
    assert write.record == {
        "ERP_Shipment_Id__c": "SH-77",
        "Name": "SH-77",
        "Order__c": ORDER_ID,
        "Carrier__c": "UPS",
        "Tracking_Number__c": "1Z999AA10123456784",
        "Tracking_Url__c": "https://ups.example/track/1Z999AA10123456784",
        "Shipped_At__c": "2026-12-01T09:30:00+00:00",
        "Completeness__c": "PARTIAL",
        "Warehouse__c": "DC-WEST",
    }
    assert write.order_id == ORDER_ID


@pytest.mark.parametrize(
    ("completeness", "status"),
    [
        (ShipmentCompleteness.COMPLETE, "Shipped"),
        (ShipmentCompleteness.PARTIAL, "Partially Shipped"),
        (ShipmentCompleteness.UNKNOWN, "Partially Shipped"),
    ],
)
def test_only_a_complete_shipment_marks_the_order_shipped(
    completeness: ShipmentCompleteness, status: str
) -> None:
    write = fulfillment.shipment_confirmed(
        sample_event(ShipmentConfirmed, completeness=completeness)
    )

    assert write.order_fields == {"Delivery_Status__c": status}
    assert write.record["Completeness__c"] == completeness.value


def test_a_shipment_time_is_written_in_utc() -> None:
    moment = datetime.fromisoformat("2026-12-01T18:45:00+09:00")

    write = fulfillment.shipment_confirmed(sample_event(ShipmentConfirmed, shipped_at=moment))

    assert write.record["Shipped_At__c"] == datetime(2026, 12, 1, 9, 45, tzinfo=UTC).isoformat()
