"""Business Central's records as revsync's changes, and the rules of its webhooks: a posted
invoice, a shipment and an applied payment each one event whatever reads them again; a
customer one event per version and a credit change only when its credit fields moved; a
notification taken only with revsync's client state; a subscription renewed inside its
window."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from erp_inbound import business_central as bc
from erp_inbound.business_central_mapping import (
    Company,
    CreditState,
    OrderReference,
    RecordInvalid,
    credit_state,
    customer_changes,
    invoice_posted,
    is_posted,
    moment,
    order_reference,
    payment_received,
    shipment_confirmed,
    stamp,
)
from erp_inbound.sink import Change, InboundSink
from erp_outbox_publisher.logic import ErpOutboxRow, canonical_event
from leaks import told
from revsync.connectors.business_central import BusinessCentralConfig
from revsync.connectors.business_central_auth import BusinessCentralAuthFailed, BusinessCentralWire
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerStatus,
    Event,
    InvoicePosted,
    PaymentMethod,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
)
from revsync.errors import ErrorClass, TransientError, classify

COMPANY = Company(tenant="contoso/production", id="c0ffee00-0000-4000-8000-000000000001",
                  legal_entity="US01", currency="USD")  # fmt: skip
CRM_ORDER = "8015g00000AbCdEAAV"
CRM_ACCOUNT = "0015g00000AcMeAAA"
READ_AT = datetime(2026, 12, 7, 10, 0, 5, tzinfo=UTC)
ORDER = OrderReference(
    id="5a1e5000-0000-4000-8000-000000000001",
    number="SO-1042",
    external_id=CRM_ORDER,
    customer_id="cu570000-0000-4000-8000-000000000001",
    crm_account_id=CRM_ACCOUNT,
    legal_entity="US01",
    region="NA",
    currency="USD",
)
INVOICE: dict[str, Any] = {
    "@odata.etag": 'W/"JzQ0OzE7Jw=="',
    "id": "1a000000-0000-4000-8000-000000000001",
    "number": "PSI-1042",
    "externalDocumentNumber": CRM_ORDER,
    "orderId": ORDER.id,
    "orderNumber": "SO-1042",
    "invoiceDate": "2026-12-07",
    "postingDate": "2026-12-07",
    "dueDate": "2027-01-06",
    "customerId": ORDER.customer_id,
    "currencyCode": "",
    "paymentTermsId": "7e000000-0000-4000-8000-000000000030",
    "totalAmountExcludingTax": 1180,
    "totalTaxAmount": 94.4,
    "totalAmountIncludingTax": 1274.4,
    "remainingAmount": 1274.4,
    "status": "Open",
    "lastModifiedDateTime": "2026-12-07T10:00:01.250Z",
}
SHIPMENT: dict[str, Any] = {
    "id": "5b000000-0000-4000-8000-000000000001",
    "number": "PSS-1042",
    "externalDocumentNumber": CRM_ORDER,
    "orderNumber": "SO-1042",
    "customerId": ORDER.customer_id,
    "shipmentDate": "2026-12-07",
    "shippingAgentCode": "UPS",
    "packageTrackingNo": "1Z999AA10123456784",
    "lastModifiedDateTime": "2026-12-07T10:00:02.000Z",
    "salesShipmentLines": [
        {"sequence": 10000, "lineType": "Item", "lineObjectNumber": "SEN-001", "quantity": 4},
        {"sequence": 20000, "lineType": "Comment", "lineObjectNumber": "", "quantity": 0},
        {"sequence": 30000, "lineType": "Item", "lineObjectNumber": "VAL-002", "quantity": 1.5},
    ],
}
PAYMENT: dict[str, Any] = {
    "id": "9a000000-0000-4000-8000-000000000001",
    "lineNumber": 10000,
    "customerId": ORDER.customer_id,
    "postingDate": "2026-12-08",
    "documentNumber": "PAY-1042",
    "amount": 1274.4,
    "appliesToInvoiceId": INVOICE["id"],
    "appliesToInvoiceNumber": "PSI-1042",
    "lastModifiedDateTime": "2026-12-08T09:30:00.000Z",
}
CUSTOMER: dict[str, Any] = {
    "id": ORDER.customer_id,
    "number": "C10042",
    "displayName": "Acme Industrial, Inc.",
    "currencyCode": "",
    "paymentTermsId": INVOICE["paymentTermsId"],
    "blocked": " ",
    "balanceDue": 1274.4,
    "creditLimit": 50000,
    "lastModifiedDateTime": "2026-12-07T09:00:00.000Z",
}
LINK: dict[str, Any] = {"id": CUSTOMER["id"], "customerId": CUSTOMER["id"],
                        "crmAccountId": CRM_ACCOUNT}  # fmt: skip
"""revsync's customer link of CUSTOMER, saying no more than the account it is linked to."""


