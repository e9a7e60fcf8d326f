"""The three services' handlers against the CRM and ERP sandboxes, over real HTTP, with the
CRM's change events on a real Kafka topic: capture, idempotent placement, rejection with its
compensating write-back, the ERP's own refusals and outages, and batched CRM upserts."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from sandbox import scenario
from sandbox.crm import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    INTEGRATION_USER_ID,
    CrmSandbox,
    CrmSimulator,
)
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from contract_fixtures import SCHEMAS_DIR
from crm_cdc_bridge.logic import change_records
from crm_sandbox import change_events
from fulfillment_sync.service import FulfillmentSync
from invoice_sync.service import InvoiceNotInCrm, InvoiceSync
from order_sync.service import CustomerNotMastered, OrderSync
from revsync.connectors.cdc import ChangeType, Integration, RecordChange, decode_change
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.connectors.pubsub import EventSchema
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.events import (
    Event,
    InvoicePosted,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    PaymentReceived,
    RejectionReason,
    ShipmentCompleteness,
    ShipmentConfirmed,
)
from revsync.contracts.ownership import Ownership
from revsync.errors import DependencyNotReady, TransientError
from revsync.ports.erp import Customer, CustomerStatus
from revsync.rules import customers
from revsync.rules.book import RuleBook
from revsync.runtime.handler import Decision
from revsync.settings import Settings
from samples import sample_event, status_change

NEVER = 3600.0
UNKNOWN_ORDER = "801ZZZZZ9999999"
"""A well-formed Order id the CRM has never issued."""
OWNERSHIP = Ownership.load(SCHEMAS_DIR).customer


@dataclass
class Sandboxes:
    crm: CrmSandbox
    erp: ErpSandbox
    crm_url: str
    erp_url: str
    simulator: CrmSimulator
    data: scenario.MasterData

    def bridged(self, order_id: str) -> list[RecordChange]:
        """The order's change events, read from the Pub/Sub API and turned into records
        by the CDC bridge's own logic, decoded as order_sync's consumer decodes them."""
        changes = []
        for event in change_events(self.simulator, {order_id}):
            schema_json = self.simulator.bus.schema(event.schema_id).schema_json
            schema = EventSchema.from_json(event.schema_id, schema_json)
            for record in change_records(event.record, schema, event.replay_id):
                if record.key == order_id:
                    changes.append(decode_change("revsync.order.crm-change.v1", record.value))
        return changes


@pytest.fixture(scope="module")
def sandboxes(settings: Settings) -> Iterator[Sandboxes]:
    crm = CrmSimulator(seed=7).start()
    # No reset: the ERP schema is shared, and every id this module books is its own.
    erp = ErpSimulator(
        settings.postgres_dsn.get_secret_value(),
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
    ).start()
    try:
        with closing(CrmSandbox(crm.url)) as crm_control, ErpSandbox(erp.url) as erp_control:
            data = scenario.seed(crm_control, erp_control, random.Random(7))  # noqa: S311
            yield Sandboxes(crm_control, erp_control, crm.url, erp.url, crm, data)
    finally:
        erp.stop()
        crm.stop()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SCHEMAS_DIR)


@pytest.fixture
def crm(sandboxes: Sandboxes) -> Iterator[SalesforceClient]:
    config = SalesforceConfig(
        instance_url=sandboxes.crm_url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
        timeout_s=5.0,
    )
    with SalesforceClient(config) as client:
        yield client


@pytest.fixture
def order_sync(
    sandboxes: Sandboxes, crm: SalesforceClient, catalog: Catalog
) -> Iterator[OrderSync]:
    erp = ErpRestAdapter(ErpConfig(sandboxes.erp_url, SecretStr(DEFAULT_API_TOKEN), timeout_s=5.0))
    try:
        yield OrderSync(
            crm=crm,
            erp=erp,
            rules=RuleBook.load(),
            integration=Integration("revsync", INTEGRATION_USER_ID),
            catalog=catalog,
            ownership=OWNERSHIP,
            qualify=frozenset(customers.Qualify),
        )
    finally:
        sandboxes.erp.set_faults(error_rate=0)
        erp.close()


def planned(sandboxes: Sandboxes, rng: random.Random, expected: str) -> dict[str, Any]:
    """An order record for the US01 legal entity whose outcome is ``expected``."""
    return next(
        order.record
        for order in scenario.orders(sandboxes.data, 40, rng, invalid_share=1.0)
        if order.expected == expected and order.record["Legal_Entity__c"] == "US01"
    )


def valid_order(sandboxes: Sandboxes, rng: random.Random) -> dict[str, Any]:
    return next(
        order.record
        for order in scenario.orders(sandboxes.data, 4, rng, invalid_share=0.0)
        if order.record["Legal_Entity__c"] == "US01"
    )


def captured(sync: OrderSync, sandboxes: Sandboxes, record: dict[str, Any]) -> OrderCreated:
    """Create and activate ``record`` in the CRM; the event order_sync captures from it."""
    [order_id] = sandboxes.crm.create_orders([record])
    [emission] = sync.capture(status_change(order_id)).emits
    assert isinstance(emission.event, OrderCreated)
    return emission.event


def crm_order(sandboxes: Sandboxes, order_id: str) -> dict[str, Any]:
    [record] = sandboxes.crm.records("Order", Id=order_id)
    return record


def the_event(decision: Decision, topic: str) -> Event:
    [emission] = decision.emits
    assert emission.topic == topic
    return emission.event


def topic_of(catalog: Catalog, event: type[Event]) -> str:
    return catalog.topic_for(event.schema_name).name


# --- order_sync: capture ---------------------------------------------------------------------


def test_an_activated_order_is_captured_from_its_change_events(
    settings: Settings,
    sandboxes: Sandboxes,
    order_sync: OrderSync,
    catalog: Catalog,
    rng: random.Random,
) -> None:
    record = valid_order(sandboxes, rng)
    [order_id] = sandboxes.crm.create_orders([record])
    changes = sandboxes.bridged(order_id)
    assert [change.header.changeType for change in changes] == [
        ChangeType.CREATE,
        ChangeType.UPDATE,
    ]

    draft, activated = (order_sync.capture(change) for change in changes)

    assert draft == Decision()
    created = the_event(activated, topic_of(catalog, OrderCreated))
    assert isinstance(created, OrderCreated)
    assert created.crm_order_id == order_id
    [account] = sandboxes.crm.records("Account", Id=record["AccountId"])
    assert created.erp_customer_id == account["ERP_Customer_Id__c"]
    assert created.legal_entity == "US01"
    assert created.price_book_id == record["Pricebook2Id"]
    assert [line.sku for line in created.lines] == [item["SKU__c"] for item in record["items"]]
    subtotal = sum((item["TotalPrice"] for item in record["items"]), Decimal(0))
    tax = sum((item["Tax__c"] for item in record["items"]), Decimal(0))
    assert created.subtotal == subtotal
    assert created.grand_total == subtotal + tax
    assert created.envelope.causation_id == str(changes[1].envelope.event_id)

    # A gap event for the same order, read later: the same event, so inboxes keep one.
    gap_header = changes[1].header.model_dump(mode="json")
    regap = status_change(order_id, **{**gap_header, "changeType": "GAP_UPDATE"})
    [again] = order_sync.capture(regap).emits
    assert again.event.envelope.event_id == created.envelope.event_id


def test_revsyncs_own_write_back_is_not_captured(
    settings: Settings, sandboxes: Sandboxes, order_sync: OrderSync, rng: random.Random
) -> None:
    created = captured(order_sync, sandboxes, valid_order(sandboxes, rng))
    order_sync.place(created)
    changes = sandboxes.bridged(created.crm_order_id)

    [write_back] = [change for change in changes if "ERP_Status__c" in change.fields]

    assert write_back.fields["ERP_Status__c"] == "Accepted"
    assert order_sync.capture(write_back) == Decision()


def test_an_order_the_crm_holds_invalid_is_rejected_at_capture_once_per_order(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    record = {**valid_order(sandboxes, rng), "CurrencyIsoCode": "ZZZ"}
    [order_id] = sandboxes.crm.create_orders([record])
    rejected_topic = topic_of(catalog, OrderRejected)

    first = the_event(order_sync.capture(status_change(order_id)), rejected_topic)
    # The same order revealed again by another change (a reconciliation's re-read, say).
    second = the_event(order_sync.capture(status_change(order_id)), rejected_topic)

    assert isinstance(first, OrderRejected)
    assert first.reason_code is RejectionReason.INVALID_ORDER
    assert "currency" in first.message
    order = crm_order(sandboxes, order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"] == f"INVALID_ORDER: {first.message}"
    assert second.envelope.event_id == first.envelope.event_id, "one rejection per order"


# --- order_sync: placement -------------------------------------------------------------------


def test_a_valid_order_is_created_in_the_erp_once_and_the_crm_told(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    created = captured(order_sync, sandboxes, valid_order(sandboxes, rng))
    before = sandboxes.erp.stats()

    first = order_sync.place(created)
    second = order_sync.place(created)

    accepted = the_event(first, topic_of(catalog, OrderAccepted))
    repeated = the_event(second, topic_of(catalog, OrderAccepted))
    assert isinstance(accepted, OrderAccepted)
    assert isinstance(repeated, OrderAccepted)
    assert repeated.envelope.event_id == accepted.envelope.event_id
    assert repeated.erp_order_id == accepted.erp_order_id
    [booked] = sandboxes.erp.sales_orders(external_id=created.crm_order_id)
    assert booked["id"] == accepted.erp_order_id
    assert booked["number"] == accepted.erp_order_number
    assert booked["status"] == "open"
    assert Decimal(booked["grand_total"]) == created.grand_total == accepted.erp_grand_total
    after = sandboxes.erp.stats()
    assert after.create_requests - before.create_requests == 2
    assert after.idempotent_replays - before.idempotent_replays == 1
    order = crm_order(sandboxes, created.crm_order_id)
    assert order["ERP_Status__c"] == "Accepted"
    assert order["ERP_Order_Number__c"] == booked["number"]
    assert order["ERP_Order_Id__c"] == booked["id"]
    assert order["ERP_Message__c"] is None


@pytest.mark.parametrize("reason", list(scenario.FLAWS.values()), ids=list(scenario.FLAWS))
def test_an_invalid_order_is_rejected_and_the_crm_told_why(
    sandboxes: Sandboxes,
    order_sync: OrderSync,
    catalog: Catalog,
    rng: random.Random,
    reason: RejectionReason,
) -> None:
    created = captured(order_sync, sandboxes, planned(sandboxes, rng, reason.value))
    before = sandboxes.erp.stats()

    rejected = the_event(order_sync.place(created), topic_of(catalog, OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.crm_order_id == created.crm_order_id
    assert rejected.reason_code is reason
    assert rejected.legal_entity == "US01"
    if reason is RejectionReason.UNKNOWN_PRODUCT:
        assert rejected.offending_skus == [scenario.DISCONTINUED]
    order = crm_order(sandboxes, created.crm_order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"] == f"{reason.value}: {rejected.message}"
    assert sandboxes.erp.sales_orders(external_id=created.crm_order_id) == []
    assert sandboxes.erp.stats().create_requests == before.create_requests, "refused locally"


def test_an_order_of_an_account_not_mastered_yet_waits_and_is_placed_once_it_is(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    """An account customer_sync will master (it has what a customer needs) but has not yet;
    the scenario's prospect without those fields is rejected instead (above)."""
    [prospect] = scenario.crm_only_accounts(sandboxes.crm, scenario.ENTITIES[0], 1, rng)
    record = valid_order(sandboxes, rng) | {"AccountId": prospect.account_id}
    created = captured(order_sync, sandboxes, record)
    assert created.erp_customer_id is None

    with pytest.raises(CustomerNotMastered):
        order_sync.place(created)

    assert crm_order(sandboxes, created.crm_order_id)["ERP_Status__c"] is None
    customer_id = f"C-NEW-{uuid.uuid4().hex[:8]}"
    sandboxes.erp.seed_customers(
        [
            Customer(
                customer_id,
                "Mastered since",
                created.crm_account_id,
                "US01",
                CustomerStatus.ACTIVE,
                Decimal(5_000_000),
                "USD",
            )
        ]
    )
    accepted = the_event(order_sync.place(created), topic_of(catalog, OrderAccepted))
    assert isinstance(accepted, OrderAccepted)
    assert accepted.erp_customer_id == customer_id
    assert crm_order(sandboxes, created.crm_order_id)["ERP_Status__c"] == "Accepted"


