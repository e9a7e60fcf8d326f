"""order_sync's handler against the in-memory CRM and ERP: an activated order captured into
OrderCreated, placed in the ERP once whatever the retries, rejected with its compensating
write-back when it breaks a rule or the ERP refuses it, waiting for an account's customer to
be mastered, and cancelled unless the ERP has gone too far; the ERP's customer changes make it
read the customer afresh. tests/integration/test_service_handlers.py runs the same against
the sandboxes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from contract_fixtures import SCHEMAS_DIR
from fakes import FakeCrm, FakeErp
from order_sync.service import CustomerNotMastered, OrderSync
from revsync.connectors.cdc import Integration, decode_change
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.events import (
    CreditCheckOutcome,
    CreditStatusChanged,
    CustomerMastered,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    RejectionReason,
    SourceSystem,
)
from revsync.contracts.ownership import Ownership
from revsync.errors import DependencyNotReady, ErrorClass, TransientError, classify
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, SalesOrderStatus
from revsync.rules import customers
from revsync.rules.book import RuleBook
from revsync.runtime.handler import Decision
from samples import sample_event, status_change

INTEGRATION_USER = "005000000000001AAA"
PRICES = {"SEN-001": Decimal("120.00"), "VAL-001": Decimal("45.50"), "VAL-099": Decimal("9.99")}
OWNERSHIP = Ownership.load(SCHEMAS_DIR).customer


@dataclass
class World:
    crm: FakeCrm
    erp: FakeErp
    catalog: Catalog
    price_book: str
    accounts: dict[str, str]
    """By kind: active, held, low_limit (a credit limit of 1), unmastered (no ERP customer)."""

    def topic(self, event: type[Event]) -> str:
        return self.catalog.topic_for(event.schema_name).name


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SCHEMAS_DIR)


@pytest.fixture
def world(catalog: Catalog) -> World:
    """One legal entity's master data, consistent in both systems."""
    crm, erp = FakeCrm(), FakeErp()
    [price_book] = crm.insert("Pricebook2", [{"Name": "US01 list prices"}])
    customers = {"active": "C-US01-1", "held": "C-US01-0", "low_limit": "C-US01-LOW"}
    ids = crm.insert(
        "Account",
        [{"Name": f"{kind} customer", "ERP_Customer_Id__c": c} for kind, c in customers.items()]
        + [
            {
                "Name": "Prospect without ERP customer",
                "Legal_Entity__c": "US01",
                "CurrencyIsoCode": "USD",
                "BillingCountryCode": "US",
            }
        ],
    )
    accounts = dict(zip([*customers, "unmastered"], ids, strict=True))
    status = {"held": CustomerStatus.CREDIT_HOLD}
    limit = {"low_limit": Decimal(1)}
    erp.seed_customers(
        Customer(
            customer_id,
            f"{kind} customer",
            accounts[kind],
            "US01",
            status.get(kind, CustomerStatus.ACTIVE),
            limit.get(kind, Decimal(5_000_000)),
            "USD",
        )
        for kind, customer_id in customers.items()
    )
    erp.seed_products(
        Product(sku, f"{sku} industrial", "VALVES", "EA", sku != "VAL-099", frozenset())
        for sku in PRICES
    )
    erp.seed_price_books([PriceBook(price_book, "US01 list prices", "USD", "US01", PRICES)])
    return World(crm, erp, catalog, price_book, accounts)


@pytest.fixture
def sync(world: World) -> Iterator[OrderSync]:
    handler = OrderSync(
        crm=world.crm,
        erp=world.erp,
        rules=RuleBook.load(),
        integration=Integration("revsync", INTEGRATION_USER),
        catalog=world.catalog,
        ownership=OWNERSHIP,
        qualify=frozenset(customers.Qualify),
        concurrency=2,
    )
    yield handler
    handler.close()


