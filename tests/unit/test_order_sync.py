"""order_sync's decisions without I/O: which CRM changes it acts on, the canonical event a
Salesforce order becomes, whether the ERP may take it, the rules per legal entity and region,
and what each outcome writes back to the CRM."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from leaks import told
from order_sync import logic
from revsync.connectors.cdc import Integration, RecordChange, decode_change
from revsync.contracts.events import (
    CreditCheckOutcome,
    Envelope,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    PricingOutcome,
    RejectionReason,
    SourceSystem,
)
from revsync.errors import ErrorClass, classify
from revsync.ports.erp import (
    Customer,
    CustomerStatus,
    PriceBook,
    Product,
    SalesOrder,
    SalesOrderStatus,
)
from revsync.rules import checks
from revsync.rules.book import DEFAULT_RULES, OrderRules, RuleBook, RulesError
from samples import sample_envelope, sample_event

ORDER_ID = "801AB00000Ord01AAA"
INTEGRATION_USER = "005000000000001AAA"
SALES_REP = "005000000000002AAA"
EMPTY_RECORD_ID = "000000000000000AAA"
REVSYNC = Integration("revsync", INTEGRATION_USER)
UI_ORIGIN = ""
REST_ORIGIN = "com/salesforce/api/rest/62.0;client=revsync"
COMMITTED = datetime(2026, 12, 1, 9, 30, 15, 250000, tzinfo=UTC)

# --- plan: which changes matter --------------------------------------------------------------


def change(
    change_type: str = "UPDATE",
    fields: Mapping[str, Any] | None = None,
    *,
    record_ids: tuple[str, ...] = (ORDER_ID,),
    entity: str = "Order",
    origin: str = UI_ORIGIN,
    user: str = SALES_REP,
    sequence: int = 1,
) -> RecordChange:
    """A change event as the CDC bridge writes it, decoded as the runtime decodes it."""
    header = {
        "entityName": entity,
        "recordIds": list(record_ids),
        "changeType": change_type,
        "changeOrigin": origin,
        "transactionKey": "00021e3b-71c2-4d2a-b04d-7b1f2b9a5c11",
        "sequenceNumber": sequence,
        "commitTimestamp": int(COMMITTED.timestamp() * 1000),
        "commitUser": user,
    }
    body = {"ChangeEventHeader": header, **(fields or {})}
    return decode_change("revsync.order.crm-change.v1", json.dumps(body).encode())


@pytest.mark.parametrize("status", ["Activated", "Cancelled"])
def test_an_order_reaching_a_synced_status_is_refetched(status: str) -> None:
    step = logic.plan(change("UPDATE", {"Status": status}), REVSYNC)

    assert step == logic.Refetch((ORDER_ID,))


def test_an_order_created_already_activated_is_refetched() -> None:
    step = logic.plan(change("CREATE", {"Status": "Activated"}), REVSYNC)

    assert step == logic.Refetch((ORDER_ID,))


def test_a_draft_order_being_created_is_ignored() -> None:
    step = logic.plan(change("CREATE", {"Status": "Draft", "AccountId": "001x"}), REVSYNC)

    assert step == logic.Ignore("status Draft is not synced")


def test_an_update_that_does_not_touch_the_status_is_ignored() -> None:
    step = logic.plan(change("UPDATE", {"PoNumber": "PO-2"}), REVSYNC)

    assert step == logic.Ignore("no status change")


def test_revsyncs_own_write_back_is_recognised_by_its_client() -> None:
    # Another user, but the API call named revsync's client: revsync's own change.
    echo = change("UPDATE", {"Status": "Activated"}, origin=REST_ORIGIN, user="005OTHERUSER00AAA")

    assert logic.plan(echo, REVSYNC) == logic.Ignore("revsync's own change")


def test_revsyncs_own_write_back_is_recognised_by_its_user() -> None:
    echo = change(
        "UPDATE",
        {"Status": "Cancelled"},
        origin="com/salesforce/api/rest/62.0;client=workbench",
        user=INTEGRATION_USER,
    )

    assert logic.plan(echo, REVSYNC) == logic.Ignore("revsync's own change")


def test_another_clients_change_is_not_an_echo() -> None:
    dataloader = change(
        "UPDATE", {"Status": "Activated"}, origin="com/salesforce/api/rest/62.0;client=dataloader"
    )

    assert logic.plan(dataloader, REVSYNC) == logic.Refetch((ORDER_ID,))


def test_without_an_integration_user_only_the_client_marks_an_echo() -> None:
    by_client_only = Integration("revsync")
    by_user = change("UPDATE", {"Status": "Activated"}, user=INTEGRATION_USER)

    assert logic.plan(by_user, by_client_only) == logic.Refetch((ORDER_ID,))
    assert logic.plan(change(origin=REST_ORIGIN), by_client_only) == logic.Ignore(
        "revsync's own change"
    )


@pytest.mark.parametrize("gap", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
def test_a_gap_event_refetches_its_records(gap: str) -> None:
    ids = (ORDER_ID, "801AB00000Ord02AAA")

    assert logic.plan(change(gap, record_ids=ids), REVSYNC) == logic.Refetch(ids)


def test_an_overflow_reconciles_since_its_commit_although_it_names_the_empty_id() -> None:
    overflow = change("GAP_OVERFLOW", record_ids=(EMPTY_RECORD_ID,))

    step = logic.plan(overflow, REVSYNC)

    assert step == logic.Reconcile(COMMITTED)


def test_an_overflow_without_any_record_id_still_reconciles() -> None:
    assert logic.plan(change("GAP_OVERFLOW", record_ids=()), REVSYNC) == logic.Reconcile(COMMITTED)


@pytest.mark.parametrize("change_type", ["DELETE", "UNDELETE"])
def test_deletes_and_undeletes_are_ignored(change_type: str) -> None:
    step = logic.plan(change(change_type), REVSYNC)

    assert isinstance(step, logic.Ignore)
    assert "drafts are not synced" in step.reason


def test_a_change_naming_no_records_is_ignored() -> None:
    step = logic.plan(change("UPDATE", {"Status": "Activated"}, record_ids=()), REVSYNC)

    assert step == logic.Ignore("the change names no records")


def test_changes_of_other_entities_are_ignored() -> None:
    step = logic.plan(change("UPDATE", {"Status": "Activated"}, entity="Account"), REVSYNC)

    assert step == logic.Ignore("Account changes are not synced")


def test_the_reconcile_query_selects_synced_orders_modified_since_in_utc_with_a_margin() -> None:
    berlin_evening = datetime.fromisoformat("2026-12-01T22:15:30.999+01:00")

    query = logic.reconcile_query(berlin_evening)

    assert query == (
        "SELECT Id FROM Order WHERE SystemModstamp >= 2026-12-01T21:14:30Z "
        "AND Status IN ('Activated', 'Cancelled') ORDER BY SystemModstamp"
    )


# --- canonical: a Salesforce order as an event -----------------------------------------------


def crm_order(**changes: Any) -> dict[str, Any]:
    """An Order as the REST API returns it (numbers as Decimals, datetimes as REST writes them)."""
    order: dict[str, Any] = {
        "Id": ORDER_ID,
        "OrderNumber": "00000123",
        "AccountId": "001AB00000Acc01AAA",
        "Pricebook2Id": "01sAB00000Pbk01AAA",
        "CurrencyIsoCode": "USD",
        "Status": "Activated",
        "EffectiveDate": "2026-12-01",
        "ActivatedDate": "2026-12-01T09:30:00.000+0000",
        "PoNumber": "PO-7781",
        "Legal_Entity__c": "US01",
        "Region__c": "NA",
        "Requested_Delivery_Date__c": "2026-12-15",
        "BillingStreet": "1 Market St",
        "BillingCity": "San Francisco",
        "BillingState": "CA",
        "BillingPostalCode": "94105",
        "BillingCountryCode": "US",
        "ShippingStreet": "9 Dock Road",
        "ShippingCity": "Oakland",
        "ShippingState": None,
        "ShippingPostalCode": None,
        "ShippingCountryCode": "US",
        "ERP_Order_Id__c": None,
        "Cancel_Reason__c": None,
        "LastModifiedDate": "2026-12-02T08:00:00.000+0000",
    }
    return {**order, **changes}


def crm_items() -> list[dict[str, Any]]:
    """Two OrderItems, out of order; the second as Salesforce leaves unset amounts (null)."""
    return [
        {
            "Id": "802AB00000Itm02AAA",
            "OrderItemNumber": "0000000002",
            "SKU__c": "SKU-102",
            "Product_Name__c": "Cable set",
            "Product_Line__c": "ACCESSORIES",
            "Quantity": 2,
            "UnitPrice": Decimal("50.00"),
            "Discount__c": None,
            "Tax__c": None,
            "TotalPrice": Decimal("100.00"),
            "Unit_Of_Measure__c": None,
        },
        {
            "Id": "802AB00000Itm01AAA",
            "OrderItemNumber": "0000000001",
            "SKU__c": "SKU-101",
            "Product_Name__c": "Pressure sensor",
            "Product_Line__c": "SENSORS",
            "Quantity": Decimal("3"),
            "UnitPrice": Decimal("199.99"),
            "Discount__c": Decimal("9.97"),
            "Tax__c": Decimal("47.20"),
            "TotalPrice": Decimal("590.00"),
            "Unit_Of_Measure__c": "BOX",
        },
    ]


def cause(**overrides: object) -> Envelope:
    return sample_envelope("com.salesforce.cdc.OrderChangeEvent", **overrides)


def test_an_activated_order_becomes_order_created_with_totals_from_its_lines() -> None:
    created = logic.canonical(cause(), crm_order(), crm_items(), "C-10042")

    assert isinstance(created, OrderCreated)
    assert created.crm_order_id == ORDER_ID
    assert created.crm_order_number == "00000123"
    assert created.crm_account_id == "001AB00000Acc01AAA"
    assert created.erp_customer_id == "C-10042"
    assert created.purchase_order_number == "PO-7781"
    assert created.price_book_id == "01sAB00000Pbk01AAA"
    assert (created.currency, created.legal_entity, created.region) == ("USD", "US01", "NA")
    assert [line.line_number for line in created.lines] == [1, 2]
    first, second = created.lines
    assert (first.sku, first.crm_line_id, first.unit_of_measure) == (
        "SKU-101",
        "802AB00000Itm01AAA",
        "BOX",
    )
    assert first.quantity == Decimal("3")
    assert first.unit_price == Decimal("199.99")
    assert first.discount_amount == Decimal("9.97")
    assert first.line_total == Decimal("590.00")
    assert (second.quantity, second.discount_amount, second.tax_amount) == (
        Decimal(2),
        Decimal(0),
        Decimal(0),
    )
    assert second.unit_of_measure == "EA"
    assert created.subtotal == Decimal("690.00")
    assert created.discount_total == Decimal("9.97")
    assert created.tax_total == Decimal("47.20")
    assert created.grand_total == Decimal("737.20")
    for amount in (created.subtotal, created.tax_total, created.grand_total, first.quantity):
        assert isinstance(amount, Decimal)
    assert created.ordered_at == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert created.requested_delivery_date == date(2026, 12, 15)
    assert created.billing_address.city == "San Francisco"
    assert created.billing_address.state_province == "CA"
    assert created.shipping_address.street == "9 Dock Road"
    assert created.shipping_address.postal_code is None
    assert created.envelope.source_system is SourceSystem.CRM
    assert created.envelope.occurred_at == created.ordered_at


def test_the_order_not_the_change_decides_the_event_id() -> None:
    # A change event, its duplicate under another id, and a reconciliation's re-read.
    first_cause, second_cause = cause(), cause(correlation_id="another-transaction")
    first = logic.canonical(first_cause, crm_order(), crm_items(), "C-10042")
    second = logic.canonical(second_cause, crm_order(), crm_items(), "C-10042")
    other_order = logic.canonical(
        first_cause, crm_order(Id="801AB00000Ord09AAA"), crm_items(), "C-10042"
    )

    assert first is not None
    assert second is not None
    assert other_order is not None
    assert first.envelope.event_id == second.envelope.event_id
    assert other_order.envelope.event_id != first.envelope.event_id
    assert first.envelope.causation_id == str(first_cause.event_id)
    assert second.envelope.causation_id == str(second_cause.event_id)
    assert second.envelope.correlation_id == "another-transaction"


def test_an_order_without_activation_date_is_ordered_when_its_change_committed() -> None:
    moment = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)

    created = logic.canonical(
        cause(occurred_at=moment), crm_order(ActivatedDate=None), crm_items(), None
    )

    assert isinstance(created, OrderCreated)
    assert created.ordered_at == moment
    assert created.erp_customer_id is None


def test_a_cancelled_order_becomes_order_cancelled() -> None:
    order = crm_order(
        Status="Cancelled", Cancel_Reason__c="customer changed their mind", ERP_Order_Id__c="SO-1"
    )

    cancelled = logic.canonical(cause(), order, [], "C-10042")

    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.crm_order_id == ORDER_ID
    assert cancelled.erp_order_id == "SO-1"
    assert cancelled.reason == "customer changed their mind"
    assert cancelled.cancelled_at == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    again = logic.canonical(cause(), order, [], "C-10042")
    assert again is not None
    assert again.envelope.event_id == cancelled.envelope.event_id


def test_cancelled_and_created_events_of_one_order_have_different_ids() -> None:
    created = logic.canonical(cause(), crm_order(), crm_items(), "C-1")
    cancelled = logic.canonical(cause(), crm_order(Status="Cancelled"), [], "C-1")

    assert created is not None
    assert cancelled is not None
    assert created.envelope.event_id != cancelled.envelope.event_id


def test_a_draft_order_has_no_canonical_event() -> None:
    assert logic.canonical(cause(), crm_order(Status="Draft"), crm_items(), "C-1") is None


def test_an_order_without_items_is_invalid_and_says_so() -> None:
    with pytest.raises(logic.InvalidCrmOrder) as raised:
        logic.canonical(cause(), crm_order(), [], "C-1")

    message = str(raised.value)
    assert message.startswith("order 00000123: lines: ")
    assert "at least 1 item" in message


def test_a_line_whose_total_is_not_quantity_times_price_less_discount_is_named() -> None:
    items = crm_items()
    items[1]["TotalPrice"] = Decimal("599.97")  # the discount left out

    with pytest.raises(logic.InvalidCrmOrder) as raised:
        logic.canonical(cause(), crm_order(), items, "C-1")

    message = str(raised.value)
    assert message == "order 00000123: lines.0: not a valid value (value_error)"
    assert "599.97" not in message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"CurrencyIsoCode": "ZZZ"}, "currency"),
        ({"Legal_Entity__c": None}, "legal_entity"),
        ({"ShippingCountryCode": "ZZ"}, "shipping_address.country_code"),
        ({"BillingCity": None}, "billing_address.city"),
    ],
)
def test_a_bad_order_field_is_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(logic.InvalidCrmOrder) as raised:
        logic.canonical(cause(), crm_order(**changes), crm_items(), "C-1")

    assert str(raised.value).startswith(f"order 00000123: {field}: ")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"CurrencyIsoCode": "ap@acme.example"}, "currency"),
        ({"ShippingStreet": "17 Quill Lane \ud800"}, "shipping_address.street"),
        ({"BillingCountryCode": "+1 555 0100"}, "billing_address.country_code"),
    ],
)
def test_a_bad_order_field_is_named_without_its_value(changes: dict[str, Any], field: str) -> None:
    """No customer data in errors: the reason goes back to the CRM and on to the rejection
    event, and the contract's checks quote the value they refuse."""
    with pytest.raises(logic.InvalidCrmOrder) as raised:
        logic.canonical(cause(), crm_order(**changes), crm_items(), "C-1")

    assert str(raised.value).startswith(f"order 00000123: {field}: ")
    (value,) = changes.values()
    assert value.split(" \ud800")[0] not in told(raised.value)