def event_of(change: Change) -> Event:
    """The canonical event the sink makes of a change."""
    return canonical_event(
        ErpOutboxRow(
            id=change.id,
            aggregatetype="x",
            aggregateid=change.aggregateid,
            type=change.type,
            payload=change.payload,
            created_at=change.read_at,
        )
    )


# -- documents ------------------------------------------------------------------------------


def test_a_posted_invoice_is_invoice_posted_for_the_crm_order_it_carries() -> None:
    change = invoice_posted(COMPANY, INVOICE, ORDER, "NET30", READ_AT)
    event = event_of(change)
    assert isinstance(event, InvoicePosted)
    assert event.crm_order_id == CRM_ORDER
    assert event.erp_order_id == ORDER.id
    assert event.erp_invoice_id == INVOICE["id"]
    assert event.invoice_number == "PSI-1042"
    assert event.crm_account_id == CRM_ACCOUNT
    assert (event.subtotal, event.tax_total, event.grand_total, event.amount_due) == (
        Decimal("1180"),
        Decimal("94.4"),
        Decimal("1274.4"),
        Decimal("1274.4"),
    )
    assert event.currency == "USD"
    assert event.payment_terms == "NET30"
    assert (event.legal_entity, event.region) == ("US01", "NA")
    assert event.posted_at == datetime(2026, 12, 7, 10, 0, 1, 250000, tzinfo=UTC)
    assert str(event.due_date) == "2027-01-06"


def test_an_invoice_read_again_later_is_the_same_event() -> None:
    paid = {**INVOICE, "status": "Paid", "remainingAmount": 0,
            "lastModifiedDateTime": "2026-12-09T08:00:00Z"}  # fmt: skip
    first = invoice_posted(COMPANY, INVOICE, ORDER, "NET30", READ_AT)
    again = invoice_posted(COMPANY, paid, ORDER, "NET30", READ_AT + timedelta(days=2))
    assert first.id == again.id
    late = event_of(again)  # first read paid: posted on its posting date, not when paid
    assert isinstance(late, InvoicePosted)
    assert late.posted_at == datetime(2026, 12, 7, tzinfo=UTC)
    assert late.amount_due == Decimal("0")


def test_event_ids_differ_by_company_and_record() -> None:
    other_company = Company("contoso/production", "c0ffee00-0000-4000-8000-000000000002",
                            "CA01", "CAD")  # fmt: skip
    other_record = {**INVOICE, "id": "1a000000-0000-4000-8000-000000000002"}
    ids = {
        invoice_posted(COMPANY, INVOICE, ORDER, "NET30", READ_AT).id,
        invoice_posted(other_company, INVOICE, ORDER, "NET30", READ_AT).id,
        invoice_posted(COMPANY, other_record, ORDER, "NET30", READ_AT).id,
    }
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("status", "posted"),
    [("Open", True), ("Paid", True), ("Draft", False), ("Canceled", False),
     ("Corrective", False)],
)  # fmt: skip
def test_only_open_or_paid_invoices_are_posted(status: str, posted: bool) -> None:
    assert is_posted({**INVOICE, "status": status}) is posted


def test_an_invoice_without_its_totals_names_the_field_not_the_value() -> None:
    broken = {**INVOICE, "totalAmountIncludingTax": "lots"}
    with pytest.raises(RecordInvalid) as caught:
        invoice_posted(COMPANY, broken, ORDER, "NET30", READ_AT)
    assert caught.value.field == "totalAmountIncludingTax"
    assert "lots" not in str(caught.value)
    assert INVOICE["id"] in str(caught.value)


