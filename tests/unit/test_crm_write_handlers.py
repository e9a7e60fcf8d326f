"""invoice_sync's and fulfillment_sync's handlers against the in-memory CRM: each ERP event
upserts its record on the CRM order by its ERP id and moves the order's status on; what the
CRM cannot link yet waits; a batch goes out as sObject Collections calls and fails per input.
tests/integration/test_service_handlers.py runs the same against the CRM sandbox."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from fakes import FakeCrm
from fulfillment_sync.service import FulfillmentSync
from invoice_sync.service import InvoiceNotInCrm, InvoiceSync
from revsync.contracts.events import (
    InvoicePosted,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
)
from revsync.errors import DependencyNotReady
from revsync.ports.crm import CrmReferenceMissing
from revsync.runtime.handler import Decision
from samples import sample_event

UNKNOWN_ORDER = "801ZZZZZ9999999"
"""A well-formed Order id the CRM has never issued."""


@pytest.fixture
def crm() -> FakeCrm:
    return FakeCrm()


@pytest.fixture
def account(crm: FakeCrm) -> str:
    [account] = crm.insert("Account", [{"Name": "Acme Corp", "ERP_Customer_Id__c": "C-10042"}])
    return account


def an_order(crm: FakeCrm, account: str) -> str:
    [order] = crm.create_orders(
        [
            {
                "AccountId": account,
                "EffectiveDate": "2026-12-01",
                "CurrencyIsoCode": "USD",
                "items": [{"SKU__c": "SKU-101", "Quantity": 3, "UnitPrice": Decimal("199.99")}],
            }
        ]
    )
    return order


def an_invoice(order: str, account: str, **fields: object) -> InvoicePosted:
    tag = uuid.uuid4().hex[:8]
    return sample_event(
        InvoicePosted,
        crm_order_id=order,
        crm_account_id=account,
        erp_invoice_id=f"INV-{tag}",
        invoice_number=f"US01-2026-{tag}",
        **fields,
    )


def a_shipment(order: str, **fields: object) -> ShipmentConfirmed:
    return sample_event(
        ShipmentConfirmed,
        crm_order_id=order,
        erp_shipment_id=f"SH-{uuid.uuid4().hex[:8]}",
        **fields,
    )


def the_one(crm: FakeCrm, sobject: str, **key: str) -> dict[str, object]:
    [record] = crm.records(sobject, **key)
    return record


# --- invoice_sync ----------------------------------------------------------------------------


def test_a_posted_invoice_is_upserted_on_its_order_and_the_order_marked_invoiced(
    crm: FakeCrm, account: str
) -> None:
    order = an_order(crm, account)
    invoice = an_invoice(order, account)

    assert InvoiceSync(crm)(invoice) == Decision()

    written = the_one(crm, "Invoice__c", ERP_Invoice_Id__c=invoice.erp_invoice_id)
    assert (written["Order__c"], written["Account__c"]) == (order, account)
    assert (written["Name"], written["Status__c"]) == (invoice.invoice_number, "Posted")
    assert written["Total__c"] == invoice.grand_total
    assert written["Due_Date__c"] == invoice.due_date.isoformat()
    assert the_one(crm, "Order", Id=order)["Billing_Status__c"] == "Invoiced"


def test_an_invoice_delivered_twice_is_one_record(crm: FakeCrm, account: str) -> None:
    order = an_order(crm, account)
    invoice = an_invoice(order, account)
    sync = InvoiceSync(crm)

    sync(invoice)
    sync(invoice)

    assert len(crm.records("Invoice__c", ERP_Invoice_Id__c=invoice.erp_invoice_id)) == 1


@pytest.mark.parametrize(
    ("remaining", "status"), [("1000.0000", "Partially Paid"), ("0.0000", "Paid")]
)
def test_a_payment_moves_the_invoice_and_the_order_on(
    crm: FakeCrm, account: str, remaining: str, status: str
) -> None:
    order = an_order(crm, account)
    invoice = an_invoice(order, account)
    sync = InvoiceSync(crm)
    sync(invoice)
    payment = sample_event(
        PaymentReceived,
        crm_order_id=order,
        erp_invoice_id=invoice.erp_invoice_id,
        invoice_number=invoice.invoice_number,
        remaining_balance=Decimal(remaining),
    )

    assert sync(payment) == Decision()

    written = the_one(crm, "Invoice__c", ERP_Invoice_Id__c=invoice.erp_invoice_id)
    assert (written["Status__c"], written["Amount_Due__c"]) == (status, Decimal(remaining))
    assert written["Total__c"] == invoice.grand_total, "the payment leaves the invoice's total"
    assert the_one(crm, "Order", Id=order)["Billing_Status__c"] == status


def test_a_payment_before_its_invoice_waits_and_writes_nothing(crm: FakeCrm, account: str) -> None:
    order = an_order(crm, account)
    early = sample_event(PaymentReceived, crm_order_id=order, erp_invoice_id="INV-unposted")

    with pytest.raises(InvoiceNotInCrm) as waiting:
        InvoiceSync(crm)(early)

    assert isinstance(waiting.value, DependencyNotReady)
    assert early.erp_payment_id in str(waiting.value)
    assert crm.records("Invoice__c", ERP_Invoice_Id__c="INV-unposted") == []
    assert the_one(crm, "Order", Id=order)["Billing_Status__c"] is None


def test_an_invoice_for_an_order_the_crm_lacks_waits_and_writes_nothing(
    crm: FakeCrm, account: str
) -> None:
    orphan = an_invoice(UNKNOWN_ORDER, account)

    with pytest.raises(CrmReferenceMissing) as waiting:
        InvoiceSync(crm)(orphan)

    assert waiting.value.fields == ("Order__c",)
    assert crm.records("Invoice__c", ERP_Invoice_Id__c=orphan.erp_invoice_id) == []


def test_a_batch_of_invoices_goes_out_in_two_collection_calls_and_fails_per_input(
    crm: FakeCrm, account: str
) -> None:
    orders = [an_order(crm, account) for _ in range(3)]
    invoices = [an_invoice(order, account) for order in orders[:2]]
    orphan = an_invoice(UNKNOWN_ORDER, account)
    early_payment = sample_event(
        PaymentReceived, crm_order_id=orders[2], erp_invoice_id="INV-unposted"
    )
    before = crm.calls["upsert_many"]

    results = InvoiceSync(crm).handle_many([invoices[0], orphan, invoices[1], early_payment])

    assert crm.calls["upsert_many"] - before == 2, "one call for the invoices, one for the orders"
    assert isinstance(results[0], Decision)
    assert isinstance(results[1], CrmReferenceMissing)
    assert "Order__c" in str(results[1])
    assert isinstance(results[2], Decision)
    assert isinstance(results[3], InvoiceNotInCrm)
    for invoice in invoices:
        written = the_one(crm, "Invoice__c", ERP_Invoice_Id__c=invoice.erp_invoice_id)
        assert written["Order__c"] == invoice.crm_order_id
        assert the_one(crm, "Order", Id=invoice.crm_order_id)["Billing_Status__c"] == "Invoiced"
    assert crm.records("Invoice__c", ERP_Invoice_Id__c=orphan.erp_invoice_id) == []
    assert the_one(crm, "Order", Id=orders[2])["Billing_Status__c"] is None


# --- fulfillment_sync ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completeness", "status"),
    [
        (ShipmentCompleteness.COMPLETE, "Shipped"),
        (ShipmentCompleteness.PARTIAL, "Partially Shipped"),
    ],
)
def test_a_shipment_is_upserted_on_its_order_and_the_order_marked_shipped(
    crm: FakeCrm, account: str, completeness: ShipmentCompleteness, status: str
) -> None:
    order = an_order(crm, account)
    shipment = a_shipment(order, completeness=completeness)

    assert FulfillmentSync(crm)(shipment) == Decision()

    written = the_one(crm, "Shipment__c", ERP_Shipment_Id__c=shipment.erp_shipment_id)
    assert written["Order__c"] == order
    assert (written["Carrier__c"], written["Tracking_Number__c"]) == (
        shipment.carrier,
        shipment.tracking_number,
    )
    assert written["Completeness__c"] == completeness.value
    assert the_one(crm, "Order", Id=order)["Delivery_Status__c"] == status


def test_a_shipment_for_an_order_the_crm_lacks_waits_and_writes_nothing(crm: FakeCrm) -> None:
    shipment = a_shipment(UNKNOWN_ORDER)

    with pytest.raises(DependencyNotReady):
        FulfillmentSync(crm)(shipment)

    assert crm.records("Shipment__c", ERP_Shipment_Id__c=shipment.erp_shipment_id) == []


def test_a_batch_of_shipments_fails_only_the_one_whose_order_is_missing(
    crm: FakeCrm, account: str
) -> None:
    orders = [an_order(crm, account) for _ in range(2)]
    shipments = [a_shipment(order, completeness=ShipmentCompleteness.COMPLETE) for order in orders]
    orphan = a_shipment(UNKNOWN_ORDER)

    results = FulfillmentSync(crm).handle_many([shipments[0], orphan, shipments[1]])

    assert [type(result) for result in results] == [Decision, CrmReferenceMissing, Decision]
    assert crm.calls["upsert_many"] == 2
    for order in orders:
        assert the_one(crm, "Order", Id=order)["Delivery_Status__c"] == "Shipped"
    assert crm.records("Shipment__c", ERP_Shipment_Id__c=orphan.erp_shipment_id) == []