def test_a_line_with_a_negative_quantity_is_named() -> None:
    items = crm_items()
    items[0]["Quantity"] = -2
    items[0]["TotalPrice"] = Decimal("-100.00")

    with pytest.raises(logic.InvalidCrmOrder) as raised:
        logic.canonical(cause(), crm_order(), items, "C-1")

    assert str(raised.value).startswith("order 00000123: lines.1.quantity: ")


# --- validate: whether the ERP may take it ---------------------------------------------------

RULES = OrderRules(
    currencies=frozenset({"USD"}), price_tolerance=Decimal("0.01"), require_po_number=False
)
CUSTOMER = Customer(
    "C-10042",
    "Acme Corp",
    "0015g00000AcMeAAA",
    "US01",
    CustomerStatus.ACTIVE,
    Decimal("500000"),
    "USD",
)
PRICE_BOOK = PriceBook(
    "01s5g00000StdPbAAA",
    "US list prices",
    "USD",
    "US01",
    {"SKU-101": Decimal("199.99"), "SKU-102": Decimal("199.99")},
)


def product(
    sku: str, *, active: bool = True, entities: frozenset[str] = frozenset({"US01"})
) -> Product:
    return Product(sku, f"{sku} sensor", "SENSORS", "EA", active, entities)


PRODUCTS = {sku: product(sku) for sku in ("SKU-101", "SKU-102")}