def test_a_shipment_is_shipment_confirmed_with_its_item_lines() -> None:
    change = shipment_confirmed(COMPANY, SHIPMENT, ORDER, {}, READ_AT)
    event = event_of(change)
    assert isinstance(event, ShipmentConfirmed)
    assert event.crm_order_id == CRM_ORDER
    assert event.erp_shipment_id == SHIPMENT["id"]
    assert [(line.line_number, line.sku, line.quantity_shipped) for line in event.lines] == [
        (10000, "SEN-001", Decimal("4")),
        (30000, "VAL-002", Decimal("1.5")),
    ]
    assert (event.carrier, event.tracking_number) == ("UPS", "1Z999AA10123456784")
    assert event.completeness is ShipmentCompleteness.COMPLETE
    assert event.shipped_at == datetime(2026, 12, 7, 10, 0, 2, tzinfo=UTC)


def test_a_shipment_line_naming_its_item_by_id_takes_the_items_number() -> None:
    shipment = copy.deepcopy(SHIPMENT)
    shipment["salesShipmentLines"] = [
        {"sequence": 10000, "lineType": "Item", "itemId": "17e40000", "quantity": 2}
    ]
    change = shipment_confirmed(COMPANY, shipment, ORDER, {"17e40000": "PUM-003"}, READ_AT)
    assert change.payload["shipment"]["lines"] == [
        {"line_number": 10000, "sku": "PUM-003", "quantity": "2.0000"}
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [("packageTrackingNo", ""), ("shippingAgentCode", None), ("salesShipmentLines", None)],
)
def test_a_shipment_missing_what_its_event_needs_is_refused_naming_the_field(
    field: str, value: object
) -> None:
    with pytest.raises(RecordInvalid) as caught:
        shipment_confirmed(COMPANY, {**SHIPMENT, field: value}, ORDER, {}, READ_AT)
    assert caught.value.field == field


def test_a_payment_applied_to_an_invoice_is_payment_received_for_its_order() -> None:
    paid_invoice = {**INVOICE, "status": "Paid", "remainingAmount": 0}
    change = payment_received(COMPANY, PAYMENT, paid_invoice, ORDER, READ_AT)
    event = event_of(change)
    assert isinstance(event, PaymentReceived)
    assert event.crm_order_id == CRM_ORDER
    assert (event.erp_payment_id, event.erp_invoice_id) == (PAYMENT["id"], INVOICE["id"])
    assert (event.amount, event.remaining_balance) == (Decimal("1274.4"), Decimal("0"))
    assert event.currency == "USD"
    assert event.payment_method is PaymentMethod.OTHER
    assert event.received_at == datetime(2026, 12, 8, 9, 30, tzinfo=UTC)
    again = payment_received(COMPANY, {**PAYMENT, "lastModifiedDateTime": "2026-12-09T00:00Z"},
                             paid_invoice, ORDER, READ_AT)  # fmt: skip
    assert again.id == change.id


def test_a_journal_lines_credit_amount_is_the_amount_paid_and_its_description_the_method(
) -> None:  # fmt: skip
    journal_line = {**PAYMENT, "amount": -1274.4, "description": "wire_transfer"}
    event = event_of(payment_received(COMPANY, journal_line, INVOICE, ORDER, READ_AT))
    assert isinstance(event, PaymentReceived)
    assert event.amount == Decimal("1274.4")
    assert event.payment_method is PaymentMethod.WIRE
    other = {**PAYMENT, "description": "Payment of PSI-1042"}
    event = event_of(payment_received(COMPANY, other, INVOICE, ORDER, READ_AT))
    assert isinstance(event, PaymentReceived)
    assert event.payment_method is PaymentMethod.OTHER


def test_a_payment_method_code_revsync_knows_is_kept() -> None:
    change = payment_received(COMPANY, {**PAYMENT, "paymentMethodCode": "ACH"}, INVOICE, ORDER,
                              READ_AT)  # fmt: skip
    event = event_of(change)
    assert isinstance(event, PaymentReceived)
    assert event.payment_method is PaymentMethod.ACH