def test_an_erp_refusal_of_the_credit_limit_becomes_a_rejection(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    customer_id = f"C-LOW-{uuid.uuid4().hex[:8]}"
    [account] = sandboxes.crm.insert(
        "Account", [{"Name": "Stretched Ltd", "ERP_Customer_Id__c": customer_id}]
    )
    low_limit = Customer(
        customer_id, "Stretched Ltd", account, "US01", CustomerStatus.ACTIVE, Decimal(1), "USD"
    )
    sandboxes.erp.seed_customers([low_limit])
    created = captured(order_sync, sandboxes, {**valid_order(sandboxes, rng), "AccountId": account})
    before = sandboxes.erp.stats()

    rejected = the_event(order_sync.place(created), topic_of(catalog, OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.CREDIT_HOLD
    assert rejected.message.startswith("the ERP refused the order (CREDIT_LIMIT_EXCEEDED): ")
    assert customer_id in rejected.message
    order = crm_order(sandboxes, created.crm_order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"].startswith("CREDIT_HOLD: the ERP refused the order")
    assert sandboxes.erp.sales_orders(external_id=created.crm_order_id) == []
    assert sandboxes.erp.stats().rejected - before.rejected == 1


def test_an_erp_outage_is_transient_and_leaves_both_systems_untouched(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    record = valid_order(sandboxes, rng)
    warm, created = (captured(order_sync, sandboxes, record) for _ in range(2))
    order_sync.place(warm)  # master data now cached: the outage hits the create itself
    sandboxes.erp.set_faults(error_rate=1.0)
    before = sandboxes.erp.stats()

    with pytest.raises(TransientError) as raised:
        order_sync.place(created)

    assert "HTTP 503" in str(raised.value)
    assert "/sales-orders" in str(raised.value)
    assert sandboxes.erp.stats().create_requests == before.create_requests
    assert crm_order(sandboxes, created.crm_order_id)["ERP_Status__c"] is None
    sandboxes.erp.set_faults(error_rate=0)
    assert isinstance(
        the_event(order_sync.place(created), topic_of(catalog, OrderAccepted)), OrderAccepted
    )
    assert len(sandboxes.erp.sales_orders(external_id=created.crm_order_id)) == 1


def test_an_erp_outage_during_master_data_lookup_is_transient(
    sandboxes: Sandboxes, order_sync: OrderSync, rng: random.Random
) -> None:
    created = captured(order_sync, sandboxes, valid_order(sandboxes, rng))
    sandboxes.erp.set_faults(error_rate=1.0)

    with pytest.raises(TransientError):
        order_sync.place(created)

    assert crm_order(sandboxes, created.crm_order_id)["ERP_Status__c"] is None


def test_orders_are_placed_with_the_master_data_cache_turned_off(
    sandboxes: Sandboxes, crm: SalesforceClient, catalog: Catalog, rng: random.Random
) -> None:
    erp = ErpRestAdapter(ErpConfig(sandboxes.erp_url, SecretStr(DEFAULT_API_TOKEN)))
    uncached = OrderSync(
        crm=crm,
        erp=erp,
        rules=RuleBook.load(),
        integration=Integration("revsync", INTEGRATION_USER_ID),
        catalog=catalog,
        ownership=OWNERSHIP,
        qualify=frozenset(customers.Qualify),
        master_data_ttl_s=0,  # REVSYNC_MASTER_DATA_TTL_S=0, which the settings allow
    )
    try:
        created = captured(uncached, sandboxes, valid_order(sandboxes, rng))
        decision = uncached.place(created)
    finally:
        erp.close()

    assert isinstance(the_event(decision, topic_of(catalog, OrderAccepted)), OrderAccepted)


def test_a_cancelled_order_is_cancelled_in_the_erp_and_the_crm_told(
    sandboxes: Sandboxes, order_sync: OrderSync, catalog: Catalog, rng: random.Random
) -> None:
    created = captured(order_sync, sandboxes, valid_order(sandboxes, rng))
    order_sync.place(created)
    sandboxes.crm.cancel_order(created.crm_order_id, "customer changed their mind")
    cancelled = the_event(
        order_sync.capture(status_change(created.crm_order_id, "Cancelled")),
        topic_of(catalog, OrderCancelled),
    )
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == "customer changed their mind"

    assert order_sync.cancel(cancelled) == Decision()
    assert order_sync.cancel(cancelled) == Decision()

    [booked] = sandboxes.erp.sales_orders(external_id=created.crm_order_id)
    assert booked["status"] == "cancelled"
    assert booked["cancel_reason"] == "customer changed their mind"
    order = crm_order(sandboxes, created.crm_order_id)
    assert order["ERP_Status__c"] == "Cancelled"
    assert order["ERP_Message__c"] == "customer changed their mind"


def test_cancelling_an_order_the_erp_rejected_asks_nothing_of_the_erp(
    sandboxes: Sandboxes, order_sync: OrderSync, rng: random.Random
) -> None:
    created = captured(
        order_sync, sandboxes, planned(sandboxes, rng, RejectionReason.UNKNOWN_PRODUCT.value)
    )
    order_sync.place(created)
    sandboxes.crm.cancel_order(created.crm_order_id, "customer changed their mind")

    # The ERP never had the order: there is nothing to cancel there, and nothing to wait for.
    assert not order_sync.capture(status_change(created.crm_order_id, "Cancelled")).emits


# --- invoice_sync and fulfillment_sync -------------------------------------------------------


def test_a_batch_of_invoices_goes_out_in_two_collection_calls_and_fails_per_record(
    sandboxes: Sandboxes, crm: SalesforceClient, rng: random.Random
) -> None:
    records = [valid_order(sandboxes, rng) for _ in range(3)]
    order_ids = sandboxes.crm.create_orders(records)
    tag = uuid.uuid4().hex[:8]
    invoices = [
        sample_event(
            InvoicePosted,
            crm_order_id=order_id,
            crm_account_id=record["AccountId"],
            erp_invoice_id=f"INV-{tag}-{n}",
            invoice_number=f"US01-2026-{tag}-{n}",
        )
        for n, (order_id, record) in enumerate(zip(order_ids[:2], records, strict=False))
    ]
    orphan = sample_event(
        InvoicePosted,
        crm_order_id=UNKNOWN_ORDER,
        crm_account_id=records[0]["AccountId"],
        erp_invoice_id=f"INV-{tag}-orphan",
    )
    early_payment = sample_event(
        PaymentReceived, crm_order_id=order_ids[2], erp_invoice_id=f"INV-{tag}-unposted"
    )
    before = sandboxes.crm.counters().get("api.collections.upsert", 0)

    results = InvoiceSync(crm).handle_many([invoices[0], orphan, invoices[1], early_payment])

    assert sandboxes.crm.counters()["api.collections.upsert"] - before == 2
    assert isinstance(results[0], Decision)
    assert isinstance(results[2], Decision)
    assert isinstance(results[1], DependencyNotReady)
    assert "Order__c" in str(results[1])
    assert isinstance(results[3], InvoiceNotInCrm)
    for invoice in invoices:
        [written] = sandboxes.crm.records("Invoice__c", ERP_Invoice_Id__c=invoice.erp_invoice_id)
        assert written["Order__c"] == invoice.crm_order_id
        assert written["Total__c"] == invoice.grand_total
        assert written["Status__c"] == "Posted"
        assert crm_order(sandboxes, invoice.crm_order_id)["Billing_Status__c"] == "Invoiced"
    assert sandboxes.crm.records("Invoice__c", ERP_Invoice_Id__c=orphan.erp_invoice_id) == []
    assert crm_order(sandboxes, order_ids[2])["Billing_Status__c"] is None


def test_a_shipment_for_an_order_the_crm_does_not_know_is_not_ready(
    sandboxes: Sandboxes, crm: SalesforceClient
) -> None:
    shipment = sample_event(
        ShipmentConfirmed,
        crm_order_id=UNKNOWN_ORDER,
        erp_shipment_id=f"SH-{uuid.uuid4().hex[:8]}",
    )

    with pytest.raises(DependencyNotReady):
        FulfillmentSync(crm)(shipment)

    assert sandboxes.crm.records("Shipment__c", ERP_Shipment_Id__c=shipment.erp_shipment_id) == []


def test_a_complete_shipment_marks_the_crm_order_shipped(
    sandboxes: Sandboxes, crm: SalesforceClient, rng: random.Random
) -> None:
    [order_id] = sandboxes.crm.create_orders([valid_order(sandboxes, rng)])
    shipment = sample_event(
        ShipmentConfirmed,
        crm_order_id=order_id,
        erp_shipment_id=f"SH-{uuid.uuid4().hex[:8]}",
        completeness=ShipmentCompleteness.COMPLETE,
    )

    assert FulfillmentSync(crm)(shipment) == Decision()

    [written] = sandboxes.crm.records("Shipment__c", ERP_Shipment_Id__c=shipment.erp_shipment_id)
    assert written["Order__c"] == order_id
    assert written["Tracking_Number__c"] == shipment.tracking_number
    assert crm_order(sandboxes, order_id)["Delivery_Status__c"] == "Shipped"