def judge(
    order: OrderCreated | None = None,
    *,
    customer: Customer | None = CUSTOMER,
    products: Mapping[str, Product] = PRODUCTS,
    price_book: PriceBook | None = PRICE_BOOK,
    rules: OrderRules = RULES,
) -> checks.Rejection | None:
    return checks.validate(
        order or sample_event(OrderCreated), customer, products, price_book, rules
    )


def priced(**prices: str) -> PriceBook:
    return replace(
        PRICE_BOOK, prices={**PRICE_BOOK.prices, **{k: Decimal(v) for k, v in prices.items()}}
    )


def test_a_valid_order_is_accepted() -> None:
    assert judge() is None


def test_an_account_without_erp_customer_is_not_mastered() -> None:
    rejection = judge(sample_event(OrderCreated, erp_customer_id=None), customer=None)

    assert rejection is not None
    assert rejection.reason is RejectionReason.CUSTOMER_NOT_MASTERED
    assert rejection.message == "account 0015g00000AcMeAAA has no ERP customer id"


def test_an_erp_customer_that_does_not_exist_is_not_mastered() -> None:
    rejection = judge(customer=None)

    assert rejection == checks.Rejection(
        RejectionReason.CUSTOMER_NOT_MASTERED, "ERP customer C-10042 does not exist"
    )