def an_order(world: World, account: str = "active", **fields: Any) -> dict[str, Any]:
    """An order a rep enters for US01: a sensor and two valves at list price, with tax."""
    items = [
        {"SKU__c": sku, "Quantity": quantity, "UnitPrice": PRICES[sku], "Tax__c": tax}
        for sku, quantity, tax in (("SEN-001", 2, Decimal("19.20")), ("VAL-001", 1, Decimal(0)))
    ]
    address = {
        f"{kind}{part}": value
        for kind in ("Billing", "Shipping")
        for part, value in (
            ("Street", "1 Harbour Road"),
            ("City", "Chicago"),
            ("CountryCode", "US"),
        )
    }
    return {
        "AccountId": world.accounts[account],
        "Pricebook2Id": world.price_book,
        "CurrencyIsoCode": "USD",
        "EffectiveDate": "2026-12-01",
        "PoNumber": "PO-000042",
        "Legal_Entity__c": "US01",
        "Region__c": "NA",
        **address,
        "items": [
            {
                **item,
                "Product_Name__c": f"{item['SKU__c']} industrial",
                "Product_Line__c": "VALVES",
                "Unit_Of_Measure__c": "EA",
            }
            for item in items
        ],
        **fields,
    }


def mastered(world: World, customer_id: str, legal_entity: str) -> Customer:
    """The ERP customer customer_sync masters from the unmastered account."""
    return Customer(
        customer_id,
        "Prospect, now a customer",
        world.accounts["unmastered"],
        legal_entity,
        CustomerStatus.ACTIVE,
        Decimal(5_000_000),
        "USD",
    )


def submitted_order(order: OrderCreated) -> OrderCreated:
    """``order`` as the process API submits one for a web shop or partner portal."""
    envelope = order.envelope.model_copy(update={"source_system": SourceSystem.REVSYNC})
    return order.model_copy(update={"envelope": envelope})


def credit_change(world: World, account: str, customer_id: str) -> CreditStatusChanged:
    return sample_event(
        CreditStatusChanged, crm_account_id=world.accounts[account], erp_customer_id=customer_id
    )


def the_event(decision: Decision, topic: str) -> Event:
    [emission] = decision.emits
    assert emission.topic == topic
    return emission.event


def captured(sync: OrderSync, world: World, record: dict[str, Any]) -> OrderCreated:
    """Create and activate ``record`` in the CRM; the event order_sync captures from it."""
    [order_id] = world.crm.create_orders([record])
    created = the_event(sync.capture(status_change(order_id)), world.topic(OrderCreated))
    assert isinstance(created, OrderCreated)
    return created


def crm_order(world: World, order_id: str) -> dict[str, Any]:
    return world.crm.get("Order", order_id)


# --- capture ---------------------------------------------------------------------------------


def test_an_activated_order_is_captured_as_order_created(sync: OrderSync, world: World) -> None:
    [order_id] = world.crm.create_orders([an_order(world)])
    change = status_change(order_id)

    created = the_event(sync.capture(change), world.topic(OrderCreated))

    assert isinstance(created, OrderCreated)
    assert created.crm_order_id == order_id
    assert created.erp_customer_id == "C-US01-1"
    assert (created.legal_entity, created.region, created.currency) == ("US01", "NA", "USD")
    assert created.price_book_id == world.price_book
    assert [(line.sku, line.quantity) for line in created.lines] == [
        ("SEN-001", Decimal(2)),
        ("VAL-001", Decimal(1)),
    ]
    assert (created.subtotal, created.tax_total) == (Decimal("285.50"), Decimal("19.20"))
    assert created.grand_total == Decimal("304.70")
    assert created.envelope.causation_id == str(change.envelope.event_id)
    # The same order revealed again by a gap event: the same event, so inboxes keep one.
    gap = status_change(order_id, changeType="GAP_UPDATE")
    [again] = sync.capture(gap).emits
    assert again.event.envelope.event_id == created.envelope.event_id