def test_the_order_of_a_document_comes_from_the_order_or_from_the_document() -> None:
    order = {"id": "5a1e5000-0000-4000-8000-00000000aaaa", "number": "SO-9",
             "customerId": ORDER.customer_id, "currencyCode": "CAD",
             "shortcutDimension1Code": "NA"}  # fmt: skip
    read = order_reference(COMPANY, "salesInvoices", INVOICE, order, CRM_ACCOUNT)
    assert (read.id, read.number, read.external_id) == (order["id"], "SO-9", CRM_ORDER)
    assert read.currency == "USD"  # blank on the invoice: the company's currency
    assert read.region == "NA"  # the order's first shortcut dimension
    gone = order_reference(COMPANY, "salesShipments", SHIPMENT, None, CRM_ACCOUNT)
    assert (gone.id, gone.number) == ("SO-1042", "SO-1042")
    assert gone.customer_id == ORDER.customer_id
    assert gone.region == ""  # no order to say it: the sink refuses the change, naming it
    own = {**SHIPMENT, "shortcutDimension1Code": "EMEA"}
    assert order_reference(COMPANY, "salesShipments", own, order, CRM_ACCOUNT).region == "EMEA"
    with pytest.raises(RecordInvalid) as caught:
        order_reference(COMPANY, "salesInvoices", {**INVOICE, "externalDocumentNumber": ""},
                        order, CRM_ACCOUNT)  # fmt: skip
    assert caught.value.field == "externalDocumentNumber"


# -- customers ------------------------------------------------------------------------------