def test_a_customer_of_another_legal_entity_is_not_mastered_for_this_one() -> None:
    rejection = judge(customer=replace(CUSTOMER, legal_entity="DE01"))

    assert rejection == checks.Rejection(
        RejectionReason.CUSTOMER_NOT_MASTERED,
        "ERP customer C-10042 is mastered in DE01, not US01",
    )


def test_a_customer_on_credit_hold_is_refused() -> None:
    rejection = judge(customer=replace(CUSTOMER, status=CustomerStatus.CREDIT_HOLD))

    assert rejection == checks.Rejection(
        RejectionReason.CREDIT_HOLD, "ERP customer C-10042 is on hold"
    )


def test_a_blocked_customer_is_refused() -> None:
    rejection = judge(customer=replace(CUSTOMER, status=CustomerStatus.BLOCKED))

    assert rejection is not None
    assert rejection.reason is RejectionReason.OTHER
    assert rejection.message == "ERP customer C-10042 is blocked"


def test_an_order_in_another_currency_than_its_customer_is_billed_in_is_refused() -> None:
    """The ERP would refuse it too: a customer's credit is kept in its own currency."""
    rejection = judge(customer=replace(CUSTOMER, currency="EUR"))

    assert rejection == checks.Rejection(
        RejectionReason.UNSUPPORTED_CURRENCY, "ERP customer C-10042 is billed in EUR, not USD"
    )