def test_each_order_of_a_merged_change_is_captured_on_its_own(
    sync: OrderSync, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, failing, third = world.crm.create_orders([an_order(world) for _ in range(3)])
    merged = status_change(first, recordIds=[first, failing, third])
    reads = world.crm.get

    def get(sobject: str, record_id: str, fields: list[str]) -> dict[str, Any]:
        if record_id == failing:
            raise TransientError("CRM answered 503")
        return reads(sobject, record_id, fields)

    monkeypatch.setattr(world.crm, "get", get)
    decision = sync.capture(merged)

    created = [emission.event for emission in decision.emits]
    assert [e.crm_order_id for e in created if isinstance(e, OrderCreated)] == [first, third]
    [part] = decision.failed
    assert part.key == failing.encode()
    assert isinstance(part.error, TransientError)
    # The failed order goes on as a change of its own, with an identity of its own.
    alone = decode_change("crm-change", part.value)
    assert alone.header.recordIds == [failing]
    assert alone.header.transactionKey == merged.header.transactionKey
    assert alone.fields == merged.fields
    assert alone.envelope.event_id != merged.envelope.event_id
    monkeypatch.setattr(world.crm, "get", reads)
    [retried] = sync.capture(alone).emits
    assert isinstance(retried.event, OrderCreated)
    assert retried.event.crm_order_id == failing


def test_a_failed_order_of_a_merged_change_is_logged_without_the_data_its_error_quotes(
    sync: OrderSync, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, failing = world.crm.create_orders([an_order(world) for _ in range(2)])
    reads = world.crm.get

    def get(sobject: str, record_id: str, fields: list[str]) -> dict[str, Any]:
        if record_id == failing:
            raise ValueError("'ap@acme.example' is not a valid email")  # a library's own text
        return reads(sobject, record_id, fields)

    monkeypatch.setattr(world.crm, "get", get)
    [part] = sync.capture(status_change(first, recordIds=[first, failing])).failed

    assert isinstance(part.error, ValueError)
    assert f"order {failing} of a merged change failed: ValueError" in caplog.text
    assert "ap@acme.example" not in caplog.text


def test_a_wildcard_record_id_reconciles_like_an_overflow(sync: OrderSync, world: World) -> None:
    activated = world.crm.create_orders([an_order(world) for _ in range(2)])
    wildcard = status_change("801*", recordIds=["801*"])

    decision = sync.capture(wildcard)

    assert sorted(e.event.key for e in decision.emits) == sorted(activated)


def test_the_integration_users_own_overflow_still_reconciles(sync: OrderSync, world: World) -> None:
    [order_id] = world.crm.create_orders([an_order(world)])
    overflow = status_change(
        "000000000000000AAA",
        changeType="GAP_OVERFLOW",
        changeOrigin="com/salesforce/api/rest/62.0;client=revsync",
        commitUser=INTEGRATION_USER,
    )

    assert [e.event.key for e in sync.capture(overflow).emits] == [order_id]


def test_a_draft_and_revsyncs_own_write_back_are_not_captured(
    sync: OrderSync, world: World
) -> None:
    [draft] = world.crm.create_orders([an_order(world)], activate=False)
    [order_id] = world.crm.create_orders([an_order(world)])
    own = status_change(order_id, changeOrigin="com/salesforce/api/rest/62.0;client=revsync")

    assert not sync.capture(status_change(draft, "Draft")).emits
    assert not sync.capture(status_change(draft)).emits, "the CRM says it is still a draft"
    assert not sync.capture(own).emits


def test_an_order_deleted_since_its_change_is_not_captured(sync: OrderSync, world: World) -> None:
    [order_id] = world.crm.create_orders([an_order(world)])
    world.crm.delete("Order", order_id)

    assert not sync.capture(status_change(order_id)).emits


def test_an_order_the_crm_holds_invalid_is_rejected_at_capture_with_a_write_back(
    sync: OrderSync, world: World
) -> None:
    [order_id] = world.crm.create_orders([an_order(world, CurrencyIsoCode="ZZZ")])

    rejected = the_event(sync.capture(status_change(order_id)), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.INVALID_ORDER
    assert "currency" in rejected.message
    order = crm_order(world, order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"] == f"INVALID_ORDER: {rejected.message}"


# --- placement -------------------------------------------------------------------------------


def test_a_valid_order_is_placed_once_and_the_crm_told(sync: OrderSync, world: World) -> None:
    created = captured(sync, world, an_order(world))

    first = sync.place(created)
    second = sync.place(created)  # a redelivery, or a retry after a crash

    accepted = the_event(first, world.topic(OrderAccepted))
    repeated = the_event(second, world.topic(OrderAccepted))
    assert isinstance(accepted, OrderAccepted)
    assert isinstance(repeated, OrderAccepted)
    assert repeated.envelope.event_id == accepted.envelope.event_id
    assert repeated.erp_order_id == accepted.erp_order_id
    booked = world.erp.sales_order(created.crm_order_id)
    assert booked is not None
    assert world.erp.booked(created.crm_order_id) == [booked.id] == [accepted.erp_order_id]
    assert world.erp.create_requests == 2, "the retry reached the ERP and was replayed"
    assert booked.grand_total == created.grand_total == accepted.erp_grand_total
    assert accepted.credit_check is CreditCheckOutcome.APPROVED
    order = crm_order(world, created.crm_order_id)
    assert order["ERP_Status__c"] == "Accepted"
    assert (order["ERP_Order_Id__c"], order["ERP_Order_Number__c"]) == (booked.id, booked.number)
    assert order["ERP_Message__c"] is None


@pytest.mark.parametrize(
    ("account", "changes", "reason", "skus"),
    [
        ("active", {"SKU__c": "VAL-099"}, RejectionReason.UNKNOWN_PRODUCT, ["VAL-099"]),
        ("active", {"SKU__c": "PUM-404"}, RejectionReason.UNKNOWN_PRODUCT, ["PUM-404"]),
        ("active", {"UnitPrice": Decimal("48.69")}, RejectionReason.PRICING_MISMATCH, ["VAL-001"]),
        ("held", {}, RejectionReason.CREDIT_HOLD, []),
    ],
    ids=["discontinued", "unknown", "mispriced", "credit-hold"],
)
def test_an_order_breaking_a_rule_is_rejected_and_the_crm_told_why(
    sync: OrderSync,
    world: World,
    account: str,
    changes: dict[str, Any],
    reason: RejectionReason,
    skus: list[str],
) -> None:
    record = an_order(world, account)
    record["items"][-1].update(changes)
    created = captured(sync, world, record)

    rejected = the_event(sync.place(created), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert (rejected.crm_order_id, rejected.reason_code) == (created.crm_order_id, reason)
    assert rejected.offending_skus == skus
    assert rejected.legal_entity == "US01"
    order = crm_order(world, created.crm_order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"] == f"{reason.value}: {rejected.message}"
    assert world.erp.create_requests == 0, "refused before asking the ERP"
    assert world.erp.booked(created.crm_order_id) == []


def test_an_order_of_an_account_not_mastered_yet_waits_and_is_placed_once_it_is(
    sync: OrderSync, world: World
) -> None:
    created = captured(sync, world, an_order(world, "unmastered"))
    assert created.erp_customer_id is None

    with pytest.raises(CustomerNotMastered) as waiting:
        sync.place(created)

    assert classify(waiting.value) is ErrorClass.DEPENDENCY_NOT_READY
    assert str(waiting.value).startswith(f"account {created.crm_account_id} has no ERP customer")
    assert crm_order(world, created.crm_order_id)["ERP_Status__c"] is None
    assert world.erp.create_requests == 0
    world.erp.seed_customers([mastered(world, "C-US01-NEW", "US01")])

    accepted = the_event(sync.place(created), world.topic(OrderAccepted))

    assert isinstance(accepted, OrderAccepted)
    assert accepted.erp_customer_id == "C-US01-NEW"
    booked = world.erp.sales_order(created.crm_order_id)
    assert booked is not None
    assert booked.customer_id == "C-US01-NEW"
    assert crm_order(world, created.crm_order_id)["ERP_Status__c"] == "Accepted"


def test_an_order_of_an_account_that_will_never_be_mastered_is_rejected_not_kept_waiting(
    world: World, sync: OrderSync
) -> None:
    """customer_sync masters by a rule order-sync knows too: an account lacking what a
    customer needs, or one orders do not qualify, would wait in vain."""
    [bare] = world.crm.insert("Account", [{"Name": "Bare prospect"}])
    created = captured(sync, world, an_order(world, "unmastered") | {"AccountId": bare})

    rejected = the_event(sync.place(created), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.CUSTOMER_NOT_MASTERED
    assert rejected.message == (
        f"account {bare}: Legal_Entity__c, CurrencyIsoCode, BillingCountryCode empty; "
        "an ERP customer needs them"
    )
    flag_only = OrderSync(
        crm=world.crm,
        erp=world.erp,
        rules=RuleBook.load(),
        integration=Integration("revsync", INTEGRATION_USER),
        catalog=world.catalog,
        ownership=OWNERSHIP,
        qualify=frozenset({customers.Qualify.FLAG}),
    )
    try:
        waiting = captured(flag_only, world, an_order(world, "unmastered"))
        unflagged = the_event(flag_only.place(waiting), world.topic(OrderRejected))
    finally:
        flag_only.close()
    assert isinstance(unflagged, OrderRejected)
    assert unflagged.message == (
        f"account {world.accounts['unmastered']} has no ERP customer, and only accounts with "
        "Sync_To_ERP__c ticked are mastered"
    )


def test_an_account_mastered_in_another_legal_entity_is_still_rejected(
    sync: OrderSync, world: World
) -> None:
    world.erp.seed_customers([mastered(world, "C-DE01-NEW", "DE01")])
    created = captured(sync, world, an_order(world, "unmastered"))

    rejected = the_event(sync.place(created), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.CUSTOMER_NOT_MASTERED
    assert rejected.message == "ERP customer C-DE01-NEW is mastered in DE01, not US01"
    assert crm_order(world, created.crm_order_id)["ERP_Status__c"] == "Rejected"
    assert world.erp.create_requests == 0


def test_an_order_submitted_through_the_process_api_tells_the_crm_nothing(
    sync: OrderSync, world: World
) -> None:
    """Its outcome is the order events' alone: the CRM has no order to write it onto."""
    crm_before = crm_order(world, captured(sync, world, an_order(world)).crm_order_id)
    submitted = submitted_order(captured(sync, world, an_order(world)))
    held = submitted_order(captured(sync, world, an_order(world, "held")))
    writes = world.crm.update

    def refuse(sobject: str, record_id: str, fields: Any) -> None:
        raise AssertionError(f"wrote {sobject} {record_id}")

    world.crm.update = refuse  # type: ignore[method-assign]
    try:
        accepted = the_event(sync.place(submitted), world.topic(OrderAccepted))
        rejected = the_event(sync.place(held), world.topic(OrderRejected))
    finally:
        world.crm.update = writes  # type: ignore[method-assign]

    assert isinstance(accepted, OrderAccepted)
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.CREDIT_HOLD
    assert world.erp.booked(submitted.crm_order_id) == [accepted.erp_order_id]
    assert crm_order(world, submitted.crm_order_id)["ERP_Status__c"] is None
    assert crm_before["ERP_Status__c"] is None


def test_an_unsupported_currency_is_rejected_before_the_erp_is_asked(
    sync: OrderSync, world: World
) -> None:
    created = captured(sync, world, an_order(world, CurrencyIsoCode="JPY"))

    rejected = the_event(sync.place(created), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.UNSUPPORTED_CURRENCY
    assert crm_order(world, created.crm_order_id)["ERP_Status__c"] == "Rejected"
    assert world.erp.create_requests == 0


def test_an_erp_refusal_of_the_credit_limit_becomes_a_rejection(
    sync: OrderSync, world: World
) -> None:
    created = captured(sync, world, an_order(world, "low_limit"))

    rejected = the_event(sync.place(created), world.topic(OrderRejected))

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.CREDIT_HOLD
    assert rejected.message.startswith("the ERP refused the order (CREDIT_LIMIT_EXCEEDED): ")
    assert "C-US01-LOW" in rejected.message
    order = crm_order(world, created.crm_order_id)
    assert order["ERP_Status__c"] == "Rejected"
    assert order["ERP_Message__c"].startswith("CREDIT_HOLD: the ERP refused the order")
    assert world.erp.create_requests == 1
    assert world.erp.booked(created.crm_order_id) == []


def test_orders_placed_as_a_batch_each_get_their_own_outcome(sync: OrderSync, world: World) -> None:
    valid = captured(sync, world, an_order(world))
    held = captured(sync, world, an_order(world, "held"))

    placed, refused = sync.handle_many([valid, held])

    assert isinstance(placed, Decision)
    assert isinstance(refused, Decision)
    assert isinstance(the_event(placed, world.topic(OrderAccepted)), OrderAccepted)
    assert isinstance(the_event(refused, world.topic(OrderRejected)), OrderRejected)
    assert len(world.erp.booked(valid.crm_order_id)) == 1


# --- the ERP's customer master ----------------------------------------------------------------


def test_a_customer_put_on_credit_hold_is_read_afresh_once_the_erp_says_so(
    sync: OrderSync, world: World
) -> None:
    first = captured(sync, world, an_order(world))
    assert isinstance(the_event(sync.place(first), world.topic(OrderAccepted)), OrderAccepted)
    world.erp.edit_customer("C-US01-1", status=CustomerStatus.CREDIT_HOLD)
    rejected = world.topic(OrderRejected)
    cached = the_event(sync.place(captured(sync, world, an_order(world))), rejected)
    assert isinstance(cached, OrderRejected)
    assert cached.message.startswith("the ERP refused the order (CREDIT_HOLD)"), "cached: active"
    assert world.erp.create_requests == 2

    assert sync(credit_change(world, "active", "C-US01-1")) == Decision()

    afresh = the_event(sync.place(captured(sync, world, an_order(world))), rejected)
    assert isinstance(afresh, OrderRejected)
    assert afresh.message == "ERP customer C-US01-1 is on hold"
    assert world.erp.create_requests == 2, "refused before asking the ERP"


def test_an_account_mastered_in_the_erp_is_read_afresh_from_the_crm_at_capture(
    sync: OrderSync, world: World
) -> None:
    account = world.accounts["unmastered"]
    assert captured(sync, world, an_order(world, "unmastered")).erp_customer_id is None
    world.crm.update("Account", account, {"ERP_Customer_Id__c": "C-US01-NEW"})
    assert captured(sync, world, an_order(world, "unmastered")).erp_customer_id is None
    master = sample_event(CustomerMastered, crm_account_id=account, erp_customer_id="C-US01-NEW")

    assert sync(master) == Decision()

    assert captured(sync, world, an_order(world, "unmastered")).erp_customer_id == "C-US01-NEW"


# --- cancellation ----------------------------------------------------------------------------


def placed_then_cancelled(sync: OrderSync, world: World) -> OrderCancelled:
    """An order placed in the ERP, then cancelled by the rep: the event order_sync captures."""
    created = captured(sync, world, an_order(world))
    sync.place(created)
    world.crm.cancel_order(created.crm_order_id, "customer changed their mind")
    change = status_change(created.crm_order_id, "Cancelled")
    cancelled = the_event(sync.capture(change), world.topic(OrderCancelled))
    assert isinstance(cancelled, OrderCancelled)
    return cancelled


def test_a_cancelled_order_is_cancelled_in_the_erp_and_the_crm_told(
    sync: OrderSync, world: World
) -> None:
    cancelled = placed_then_cancelled(sync, world)
    assert cancelled.reason == "customer changed their mind"

    assert sync.cancel(cancelled) == Decision()
    assert sync.cancel(cancelled) == Decision()

    booked = world.erp.sales_order(cancelled.crm_order_id)
    assert booked is not None
    assert booked.status is SalesOrderStatus.CANCELLED
    assert world.erp.cancel_reason(cancelled.crm_order_id) == "customer changed their mind"
    order = crm_order(world, cancelled.crm_order_id)
    assert order["ERP_Status__c"] == "Cancelled"
    assert order["ERP_Message__c"] == "customer changed their mind"


def test_a_cancel_once_the_erp_has_invoiced_is_refused_and_the_crm_told_it_stands(
    sync: OrderSync, world: World
) -> None:
    cancelled = placed_then_cancelled(sync, world)
    world.erp.invoice(cancelled.crm_order_id)

    assert sync.cancel(cancelled) == Decision()

    booked = world.erp.sales_order(cancelled.crm_order_id)
    assert booked is not None
    assert booked.status is SalesOrderStatus.INVOICED
    order = crm_order(world, cancelled.crm_order_id)
    assert order["ERP_Status__c"] == "Accepted"
    assert order["ERP_Message__c"].startswith("not cancelled in the ERP (ORDER_NOT_CANCELLABLE): ")


def test_a_cancel_the_erp_has_no_order_for_yet_waits(sync: OrderSync, world: World) -> None:
    created = captured(sync, world, an_order(world))
    world.crm.cancel_order(created.crm_order_id, "duplicate order")
    change = status_change(created.crm_order_id, "Cancelled")
    cancelled = the_event(sync.capture(change), world.topic(OrderCancelled))
    assert isinstance(cancelled, OrderCancelled)

    with pytest.raises(DependencyNotReady):
        sync.cancel(cancelled)

    assert crm_order(world, created.crm_order_id)["ERP_Status__c"] is None