def test_each_version_of_a_linked_customer_is_customer_mastered() -> None:
    changes = customer_changes(COMPANY, CUSTOMER, LINK, "NET30", None, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered"]
    event = event_of(changes[0])
    assert isinstance(event, CustomerMastered)
    assert (event.crm_account_id, event.erp_customer_id) == (CRM_ACCOUNT, CUSTOMER["id"])
    assert (event.customer_number, event.name) == ("C10042", "Acme Industrial, Inc.")
    assert (event.legal_entity, event.currency, event.payment_terms) == ("US01", "USD", "NET30")
    assert event.status is CustomerStatus.ACTIVE
    assert event.credit_limit == Decimal("50000")
    renamed = {**CUSTOMER, "displayName": "Acme", "lastModifiedDateTime": "2026-12-07T11:00Z"}
    again = customer_changes(COMPANY, CUSTOMER, LINK, "NET30", None, READ_AT)
    later = customer_changes(COMPANY, renamed, LINK, "NET30", None, READ_AT)
    assert again[0].id == changes[0].id
    assert later[0].id != changes[0].id


def test_a_credit_change_is_reported_only_when_the_credit_fields_moved() -> None:
    before = credit_state(CUSTOMER, LINK)
    renamed = {**CUSTOMER, "displayName": "Acme", "lastModifiedDateTime": "2026-12-07T11:00Z"}
    assert [c.type for c in customer_changes(COMPANY, renamed, LINK, "NET30", before,
                                             READ_AT)] == ["CustomerMastered"]  # fmt: skip
    raised = {**CUSTOMER, "creditLimit": 75000, "lastModifiedDateTime": "2026-12-07T12:00Z"}
    changes = customer_changes(COMPANY, raised, LINK, "NET30", before, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered", "CreditStatusChanged"]
    event = event_of(changes[1])
    assert isinstance(event, CreditStatusChanged)
    assert (event.credit_limit, event.exposure, event.available_credit) == (
        Decimal("75000"),
        Decimal("1274.4"),
        Decimal("73725.6"),
    )
    blocked = {**CUSTOMER, "blocked": "All", "lastModifiedDateTime": "2026-12-07T13:00Z"}
    changes = customer_changes(COMPANY, blocked, LINK, "NET30", before, READ_AT)
    credit = event_of(changes[1])
    assert isinstance(credit, CreditStatusChanged)
    assert credit.status is CustomerStatus.BLOCKED


def test_the_customer_links_standing_is_the_status_blocks_and_exposure_reported() -> None:
    held = {**LINK, "creditStatus": "Credit Hold", "blocks": "delivery", "exposure": 9000}
    before = credit_state(CUSTOMER, {**LINK, "creditStatus": "Active", "blocks": ""})
    later = {**CUSTOMER, "lastModifiedDateTime": "2026-12-07T12:00Z"}
    changes = customer_changes(COMPANY, later, held, "NET30", before, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered", "CreditStatusChanged"]
    mastered, credit = event_of(changes[0]), event_of(changes[1])
    assert isinstance(mastered, CustomerMastered)
    assert (mastered.status, mastered.blocks) == (CustomerStatus.CREDIT_HOLD, ["delivery"])
    assert isinstance(credit, CreditStatusChanged)
    assert credit.status is CustomerStatus.CREDIT_HOLD
    assert (credit.exposure, credit.available_credit) == (Decimal("9000"), Decimal("41000"))


def test_a_customer_without_a_crm_account_on_its_link_is_refused_naming_it() -> None:
    with pytest.raises(RecordInvalid) as caught:
        customer_changes(COMPANY, CUSTOMER, {**LINK, "crmAccountId": ""}, "NET30", None,
                         READ_AT)  # fmt: skip
    assert caught.value.field == "crmAccountId"


def test_a_customers_first_version_is_no_credit_change() -> None:
    blocked = {**CUSTOMER, "blocked": "All"}
    changes = customer_changes(COMPANY, blocked, LINK, "NET30", None, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered"]


@pytest.mark.parametrize(
    ("blocked", "status", "blocks"),
    [(" ", CustomerStatus.ACTIVE, []), ("", CustomerStatus.ACTIVE, []),
     ("Ship", CustomerStatus.ACTIVE, ["delivery"]),
     ("Invoice", CustomerStatus.ACTIVE, ["billing"]),
     ("All", CustomerStatus.BLOCKED, ["order", "delivery", "billing"])],
)  # fmt: skip
def test_blocked_is_status_and_blocks(
    blocked: str, status: CustomerStatus, blocks: list[str]
) -> None:
    changes = customer_changes(COMPANY, {**CUSTOMER, "blocked": blocked}, LINK, "NET30",
                               None, READ_AT)  # fmt: skip
    event = event_of(changes[0])
    assert isinstance(event, CustomerMastered)
    assert (event.status, event.blocks) == (status, blocks)


def test_a_blocked_value_revsync_does_not_know_is_refused() -> None:
    with pytest.raises(RecordInvalid) as caught:
        customer_changes(COMPANY, {**CUSTOMER, "blocked": "Everything"}, LINK, "NET30",
                         None, READ_AT)  # fmt: skip
    assert caught.value.field == "blocked"


def test_credit_state_reads_the_version_and_the_credit_fields() -> None:
    assert credit_state(CUSTOMER, LINK) == CreditState(
        datetime(2026, 12, 7, 9, tzinfo=UTC), Decimal("50000"), " |active"
    )


def test_timestamps_are_read_and_written_as_business_central_does() -> None:
    assert moment("2026-12-07T10:00:01.25Z") == datetime(2026, 12, 7, 10, 0, 1, 250000, UTC)
    assert stamp(datetime(2026, 12, 7, 11, 0, 1, 250000, tzinfo=UTC)) == (
        "2026-12-07T11:00:01.250Z"
    )
    with pytest.raises(ValueError, match="UTC offset"):
        moment("2026-12-07T10:00:01")


# -- notifications --------------------------------------------------------------------------

SECRET = SecretStr("s3cret-state")


def notification(
    *, state: str | None = "s3cret-state", change: str = "updated", resource: str | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "subscriptionId": "sub-1",
        "expirationDateTime": "2026-12-10T10:00:00Z",
        "resource": resource or f"api/v2.0/companies({COMPANY.id})/salesInvoices({INVOICE['id']})",
        "changeType": change,
        "lastModifiedDateTime": "2026-12-07T10:00:01Z",
    }
    if state is not None:
        value["clientState"] = state
    return value


def body(*values: dict[str, Any]) -> bytes:
    return json.dumps({"value": list(values)}).encode()


def test_a_notification_names_the_company_the_entity_and_the_record() -> None:
    collection = notification(
        change="collection", resource=f"api/v2.0/companies({COMPANY.id})/customers"
    )
    assert bc.read_notifications(body(notification(), collection), SECRET) == [
        bc.Notified(COMPANY.id, "salesInvoices", INVOICE["id"], "updated"),
        bc.Notified(COMPANY.id, "customers", None, "collection"),
    ]


@pytest.mark.parametrize("state", ["wrong", "", None, "s3cret-state-and-more"])
def test_a_notification_without_the_client_state_refuses_the_whole_body(
    state: str | None,
) -> None:
    with pytest.raises(bc.NotificationRefused) as caught:
        bc.read_notifications(body(notification(), notification(state=state)), SECRET)
    assert caught.value.forged
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"values": []}', b'{"value": [1]}', body(notification(resource="elsewhere"))],
)
def test_a_malformed_notification_is_refused_as_such(raw: bytes) -> None:
    with pytest.raises(bc.NotificationRefused) as caught:
        bc.read_notifications(raw, SECRET)
    assert not caught.value.forged


def test_resources_are_read_with_or_without_the_api_prefix_and_quotes() -> None:
    assert bc.parse_resource("/api/v2.0/companies(abc)/salesInvoices") == (
        "abc",
        "salesInvoices",
        None,
    )
    assert bc.parse_resource("companies('abc')/customers('x-1')") == ("abc", "customers", "x-1")
    assert bc.parse_resource("/api/v2.0/items") is None
    assert bc.parse_resource(None) is None


class UnavailablePool:
    """A pool whose database is down."""

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        raise psycopg.OperationalError("connection refused")
        yield  # pragma: no cover


class RecordingPool:
    """A pool that records what was queued."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, ...]] = []
        self.timeouts: list[float | None] = []

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        self.timeouts.append(timeout)
        yield self

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def cursor(self) -> RecordingPool:
        return self

    def executemany(self, _statement: str, rows: list[tuple[Any, ...]]) -> None:
        self.queued += rows


def inbound(pool: object) -> bc.BusinessCentralInbound:
    return bc.BusinessCentralInbound(
        cast(bc.BusinessCentralApi, object()),
        cast(Any, pool),
        cast(InboundSink, object()),
        config(),
    )


def config(**changes: Any) -> bc.BusinessCentralInboundConfig:
    values: dict[str, Any] = {
        "companies": {"US01": COMPANY.id},
        "notification_url": "https://revsync.example.com/erp/business-central/notifications",
        "client_state": SECRET,
        **changes,
    }
    return bc.BusinessCentralInboundConfig(**values)


def test_a_notification_is_queued_and_taken_at_once() -> None:
    pool = RecordingPool()
    upper = notification(resource=f"api/v2.0/companies({COMPANY.id.upper()})/customers(c-1)")
    assert inbound(pool).notified(body(notification(), upper)) == 202
    assert pool.timeouts == [bc.QUEUE_WAIT_S]  # a busy database is not waited on for long
    assert pool.queued == [
        (COMPANY.id, "salesInvoices", INVOICE["id"], "updated"),
        (COMPANY.id, "customers", "c-1", "updated"),
    ]


def test_notifications_of_other_companies_are_taken_and_dropped() -> None:
    pool = RecordingPool()
    other = notification(resource=f"api/v2.0/companies({uuid.uuid4()})/salesInvoices(x)")
    assert inbound(pool).notified(body(other)) == 202
    assert pool.queued == []


def test_a_wrong_client_state_is_refused_with_a_status_that_ends_the_subscription(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = RecordingPool()
    status = inbound(pool).notified(body(notification(state="guess")))
    assert status == 401
    assert status not in bc.RETRIED_STATUSES
    assert pool.queued == []
    assert "client state" in caplog.text
    assert "guess" not in caplog.text


def answered(answer: str) -> float:
    return (
        REGISTRY.get_sample_value("revsync_erp_inbound_bc_notifications_total", {"answer": answer})
        or 0.0
    )


def test_every_answer_is_counted_by_kind() -> None:
    before = {kind: answered(kind) for kind in ("taken", "refused", "malformed", "unavailable")}
    inbound(RecordingPool()).notified(body(notification()))
    inbound(RecordingPool()).notified(body(notification(state="guess")))
    inbound(RecordingPool()).notified(b"[")
    inbound(UnavailablePool()).notified(body(notification()))
    assert {kind: answered(kind) - count for kind, count in before.items()} == {
        "taken": 1.0, "refused": 1.0, "malformed": 1.0, "unavailable": 1.0
    }  # fmt: skip


def test_a_malformed_body_is_refused() -> None:
    assert inbound(RecordingPool()).notified(b"{") == 400


def test_a_notification_that_cannot_be_queued_is_asked_again() -> None:
    status = inbound(UnavailablePool()).notified(body(notification()))
    assert status == 503
    assert status in bc.RETRIED_STATUSES


def test_the_validation_handshake_answers_the_token() -> None:
    assert inbound(RecordingPool()).validation("a b+c/=") == "a b+c/="


# -- subscriptions and timing ---------------------------------------------------------------

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def test_a_subscription_is_renewed_once_inside_its_window_and_not_before() -> None:
    day = 24 * 3600.0
    assert not bc.renewal_due(NOW + timedelta(days=3), NOW, day)
    assert not bc.renewal_due(NOW + timedelta(days=1, seconds=1), NOW, day)
    assert bc.renewal_due(NOW + timedelta(days=1), NOW, day)
    assert bc.renewal_due(NOW + timedelta(hours=1), NOW, day)
    assert bc.renewal_due(NOW - timedelta(seconds=1), NOW, day)


def test_subscriptions_are_checked_often_enough_to_renew_inside_the_window() -> None:
    assert bc.keeping_interval_s(24 * 3600.0) == 60.0
    assert bc.keeping_interval_s(8.0) == 2.0
    assert bc.keeping_interval_s(0.1) == 0.5
    for window in (0.5, 3.0, 60.0, 3600.0, 86400.0):
        assert bc.keeping_interval_s(window) <= max(window / 2, 0.5)


def test_back_off_doubles_to_a_minute() -> None:
    assert [bc.backoff_s(n) for n in (0, 1, 2, 3, 7, 8, 50)] == [0, 1, 2, 4, 60, 60, 60]


def test_a_subscription_is_made_on_the_collection_of_each_company() -> None:
    assert bc.subscription_resource(COMPANY.id, "customers") == (
        f"/api/v2.0/companies({COMPANY.id})/customers"
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"companies": {}}, "companies"), ({"notification_url": "/relative"}, "notification_url"),
     ({"client_state": SecretStr("")}, "client_state"),
     ({"client_state": SecretStr("x" * 2049)}, "client_state"),
     ({"renew_before_s": 0}, "renew_before_s"),
     ({"reconcile_interval_s": -1}, "reconcile_interval_s"), ({"page_size": 0}, "page_size"),
     ({"first_poll_from": datetime(2026, 12, 1)}, "first_poll_from")],
)  # fmt: skip
def test_a_contradictory_configuration_is_refused_naming_the_setting(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        config(**changes)


def test_the_client_state_is_not_in_the_configurations_repr() -> None:
    assert "s3cret" not in repr(config())


# -- the API over HTTP ----------------------------------------------------------------------

API_URL = "https://api.businesscentral.dynamics.com/v2.0/contoso/production/api/v2.0"


class StubHttp:
    """Answers calls in turn, recording each."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        self.calls.append((method, url, dict(options.get("headers") or {})))
        answer = self.answers.pop(0)
        answer.request = httpx.Request(method, url)
        return answer


class StubSession:
    def __init__(self) -> None:
        self.issued = ["first"]

    def token(self) -> str:
        return self.issued[-1]

    def refresh(self, stale: str | None) -> str:
        self.issued.append(f"after-{stale}")
        return self.issued[-1]


def http_api(*answers: httpx.Response) -> tuple[bc.BusinessCentralHttpApi, StubHttp, StubSession]:
    http, session = StubHttp(*answers), StubSession()
    erp = BusinessCentralConfig(
        api_url=API_URL,
        token_url="https://login.microsoftonline.com/contoso/oauth2/v2.0/token",
        tenant_id="contoso",
        client_id="revsync",
        client_secret=SecretStr("s3cret"),
        companies={"US01": "CRONUS USA, Inc."},
    )
    wire = BusinessCentralWire(cast(Any, http), session, max_calls=2)
    return bc.BusinessCentralHttpApi(wire, erp), http, session


def failure(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": "Customer Acme Industrial was not found"}}
    return httpx.Response(status, json=body, headers=headers)


def test_the_api_reads_with_the_sessions_token_and_exact_amounts() -> None:
    api, http, _ = http_api(httpx.Response(200, content=b'{"value": [{"amount": 0.1}]}'))
    answer = api.get("companies(c)/customerPayments", {"$top": "1"})
    assert answer["value"][0]["amount"] == Decimal("0.1")
    method, url, headers = http.calls[0]
    assert (method, url) == ("GET", f"{API_URL}/companies(c)/customerPayments")
    assert headers["Authorization"] == "Bearer first"
    assert api.scope == "contoso/production"


def test_a_refused_token_is_replaced_once_and_the_call_made_again() -> None:
    api, http, _ = http_api(failure(401, "Unauthorized"), httpx.Response(200, json={}))
    assert api.get("subscriptions") == {}
    assert [call[2]["Authorization"] for call in http.calls] == [
        "Bearer first",
        "Bearer after-first",
    ]
    api, http, _ = http_api(failure(401, "Unauthorized"), failure(401, "Unauthorized"))
    with pytest.raises(BusinessCentralAuthFailed) as refused:
        api.get("subscriptions")
    assert len(http.calls) == 2
    assert classify(refused.value) is ErrorClass.TRANSIENT


def test_a_read_that_may_pass_is_tried_again_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page reads many records: one throttled or timed-out read waits a moment and goes
    on, instead of failing the whole round, which under steady throttling might never end."""
    waits: list[float] = []
    monkeypatch.setattr("erp_inbound.business_central.time.sleep", waits.append)
    api, http, _ = http_api(
        failure(503, "Internal_ServiceUnavailable"),
        failure(429, "Application_TooManyRequests", {"Retry-After": "2"}),
        httpx.Response(200, json={"value": []}),
    )

    assert api.get("companies(c)/salesShipments") == {"value": []}
    assert len(http.calls) == 3
    assert waits == [0.5, 2.0]

    api, http, _ = http_api(*(failure(504, "GatewayTimeout") for _ in range(bc.READ_ATTEMPTS)))
    with pytest.raises(TransientError):
        api.get("companies(c)/salesShipments")
    assert len(http.calls) == bc.READ_ATTEMPTS


def test_failures_are_typed_by_status_and_name_the_code_not_the_message() -> None:
    api, _, _ = http_api(failure(404, "BadRequest_NotFound"))
    with pytest.raises(bc.RecordGone):
        api.get("companies(c)/salesInvoices(x)")
    api, _, _ = http_api(failure(429, "Application_TooManyRequests", {"Retry-After": "7"}))
    with pytest.raises(TransientError) as throttled:
        api.get("companies(c)/salesInvoices")
    assert throttled.value.retry_after == 7.0
    api, _, _ = http_api(failure(400, "BadRequest"))
    with pytest.raises(bc.BusinessCentralRefused) as refused:
        api.post("subscriptions", {"resource": "x"})
    assert (refused.value.status, refused.value.code) == (400, "BadRequest")
    assert "Acme" not in told(refused.value)
    api, _, _ = http_api(failure(403, "Authorization_InsufficientPermissions"))
    with pytest.raises(BusinessCentralAuthFailed):
        api.get("subscriptions")


def test_a_renewal_carries_the_etag_and_a_link_is_read_from_the_extension() -> None:
    link = {"customerId": "c-1", "crmAccountId": CRM_ACCOUNT}
    api, http, _ = http_api(
        httpx.Response(200, json={"subscriptionId": "s"}),
        httpx.Response(200, json=link),
        failure(404, "BadRequest_NotFound"),
    )
    api.patch("subscriptions('s')", {"resource": "r"}, 'W/"JzE7Jw=="')
    assert http.calls[0][2]["If-Match"] == 'W/"JzE7Jw=="'
    assert api.customer_link("c", "c-1") == link
    assert http.calls[1][1] == (
        "https://api.businesscentral.dynamics.com/v2.0/contoso/production/"
        "api/revsync/integration/v1.0/companies(c)/customerLinks(c-1)"
    )
    assert api.customer_link("c", "c-2") is None


def test_a_next_page_link_outside_the_api_is_not_followed() -> None:
    api, http, _ = http_api()
    with pytest.raises(bc.BusinessCentralRefused):
        api.get_link("https://elsewhere.example.com/steal?token")
    assert http.calls == []