def test_a_currency_the_legal_entity_does_not_invoice_in_is_refused() -> None:
    rules = RULES.model_copy(update={"currencies": frozenset({"EUR", "CHF"})})

    rejection = judge(rules=rules)

    assert rejection == checks.Rejection(
        RejectionReason.UNSUPPORTED_CURRENCY, "US01 does not invoice in USD (only CHF, EUR)"
    )


def test_a_price_book_the_erp_does_not_have_is_a_pricing_mismatch() -> None:
    rejection = judge(price_book=None)

    assert rejection == checks.Rejection(
        RejectionReason.PRICING_MISMATCH, "price book 01s5g00000StdPbAAA is not in the ERP"
    )


def test_a_price_book_in_another_currency_is_refused() -> None:
    rejection = judge(price_book=replace(PRICE_BOOK, currency="EUR"))

    assert rejection == checks.Rejection(
        RejectionReason.UNSUPPORTED_CURRENCY,
        "price book 01s5g00000StdPbAAA is in EUR, the order in USD",
    )


@pytest.mark.parametrize(
    "products",
    [
        {"SKU-101": PRODUCTS["SKU-101"]},
        {**PRODUCTS, "SKU-102": product("SKU-102", active=False)},
        {**PRODUCTS, "SKU-102": product("SKU-102", entities=frozenset({"DE01", "GB01"}))},
    ],
    ids=["unknown", "inactive", "not sold in US01"],
)
def test_a_product_the_legal_entity_cannot_sell_is_named(products: dict[str, Product]) -> None:
    rejection = judge(products=products)

    assert rejection == checks.Rejection(
        RejectionReason.UNKNOWN_PRODUCT, "not sold by US01: SKU-102", ("SKU-102",)
    )


def test_every_product_the_legal_entity_cannot_sell_is_named() -> None:
    rejection = judge(products={})

    assert rejection is not None
    assert rejection.reason is RejectionReason.UNKNOWN_PRODUCT
    assert rejection.skus == ("SKU-101", "SKU-102")


def test_a_product_sold_by_every_legal_entity_is_accepted() -> None:
    # The ERP lists no legal entities for a product every entity sells, and books it.
    everywhere = {**PRODUCTS, "SKU-102": product("SKU-102", entities=frozenset())}

    assert judge(products=everywhere) is None


@pytest.mark.parametrize(
    "erp_price",
    ["199.99", "201.00", "198.02", "202.0099"],
    ids=["equal", "crm cheaper", "crm dearer", "at tolerance"],
)
def test_a_price_within_tolerance_is_accepted(erp_price: str) -> None:
    assert judge(price_book=priced(**{"SKU-102": erp_price})) is None


@pytest.mark.parametrize("erp_price", ["198.00", "202.03", "0"])
def test_a_price_outside_tolerance_names_its_skus(erp_price: str) -> None:
    rejection = judge(price_book=priced(**{"SKU-101": erp_price}))

    assert rejection is not None
    assert rejection.reason is RejectionReason.PRICING_MISMATCH
    assert rejection.skus == ("SKU-101",)
    assert rejection.message == (
        "prices differ from price book 01s5g00000StdPbAAA by more than 1%: SKU-101"
    )


def test_a_sku_missing_from_the_price_book_is_a_pricing_mismatch() -> None:
    book = replace(PRICE_BOOK, prices={"SKU-101": Decimal("199.99")})

    rejection = judge(price_book=book)

    assert rejection is not None
    assert rejection.reason is RejectionReason.PRICING_MISMATCH
    assert rejection.skus == ("SKU-102",)


def test_a_free_line_agrees_only_with_a_free_list_price() -> None:
    line = {"unit_price": Decimal(0), "discount_amount": Decimal(0), "line_total": Decimal(0)}
    lines = [{**sample_event(OrderCreated).lines[0].model_dump(), **line}]
    free = sample_event(
        OrderCreated,
        lines=lines,
        subtotal=Decimal(0),
        discount_total=Decimal(0),
        tax_total=lines[0]["tax_amount"],
        grand_total=lines[0]["tax_amount"],
    )

    assert judge(free, price_book=priced(**{"SKU-101": "0"})) is None
    mispriced = judge(free, price_book=priced(**{"SKU-101": "0.01"}))
    assert mispriced is not None
    assert mispriced.skus == ("SKU-101",)


def test_a_missing_po_number_is_refused_where_one_is_required() -> None:
    order = sample_event(OrderCreated, purchase_order_number=None)
    strict = RULES.model_copy(update={"require_po_number": True})

    assert judge(order) is None
    assert judge(order, rules=strict) == checks.Rejection(
        RejectionReason.INVALID_ORDER, "US01 orders need a PO number"
    )
    assert judge(rules=strict) is None


def test_an_order_over_the_limit_for_automatic_entry_is_refused() -> None:
    capped = RULES.model_copy(update={"max_order_total": Decimal("1000")})
    at_limit = RULES.model_copy(update={"max_order_total": Decimal("1408.0000")})

    rejection = judge(rules=capped)

    assert rejection == checks.Rejection(
        RejectionReason.INVALID_ORDER,
        "grand total 1408.0000 USD is over the 1000 limit for automatic entry",
    )
    assert judge(rules=at_limit) is None


def test_the_first_rule_broken_is_the_one_reported() -> None:
    rejection = judge(
        customer=replace(CUSTOMER, status=CustomerStatus.CREDIT_HOLD),
        products={},
        price_book=None,
    )

    assert rejection is not None
    assert rejection.reason is RejectionReason.CREDIT_HOLD


# --- the rule book ---------------------------------------------------------------------------


def rule_book(tmp_path: Path, text: str) -> RuleBook:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return RuleBook.load(path)


LAYERED = """
default:
  currencies: [USD]
  price_tolerance: "0.01"
  max_order_total: "1000"
regions:
  EMEA:
    price_tolerance: "0.005"
    require_po_number: true
    currencies: [EUR]
legal_entities:
  GB01:
    currencies: [GBP, EUR]
    price_tolerance: "0.02"
"""


def test_a_legal_entity_wins_over_its_region_which_wins_over_the_default(tmp_path: Path) -> None:
    book = rule_book(tmp_path, LAYERED)

    gb = book.for_order("GB01", "EMEA")
    de = book.for_order("DE01", "EMEA")
    us = book.for_order("US01", "NA")

    assert gb == OrderRules(
        currencies=frozenset({"GBP", "EUR"}),
        price_tolerance=Decimal("0.02"),
        require_po_number=True,
        max_order_total=Decimal("1000"),
    )
    assert (de.currencies, de.price_tolerance, de.require_po_number) == (
        frozenset({"EUR"}),
        Decimal("0.005"),
        True,
    )
    assert us == book.default


def test_a_legal_entity_override_applies_outside_its_usual_region(tmp_path: Path) -> None:
    rules = rule_book(tmp_path, LAYERED).for_order("GB01", "NA")

    assert rules.currencies == frozenset({"GBP", "EUR"})
    assert rules.price_tolerance == Decimal("0.02")
    assert rules.require_po_number is False


def test_the_bundled_rules_resolve_per_legal_entity_and_region() -> None:
    book = RuleBook.load()

    assert RuleBook.load(DEFAULT_RULES) == book
    gb = book.for_order("GB01", "EMEA")
    assert gb.currencies == frozenset({"GBP", "EUR"})
    assert gb.price_tolerance == Decimal("0.005")
    assert gb.require_po_number is True
    assert gb.max_order_total == Decimal("250000")
    assert book.for_order("US01", "APAC").require_po_number is True
    assert book.for_order("CA01", "NA").currencies == frozenset({"CAD", "USD"})
    assert book.for_order("XX01", "NOWHERE") == book.default


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            'default: {currencies: [USD], price_tolerance: "0.01"}\n'
            'regions: {EMEA: {price_tolerence: "0.1"}}\n',
            "regions.EMEA.price_tolerence: Extra inputs are not permitted",
        ),
        (
            'default: {currencies: [USD], price_tolerance: "0.01", max_total: "5"}\n',
            "default.max_total: Extra inputs are not permitted",
        ),
        (
            'default: {currencies: [USD], price_tolerance: "0.01"}\ncountries: {}\n',
            "countries: Extra inputs are not permitted",
        ),
        ('default: {currencies: [], price_tolerance: "0.01"}\n', "default.currencies"),
        ('default: {currencies: [USD], price_tolerance: "2"}\n', "default.price_tolerance"),
        ("regions: {}\n", "default: Field required"),
    ],
    ids=["region key", "default key", "section", "no currency", "tolerance", "no default"],
)
def test_a_misspelt_or_invalid_rule_fails_naming_it(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(RulesError) as raised:
        rule_book(tmp_path, text)

    assert named in str(raised.value)
    assert str(tmp_path / "rules.yaml") in str(raised.value)


def test_a_rules_file_that_is_not_yaml_fails_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as raised:
        rule_book(tmp_path, "default: [USD\n  - : :\n")

    assert str(raised.value).startswith(f"{tmp_path / 'rules.yaml'}: not valid YAML")


def test_a_missing_rules_file_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(RulesError) as raised:
        RuleBook.load(missing)

    assert str(raised.value) == f"no order rules at {missing}"
    assert classify(raised.value) is ErrorClass.SCHEMA


# --- outcomes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("CREDIT_HOLD", RejectionReason.CREDIT_HOLD),
        ("CREDIT_LIMIT_EXCEEDED", RejectionReason.CREDIT_HOLD),
        ("UNKNOWN_PRODUCT", RejectionReason.UNKNOWN_PRODUCT),
        ("PRICING_MISMATCH", RejectionReason.PRICING_MISMATCH),
        ("CUSTOMER_BLOCKED", RejectionReason.OTHER),
        ("CUSTOMER_NOT_MASTERED", RejectionReason.CUSTOMER_NOT_MASTERED),
        ("UNSUPPORTED_CURRENCY", RejectionReason.UNSUPPORTED_CURRENCY),
        ("UNKNOWN_PRICE_BOOK", RejectionReason.PRICING_MISMATCH),
        ("INVALID_ORDER", RejectionReason.INVALID_ORDER),
        ("WAREHOUSE_CLOSED", RejectionReason.OTHER),
    ],
)
def test_an_erp_refusal_maps_to_a_rejection_reason(code: str, reason: RejectionReason) -> None:
    rejection = checks.erp_rejection(code, "the detail", ["SKU-1", "SKU-2"])

    assert rejection == checks.Rejection(
        reason, f"the ERP refused the order ({code}): the detail", ("SKU-1", "SKU-2")
    )


def test_a_rejection_tells_the_crm_user_the_reason_and_message() -> None:
    rejection = checks.Rejection(RejectionReason.UNKNOWN_PRODUCT, "not sold by US01: SKU-9")

    assert logic.crm_rejected_fields(rejection) == {
        "ERP_Status__c": "Rejected",
        "ERP_Message__c": "UNKNOWN_PRODUCT: not sold by US01: SKU-9",
    }


def test_a_long_rejection_message_is_cut_to_the_crm_fields_255_characters() -> None:
    prefix = "PRICING_MISMATCH: "
    exact = checks.Rejection(RejectionReason.PRICING_MISMATCH, "x" * (255 - len(prefix)))
    long = checks.Rejection(RejectionReason.PRICING_MISMATCH, "y" * 1000)

    assert logic.crm_rejected_fields(exact)["ERP_Message__c"] == prefix + "x" * (255 - len(prefix))
    message = logic.crm_rejected_fields(long)["ERP_Message__c"]
    assert len(message) == 255
    assert message.startswith(prefix + "yyy")
    assert message.endswith("y…")


def sales_order() -> SalesOrder:
    return SalesOrder(
        id="SO-4e2f",
        number="SO-000042",
        external_id="8015g00000AbCdEAAV",
        customer_id="C-10042",
        status=SalesOrderStatus.OPEN,
        currency="USD",
        subtotal=Decimal("1180.0000"),
        tax_total=Decimal("228.0000"),
        grand_total=Decimal("1408.0000"),
        credit_check=CreditCheckOutcome.APPROVED_OVER_LIMIT,
        pricing_outcome=PricingOutcome.ADJUSTED_WITHIN_TOLERANCE,
        created_at=datetime(2026, 12, 1, 9, 31, tzinfo=UTC),
    )


def test_an_accepted_order_tells_the_crm_its_erp_number() -> None:
    assert logic.crm_accepted_fields(sales_order()) == {
        "ERP_Order_Id__c": "SO-4e2f",
        "ERP_Order_Number__c": "SO-000042",
        "ERP_Status__c": "Accepted",
        "ERP_Message__c": None,
    }


def test_an_accepted_event_carries_the_erp_outcome_and_derives_from_the_order() -> None:
    order = sample_event(OrderCreated)
    now = datetime(2026, 12, 1, 9, 32, tzinfo=UTC)

    accepted = logic.accepted(order, sales_order(), now)

    assert isinstance(accepted, OrderAccepted)
    assert (accepted.erp_order_id, accepted.erp_order_number) == ("SO-4e2f", "SO-000042")
    assert accepted.credit_check is CreditCheckOutcome.APPROVED_OVER_LIMIT
    assert accepted.pricing_outcome is PricingOutcome.ADJUSTED_WITHIN_TOLERANCE
    assert accepted.erp_grand_total == Decimal("1408.0000")
    assert accepted.accepted_at == datetime(2026, 12, 1, 9, 31, tzinfo=UTC)
    assert accepted.envelope.causation_id == str(order.envelope.event_id)
    assert accepted.envelope.correlation_id == order.envelope.correlation_id
    assert logic.accepted(order, sales_order(), now).envelope.event_id == (
        accepted.envelope.event_id
    )


def test_a_rejected_event_names_the_reason_skus_and_where_it_happened() -> None:
    order = sample_event(OrderCreated)
    rejection = checks.Rejection(RejectionReason.UNKNOWN_PRODUCT, "not sold", ("SKU-9",))
    now = datetime(2026, 12, 1, 9, 32, tzinfo=UTC)

    rejected = logic.rejected(order.envelope, order.crm_order_id, rejection, None, "NA", now)

    assert isinstance(rejected, OrderRejected)
    assert rejected.reason_code is RejectionReason.UNKNOWN_PRODUCT
    assert rejected.offending_skus == ["SKU-9"]
    assert (rejected.legal_entity, rejected.region) == ("UNKNOWN", "NA")
    assert rejected.rejected_at == now
    assert rejected.envelope.causation_id == str(order.envelope.event_id)


def test_a_sales_order_request_is_keyed_by_the_crm_order_and_ships_to_its_address() -> None:
    order = sample_event(OrderCreated)

    request = logic.sales_order_request(order)

    assert request.external_id == order.crm_order_id
    assert request.customer_id == "C-10042"
    assert (request.currency, request.price_book_id) == ("USD", "01s5g00000StdPbAAA")
    assert (request.legal_entity, request.region, request.po_number) == ("US01", "NA", "PO-7781")
    assert request.requested_delivery_date == date(2026, 12, 15)
    assert request.ship_to.city == "San Francisco"
    assert [(line.line_number, line.sku, line.quantity) for line in request.lines] == [
        (1, "SKU-101", Decimal("3")),
        (2, "SKU-102", Decimal("3")),
    ]
    assert request.lines[0].discount_amount == Decimal("9.9700")
    assert request.correlation_id == order.envelope.correlation_id


def test_an_idempotency_key_is_one_per_order_and_action() -> None:
    keys = {
        logic.idempotency_key(action, order_id)
        for action in ("create", "cancel")
        for order_id in ("801A", "801B")
    }

    assert len(keys) == 4
    assert logic.idempotency_key("create", "801A") == logic.idempotency_key("create", "801A")


def test_a_cancellation_tells_the_crm_why() -> None:
    assert logic.crm_cancelled_fields("customer changed their mind") == {
        "ERP_Status__c": "Cancelled",
        "ERP_Message__c": "customer changed their mind",
    }


def test_capturing_the_same_change_twice_gives_the_same_event() -> None:
    shared = uuid.uuid4()
    one = logic.canonical(cause(event_id=shared), crm_order(), crm_items(), "C-1")
    two = logic.canonical(cause(event_id=shared), crm_order(), crm_items(), "C-1")

    assert one is not None
    assert one == two
