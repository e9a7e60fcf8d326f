"""The contracts of the CRM and ERP ports: what every implementation must do, in one suite.

tests/unit/test_fake_ports.py runs it against the in-memory fakes, and
tests/integration/test_port_adapters.py against the real adapters and the sandboxes behind
them, so a handler unit-tested against a fake meets the same behaviour in production.

A subclass provides the port (the ``crm`` or ``erp`` fixture) and the system behind it (the
``crm_control`` or ``erp_control`` fixture, a :class:`CrmControl` or :class:`ErpControl`):
what a test does beside the port, seeding and inspecting, as a sales rep or the ERP's own
clock would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol

import pytest

from invoice_sync.logic import invoice_lookup
from order_sync.logic import reconcile_query
from revsync.contracts.events import CreditCheckOutcome, PricingOutcome
from revsync.errors import DependencyNotReady, ErrorClass, RevsyncError, classify
from revsync.ports.crm import CrmPort, CrmReferenceMissing, CrmRejected, RecordNotFound
from revsync.ports.erp import (
    Address,
    Customer,
    CustomerDraft,
    CustomerQuery,
    CustomerStatus,
    ErpOrderMissing,
    ErpPort,
    ErpRejected,
    IdempotencyConflict,
    PriceBook,
    Product,
    SalesOrderLine,
    SalesOrderRequest,
    SalesOrderStatus,
    StockLevel,
)

# --- the CRM ---------------------------------------------------------------------------------

ABSENT_ORDER = "801" + "6" * 15
"""A well-formed Order id no org has issued."""


class CrmControl(Protocol):
    """The CRM beside the port: a sales rep's records and an operator's view of them (the CRM
    sandbox's control API, or the fake's own)."""

    def insert(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[str]: ...

    def create_orders(
        self, orders: Sequence[Mapping[str, Any]], *, activate: bool = True
    ) -> list[str]: ...

    def cancel_order(self, order_id: str, reason: str) -> None: ...

    def records(self, sobject: str, **equal_to: str) -> list[dict[str, Any]]: ...


def an_order(account: str, **fields: Any) -> dict[str, Any]:
    """An order with two items, as a rep enters it."""
    return {
        "AccountId": account,
        "EffectiveDate": "2026-12-01",
        "CurrencyIsoCode": "USD",
        "Legal_Entity__c": "US01",
        "Region__c": "NA",
        **fields,
        "items": [
            {
                "SKU__c": "PC-SENSOR",
                "Quantity": 3,
                "UnitPrice": Decimal("19.99"),
                "Discount__c": Decimal("1.50"),
            },
            {"SKU__c": "PC-TIE", "Quantity": 10, "UnitPrice": Decimal("0.10")},
        ],
    }


def an_invoice(order: str, key: str, **fields: Any) -> dict[str, Any]:
    return {
        "ERP_Invoice_Id__c": key,
        "Name": key,
        "Order__c": order,
        "Total__c": Decimal("100.0000"),
        "Status__c": "Posted",
        **fields,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class CrmContract:
    """What every :class:`~revsync.ports.crm.CrmPort` does, as the services rely on it."""

    @pytest.fixture
    def account(self, crm_control: CrmControl) -> str:
        [account] = crm_control.insert(
            "Account", [{"Name": "Port Contract GmbH", "ERP_Customer_Id__c": unique("C-PC")}]
        )
        return account

    @pytest.fixture
    def order(self, crm_control: CrmControl, account: str) -> str:
        [order] = crm_control.create_orders([an_order(account)])
        return order

    # --- reads -------------------------------------------------------------------------

    def test_a_record_reads_back_by_id_with_every_field_or_the_named_ones(
        self, crm: CrmPort, crm_control: CrmControl
    ) -> None:
        customer = unique("C-PC")
        [account] = crm_control.insert(
            "Account", [{"Name": "Acme Read GmbH", "ERP_Customer_Id__c": customer}]
        )

        whole = crm.get("Account", account)
        named = crm.get("Account", account, ["Name", "ERP_Customer_Id__c"])

        assert (whole["Id"], whole["Name"], whole["ERP_Customer_Id__c"]) == (
            account,
            "Acme Read GmbH",
            customer,
        )
        assert "attributes" not in whole
        assert "CreatedDate" in whole
        assert named == {"Name": "Acme Read GmbH", "ERP_Customer_Id__c": customer}

    def test_reading_a_field_the_sobject_lacks_is_refused_and_names_it(
        self, crm: CrmPort, account: str
    ) -> None:
        with pytest.raises(CrmRejected) as refused:
            crm.get("Account", account, ["Name", "Colour__c"])

        assert (refused.value.status_code, refused.value.fields) == (
            "INVALID_FIELD",
            ("Colour__c",),
        )

    def test_a_missing_record_is_not_found_wherever_it_is_asked_for(self, crm: CrmPort) -> None:
        with pytest.raises(RecordNotFound) as missing:
            crm.get("Order", ABSENT_ORDER)
        assert (missing.value.sobject, missing.value.record_id) == ("Order", ABSENT_ORDER)
        assert classify(missing.value) is ErrorClass.DEPENDENCY_NOT_READY
        with pytest.raises(RecordNotFound):
            crm.related("Order", ABSENT_ORDER, "OrderItems")
        with pytest.raises(RecordNotFound):
            crm.update("Order", ABSENT_ORDER, {"ERP_Status__c": "Accepted"})
        with pytest.raises(RecordNotFound):
            crm.upsert("Order", "Id", ABSENT_ORDER, {"ERP_Status__c": "Accepted"})

    def test_an_orders_items_are_its_related_order_items_with_their_totals(
        self, crm: CrmPort, crm_control: CrmControl, account: str
    ) -> None:
        order, other = crm_control.create_orders([an_order(account), an_order(account)])

        items = crm.related("Order", order, "OrderItems")

        assert [(i["OrderItemNumber"], i["SKU__c"], i["TotalPrice"]) for i in items] == [
            ("0000000001", "PC-SENSOR", Decimal("58.47")),
            ("0000000002", "PC-TIE", Decimal("1.00")),
        ]
        assert all(item["OrderId"] == order for item in items)
        assert len(crm.related("Order", other, "OrderItems")) == 2
        header = crm.get("Order", order, ["Status", "TotalAmount", "ActivatedDate"])
        assert header["Status"] == "Activated"
        assert header["TotalAmount"] == Decimal("59.47")
        assert header["ActivatedDate"]
        with pytest.raises(RevsyncError):
            crm.related("Order", order, "Invoices")

    def test_decimals_come_back_digit_for_digit(self, crm: CrmPort, order: str) -> None:
        exact = Decimal("1234567.8901")
        beyond_float = Decimal("12345678901234567.8901")
        key = unique("INV")
        written = crm.upsert(
            "Invoice__c",
            "ERP_Invoice_Id__c",
            key,
            an_invoice(order, key, Total__c=exact, Subtotal__c=beyond_float),
        )

        stored = crm.get("Invoice__c", written.id, ["Total__c", "Subtotal__c"])

        assert stored == {"Total__c": exact, "Subtotal__c": beyond_float}
        assert isinstance(stored["Total__c"], Decimal)

    def test_dates_and_datetimes_are_written_and_read_as_iso_text(
        self, crm: CrmPort, order: str
    ) -> None:
        shipped_at = datetime(2026, 12, 1, 11, 30, tzinfo=timezone(timedelta(hours=1)))
        written = crm.upsert(
            "Shipment__c",
            "ERP_Shipment_Id__c",
            unique("SH"),
            {"Order__c": order, "Tracking_Number__c": "1Z999", "Shipped_At__c": shipped_at},
        )
        crm.update("Order", order, {"Requested_Delivery_Date__c": date(2026, 12, 24)})

        shipment = crm.get("Shipment__c", written.id, ["Shipped_At__c"])
        delivery = crm.get("Order", order, ["Requested_Delivery_Date__c"])

        assert shipment == {"Shipped_At__c": "2026-12-01T10:30:00.000+0000"}
        assert delivery == {"Requested_Delivery_Date__c": "2026-12-24"}

    # --- the queries the services issue --------------------------------------------------

    def test_the_invoice_lookup_finds_the_invoice_by_its_erp_id_quotes_and_all(
        self, crm: CrmPort, order: str
    ) -> None:
        key = unique("INV-O'Brien")
        assert crm.query(invoice_lookup(key)) == []

        written = crm.upsert("Invoice__c", "ERP_Invoice_Id__c", key, an_invoice(order, key))

        assert crm.query(invoice_lookup(key)) == [{"Id": written.id}]

    def test_the_reconcile_query_finds_orders_activated_or_cancelled_since(
        self, crm: CrmPort, crm_control: CrmControl, account: str
    ) -> None:
        since = datetime.now(UTC)
        activated, cancelled = crm_control.create_orders([an_order(account), an_order(account)])
        crm_control.cancel_order(cancelled, "customer changed their mind")
        [draft] = crm_control.create_orders([an_order(account)], activate=False)

        rows = crm.query(reconcile_query(since))

        found = [row["Id"] for row in rows]
        assert {activated, cancelled} <= set(found)
        assert found.index(activated) < found.index(cancelled), "by SystemModstamp"
        assert draft not in found
        assert all(set(row) == {"Id"} for row in rows)

    def test_a_query_that_is_malformed_or_names_an_unknown_field_is_refused(
        self, crm: CrmPort
    ) -> None:
        with pytest.raises(CrmRejected) as malformed:
            crm.query("SELECT FROM WHERE")
        assert malformed.value.status_code == "MALFORMED_QUERY"
        with pytest.raises(CrmRejected) as unknown:
            crm.query("SELECT Colour__c FROM Order")
        assert unknown.value.status_code == "INVALID_FIELD"

    # --- writes ------------------------------------------------------------------------

    def test_an_account_carries_its_customer_master_fields_both_ways(
        self, crm: CrmPort, crm_control: CrmControl
    ) -> None:
        crm_owned = {
            "Name": "Quill Supplies Ltd",
            "Sync_To_ERP__c": True,
            "Tax_Id__c": "GB123456789",
            "DUNS__c": "150483782",
            "Legal_Entity__c": "GB01",
            "CurrencyIsoCode": "GBP",
            "BillingStreet": "17 Quill Lane",
            "BillingCity": "Leeds",
            "BillingState": None,
            "BillingPostalCode": "LS1 4AP",
            "BillingCountryCode": "GB",
        }
        erp_owned = {
            "ERP_Customer_Id__c": unique("C-PC"),
            "ERP_Customer_Number__c": "100042",
            "Credit_Limit__c": Decimal("40000.0000"),
            "ERP_Customer_Status__c": "Credit Hold",
            "Payment_Terms__c": "NET30",
            "ERP_Blocks__c": "order;delivery",
        }
        [account] = crm_control.insert("Account", [crm_owned])

        crm.update("Account", account, erp_owned)

        assert crm.get("Account", account, [*crm_owned, *erp_owned]) == crm_owned | erp_owned
        with pytest.raises(CrmRejected) as refused:
            crm.update("Account", account, {"ERP_Customer_Status__c": "On Hold"})
        assert (refused.value.status_code, refused.value.fields) == (
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            ("ERP_Customer_Status__c",),
        )

    def test_an_update_changes_the_named_fields_and_only_those(
        self, crm: CrmPort, order: str
    ) -> None:
        crm.update("Order", order, {"ERP_Status__c": "Accepted", "ERP_Order_Id__c": "SO-1"})

        after = crm.get("Order", order, ["Status", "ERP_Status__c", "ERP_Order_Id__c"])
        assert after == {
            "Status": "Activated",
            "ERP_Status__c": "Accepted",
            "ERP_Order_Id__c": "SO-1",
        }
        assert crm.get("Order", order, ["ERP_Message__c"]) == {"ERP_Message__c": None}

    @pytest.mark.parametrize(
        ("fields", "code", "field"),
        [
            ({"ERP_Message__c": "x" * 256}, "STRING_TOO_LONG", "ERP_Message__c"),
            (
                {"ERP_Status__c": "Maybe"},
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                "ERP_Status__c",
            ),
            ({"EffectiveDate": "next tuesday"}, "INVALID_TYPE_ON_FIELD_IN_RECORD", "EffectiveDate"),
            ({"TotalAmount": Decimal(1)}, "INVALID_FIELD_FOR_INSERT_UPDATE", "TotalAmount"),
            ({"Colour__c": "red"}, "INVALID_FIELD", "Colour__c"),
        ],
        ids=["too-long", "picklist", "type", "read-only", "unknown"],
    )
    def test_a_refused_update_names_its_field_and_changes_nothing(
        self, crm: CrmPort, order: str, fields: dict[str, Any], code: str, field: str
    ) -> None:
        before = crm.get("Order", order)

        with pytest.raises(CrmRejected) as refused:
            crm.update("Order", order, {"ERP_Order_Id__c": "SO-NOT-WRITTEN", **fields})

        assert (refused.value.status_code, refused.value.fields) == (code, (field,))
        assert classify(refused.value) is ErrorClass.BUSINESS_RULE
        assert crm.get("Order", order) == before

    def test_an_upsert_by_external_id_creates_then_updates_one_record(
        self, crm: CrmPort, order: str
    ) -> None:
        key = unique("INV")
        first = crm.upsert("Invoice__c", "ERP_Invoice_Id__c", key, an_invoice(order, key))
        second = crm.upsert(
            "Invoice__c", "ERP_Invoice_Id__c", key, {"Status__c": "Paid", "Amount_Due__c": 0}
        )

        assert (first.created, second.created) == (True, False)
        assert first.id == second.id
        assert first.id.startswith("a0X")
        assert len(first.id) == 18
        stored = crm.get("Invoice__c", first.id)
        assert (stored["ERP_Invoice_Id__c"], stored["Order__c"]) == (key, order)
        assert (stored["Status__c"], stored["Amount_Due__c"], stored["Total__c"]) == (
            "Paid",
            0,
            Decimal("100.0000"),
        )

    def test_a_child_whose_order_is_missing_waits_for_it_and_is_not_written(
        self, crm: CrmPort, crm_control: CrmControl
    ) -> None:
        key = unique("SH")

        with pytest.raises(CrmReferenceMissing) as dangling:
            crm.upsert(
                "Shipment__c",
                "ERP_Shipment_Id__c",
                key,
                {"Order__c": ABSENT_ORDER, "Tracking_Number__c": "1Z999"},
            )

        assert dangling.value.fields == ("Order__c",)
        assert isinstance(dangling.value, DependencyNotReady)
        assert crm_control.records("Shipment__c", ERP_Shipment_Id__c=key) == []

    def test_a_child_without_a_required_field_is_refused(self, crm: CrmPort, order: str) -> None:
        with pytest.raises(CrmRejected) as refused:
            crm.upsert("Shipment__c", "ERP_Shipment_Id__c", unique("SH"), {"Order__c": order})

        assert refused.value.status_code == "REQUIRED_FIELD_MISSING"
        assert refused.value.fields == ("Tracking_Number__c",)

    def test_a_collection_upsert_answers_each_record_in_input_order(
        self, crm: CrmPort, crm_control: CrmControl, order: str
    ) -> None:
        run = unique("INV")
        good = an_invoice(order, f"{run}-ok")
        no_total = {**an_invoice(order, f"{run}-1"), "Total__c": None}
        negative = an_invoice(order, f"{run}-2", Amount_Due__c=-1)
        dangling = an_invoice(order, f"{run}-3", Order__c=ABSENT_ORDER)
        unknown_field = an_invoice(order, f"{run}-4", Colour__c="red")
        keyless = {
            k: v for k, v in an_invoice(order, f"{run}-5").items() if k != "ERP_Invoice_Id__c"
        }
        batch = [good, no_total, negative, dangling, unknown_field, keyless]

        results = crm.upsert_many("Invoice__c", "ERP_Invoice_Id__c", batch)

        assert [r.external_id for r in results] == [i.get("ERP_Invoice_Id__c", "") for i in batch]
        assert [r.success for r in results] == [True, False, False, False, False, False]
        assert results[0].created
        assert results[0].error() is None
        missing, refused, waiting, unknown, unnamed = (r.error() for r in results[1:])
        assert isinstance(missing, CrmRejected)
        assert (missing.status_code, missing.fields) == ("REQUIRED_FIELD_MISSING", ("Total__c",))
        assert str(missing).startswith(f"Salesforce refused Invoice__c ERP_Invoice_Id__c={run}-1")
        assert isinstance(refused, CrmRejected)
        assert refused.status_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        assert isinstance(waiting, CrmReferenceMissing)
        assert waiting.fields == ("Order__c",)
        assert isinstance(unknown, CrmRejected)
        assert (unknown.status_code, unknown.fields) == ("INVALID_FIELD", ("Colour__c",))
        assert isinstance(unnamed, CrmRejected)
        assert unnamed.status_code == "MISSING_ARGUMENT"
        [written] = crm_control.records("Invoice__c", ERP_Invoice_Id__c=f"{run}-ok")
        assert written["Id"] == results[0].id
        assert crm_control.records("Invoice__c", ERP_Invoice_Id__c=f"{run}-3") == []

        again = crm.upsert_many("Invoice__c", "ERP_Invoice_Id__c", [good])

        assert [(r.id, r.created, r.success) for r in again] == [(results[0].id, False, True)]

    def test_status_updates_keyed_by_id_reach_known_orders_and_miss_others(
        self, crm: CrmPort, order: str
    ) -> None:
        results = crm.upsert_many(
            "Order",
            "Id",
            [
                {"Id": order, "Billing_Status__c": "Invoiced"},
                {"Id": ABSENT_ORDER, "Billing_Status__c": "Paid"},
            ],
        )

        assert [(r.success, r.created) for r in results] == [(True, False), (False, False)]
        assert isinstance(results[1].error(), RecordNotFound)
        assert crm.get("Order", order, ["Billing_Status__c"]) == {"Billing_Status__c": "Invoiced"}


# --- the ERP ---------------------------------------------------------------------------------


class ErpControl(Protocol):
    """The ERP beside the port: its master data, what it has booked, and its clock."""

    def seed_customers(self, customers: Iterable[Customer]) -> int: ...

    def seed_products(self, products: Iterable[Product]) -> int: ...

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int: ...

    def booked(self, external_id: str) -> list[str]:
        """The ids of the sales orders booked for ``external_id``."""
        ...

    def invoice(self, external_id: str) -> None:
        """Once this returns, the ERP has invoiced the open order for ``external_id``."""
        ...

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        crm_account_id: str | None = None,
    ) -> None:
        """An ERP user changes a customer's credit limit or status, or links it to a CRM
        account."""
        ...

    def seed_stock(self, levels: Iterable[StockLevel]) -> int: ...


ACTIVE = Customer(
    "C-PC-ACTIVE",
    "Acme Corp",
    "001A",
    "US01",
    CustomerStatus.ACTIVE,
    Decimal("10000"),
    "USD",
    number="900001",
    payment_terms="NET45",
    blocks=("delivery",),
    tax_id="US-PC-0001",
    duns="900000001",
    country_code="US",
)
HELD = Customer(
    "C-PC-HELD",
    "Held Inc",
    "001B",
    "US01",
    CustomerStatus.CREDIT_HOLD,
    Decimal("1E4"),
    "USD",
    number="900002",
    payment_terms="NET30",
)
BLOCKED = Customer(
    "C-PC-BLOCKED",
    "Closed LLC",
    "001C",
    "US01",
    CustomerStatus.BLOCKED,
    Decimal("1E4"),
    "USD",
    number="900003",
    payment_terms="NET30",
)
HELD_UNTIL_PAID = replace(
    HELD, id="C-PC-HELD-2", name="Held Until Paid Ltd", crm_account_id="001D", number="900004"
)
PRODUCTS = (
    Product("PC-SENSOR", "Pressure sensor", "SENSORS", "EA", True, frozenset({"US01"})),
    Product("PC-TIE", "Cable tie", "ACCESSORIES", "EA", True, frozenset()),
    Product("PC-OLD", "Retired gauge", "SENSORS", "EA", False, frozenset()),
    Product("PC-SAMPLE", "Free sample", "ACCESSORIES", "EA", True, frozenset()),
)
PRICE_BOOK = PriceBook(
    "PB-PC-US",
    "US standard",
    "USD",
    "US01",
    {
        "PC-SENSOR": Decimal("100.0000"),
        "PC-TIE": Decimal("0.1000"),
        "PC-OLD": Decimal("5"),
        "PC-SAMPLE": Decimal("0"),
    },
)
PRICE_BOOK_EUR = PriceBook(
    "PB-PC-US-EUR",
    "US in euros",
    "EUR",
    "US01",
    {"PC-SENSOR": Decimal("92.0000"), "PC-TIE": Decimal("0.0900")},
)
"""A book in another currency than the legal entity's customers are billed in."""


def line(
    number: int, sku: str, quantity: str, price: str, discount: str = "0", tax: str = "0"
) -> SalesOrderLine:
    return SalesOrderLine(
        number, sku, Decimal(quantity), Decimal(price), Decimal(discount), Decimal(tax)
    )


def order_request(
    *lines: SalesOrderLine, customer_id: str = ACTIVE.id, **changes: Any
) -> SalesOrderRequest:
    """A request for a new external id: by default two sensors at list price, for US01."""
    request = SalesOrderRequest(
        external_id=f"801{uuid.uuid4().hex[:15]}",
        customer_id=customer_id,
        currency="USD",
        price_book_id=PRICE_BOOK.id,
        legal_entity="US01",
        region="NA",
        po_number="PO-7781",
        requested_delivery_date=date(2026, 12, 24),
        ship_to=Address("1 Market St", "San Francisco", "CA", "94105", "US"),
        lines=lines or (line(1, "PC-SENSOR", "2", "100.0000", discount="10", tax="15.2000"),),
        correlation_id=f"corr-{uuid.uuid4()}",
    )
    return replace(request, **changes)


def a_key() -> str:
    return str(uuid.uuid4())


def a_draft(**changes: Any) -> CustomerDraft:
    """A new CRM account's customer: a tax id, a DUNS number and a name of its own, in US01."""
    tag = uuid.uuid4()
    draft = CustomerDraft(
        crm_account_id=f"001{tag.hex[:15]}",
        name=f"Contract Widgets {tag.hex[:8]} GmbH",
        legal_entity="US01",
        currency="USD",
        country_code="US",
        tax_id=f"US-{tag.hex[8:18]}",
        duns=f"{tag.int % 10**9:09d}",
        billing_address=Address("1 Harbour Road", "Boston", "MA", "02110", "US"),
    )
    return replace(draft, **changes)


class ErpContract:
    """What every :class:`~revsync.ports.erp.ErpPort` does, as the services rely on it."""

    @pytest.fixture(autouse=True)
    def master_data(self, erp_control: ErpControl) -> None:
        """The contract's customers, products and price book, as each test starts."""
        erp_control.seed_customers([ACTIVE, HELD, BLOCKED, HELD_UNTIL_PAID])
        erp_control.seed_products(PRODUCTS)
        erp_control.seed_price_books([PRICE_BOOK, PRICE_BOOK_EUR])

    # --- master data -------------------------------------------------------------------

    def test_master_data_reads_back_as_seeded_at_four_places(self, erp: ErpPort) -> None:
        customer = erp.customer(ACTIVE.id)
        assert customer == ACTIVE
        assert str(customer.credit_limit) == "10000.0000"
        assert erp.products(["PC-SENSOR", "PC-OLD", "PC-NONE"]) == {
            "PC-SENSOR": PRODUCTS[0],
            "PC-OLD": PRODUCTS[2],
        }
        assert erp.products([]) == {}
        book = erp.price_book(PRICE_BOOK.id)
        assert book is not None
        assert book.prices == {
            "PC-SENSOR": Decimal("100.0000"),
            "PC-TIE": Decimal("0.1000"),
            "PC-OLD": Decimal("5.0000"),
            "PC-SAMPLE": Decimal("0.0000"),
        }
        assert str(book.prices["PC-OLD"]) == "5.0000", "at the ERP's scale, as seeded or not"
        assert (book.currency, book.legal_entity) == ("USD", "US01")

    def test_an_unknown_customer_or_price_book_is_none(self, erp: ErpPort) -> None:
        assert erp.customer("C-PC-NOBODY") is None
        assert erp.price_book("PB-PC-NOPE") is None
        assert erp.products(["PC-NONE"]) == {}
        assert erp.customer_by_account("001PCNOBODY") is None
        assert erp.credit("C-PC-NOBODY") is None

    # --- customers mastered from CRM accounts -------------------------------------------

    def test_an_upsert_creates_the_accounts_customer_then_updates_it(self, erp: ErpPort) -> None:
        draft = a_draft()

        first = erp.upsert_customer(draft, a_key())
        read_back = erp.customer_by_account(draft.crm_account_id)
        second = erp.upsert_customer(
            replace(draft, name="Contract Widgets Holdings", tax_id=None, country_code="CA"),
            a_key(),
        )

        created = first.customer
        assert first.created
        assert (created.crm_account_id, created.name, created.legal_entity) == (
            draft.crm_account_id,
            draft.name,
            "US01",
        )
        assert (created.tax_id, created.duns, created.country_code) == (
            draft.tax_id,
            draft.duns,
            "US",
        )
        assert created.billing_address == draft.billing_address
        assert created.status is CustomerStatus.ACTIVE
        assert (str(created.credit_limit), created.currency) == ("50000.0000", "USD")
        assert (created.payment_terms, created.blocks) == ("NET30", ())
        assert (created.number or "").isdigit()
        assert read_back == created
        assert not second.created
        assert second.customer == replace(
            created, name="Contract Widgets Holdings", tax_id=None, country_code="CA"
        )
        assert erp.customer_by_account(draft.crm_account_id) == second.customer
        assert erp.customer(created.id) == second.customer

    def test_an_upsert_retried_under_its_key_answers_the_same_and_creates_once(
        self, erp: ErpPort
    ) -> None:
        draft, key = a_draft(), a_key()

        first = erp.upsert_customer(draft, key)
        retried = erp.upsert_customer(draft, key)
        again = erp.upsert_customer(draft, a_key())

        assert retried == first
        assert retried.created, "the answer to the request that created it"
        assert (again.created, again.customer) == (False, first.customer)
        assert erp.find_customers(CustomerQuery(tax_id=draft.tax_id)) == [first.customer]
        with pytest.raises(IdempotencyConflict) as conflict:
            erp.upsert_customer(replace(draft, name="Someone Else Entirely"), key)
        assert classify(conflict.value) is ErrorClass.UNKNOWN

    def test_concurrent_upserts_for_one_account_make_one_customer(self, erp: ErpPort) -> None:
        draft = a_draft()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: erp.upsert_customer(draft, a_key()), range(8)))

        assert [result.created for result in results].count(True) == 1
        assert len({result.customer.id for result in results}) == 1
        assert erp.find_customers(CustomerQuery(tax_id=draft.tax_id)) == [results[0].customer]

    def test_erp_owned_fields_survive_the_crms_upsert(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        draft = a_draft()
        customer = erp.upsert_customer(draft, a_key()).customer
        erp_control.edit_customer(
            customer.id, credit_limit=Decimal(20000), status=CustomerStatus.CREDIT_HOLD
        )

        renamed = erp.upsert_customer(replace(draft, name="Contract Widgets Two"), a_key())

        assert (renamed.customer.status, renamed.customer.credit_limit) == (
            CustomerStatus.CREDIT_HOLD,
            Decimal("20000.0000"),
        )
        assert (renamed.customer.name, renamed.customer.number) == (
            "Contract Widgets Two",
            customer.number,
        )

    def test_an_erp_customer_a_steward_links_to_an_account_is_the_one_it_upserts(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        draft = a_draft()
        erp_only = replace(
            ACTIVE, id=f"C-PC-{uuid.uuid4().hex[:8]}", crm_account_id=None, number=None
        )
        erp_control.seed_customers([erp_only])

        erp_control.edit_customer(erp_only.id, crm_account_id=draft.crm_account_id)
        upserted = erp.upsert_customer(draft, a_key())

        assert not upserted.created
        assert (upserted.customer.id, upserted.customer.name) == (erp_only.id, draft.name)
        assert erp.customer_by_account(draft.crm_account_id) == upserted.customer

    def test_customers_are_found_by_any_criterion(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        ours = erp.upsert_customer(a_draft(), a_key()).customer
        tag = uuid.uuid4().hex[:8]
        erp_only = replace(
            ACTIVE,
            id=f"C-PC-{tag}",
            name=f"Grüne Ventile {tag} GmbH",
            crm_account_id=None,
            number=None,
            tax_id=f"DE {tag} 01",
            duns=None,
            country_code="DE",
        )
        erp_control.seed_customers([erp_only])
        seeded = erp.customer(erp_only.id)
        assert seeded is not None
        assert ours.tax_id is not None
        assert ours.duns is not None

        by_tax_id = erp.find_customers(CustomerQuery(tax_id=f"de-{tag}.01"))
        by_duns = erp.find_customers(CustomerQuery(duns=f"{ours.duns[:3]}-{ours.duns[3:]}"))
        by_name = erp.find_customers(
            CustomerQuery(name=f"GRUNE ventile, {tag} Ltd.", country_code="de")
        )
        by_either = erp.find_customers(CustomerQuery(tax_id=ours.tax_id.lower(), duns=ours.duns))
        by_any = erp.find_customers(
            CustomerQuery(tax_id=seeded.tax_id, duns=ours.duns, name="Nobody", country_code="US")
        )

        assert (by_tax_id, by_duns, by_name, by_either) == ([seeded], [ours], [seeded], [ours])
        assert {c.id for c in by_any} == {ours.id, seeded.id}
        assert erp.find_customers(CustomerQuery(name=seeded.name, country_code="AT")) == []
        assert erp.find_customers(CustomerQuery(tax_id=f"XX-{uuid.uuid4().hex}")) == []
        assert erp.find_customers(CustomerQuery()) == []

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"name": "   "}, "name"),
            ({"legal_entity": "XX99"}, "legal_entity"),
            ({"currency": "usd"}, "currency"),
            ({"currency": "XYZ"}, "currency"),
            ({"country_code": "USA"}, "country_code"),
            ({"tax_id": "?"}, "tax_id"),
            ({"duns": "12-345"}, "duns"),
            (
                {"billing_address": Address("", "Boston", None, None, "US")},
                "billing_address.street",
            ),
        ],
        ids=[
            "blank-name",
            "legal-entity",
            "currency-case",
            "currency-unknown",
            "country",
            "tax-id",
            "duns",
            "street",
        ],
    )
    def test_a_refused_customer_names_its_field_and_creates_nothing(
        self, erp: ErpPort, changes: dict[str, Any], field: str
    ) -> None:
        draft, key = a_draft(**changes), a_key()

        with pytest.raises(ErpRejected) as refused:
            erp.upsert_customer(draft, key)

        assert (refused.value.code, refused.value.field) == ("INVALID_CUSTOMER", field)
        assert refused.value.message
        assert classify(refused.value) is ErrorClass.BUSINESS_RULE
        assert erp.customer_by_account(draft.crm_account_id) is None
        fixed = erp.upsert_customer(replace(a_draft(), crm_account_id=draft.crm_account_id), key)
        assert fixed.created, "a refusal leaves its key unused"

    @pytest.mark.parametrize(
        ("changes", "field"),
        [({"legal_entity": "DE01"}, "legal_entity"), ({"currency": "EUR"}, "currency")],
    )
    def test_a_customer_keeps_its_legal_entity_and_currency(
        self, erp: ErpPort, changes: dict[str, Any], field: str
    ) -> None:
        draft = a_draft()
        customer = erp.upsert_customer(draft, a_key()).customer

        with pytest.raises(ErpRejected) as refused:
            erp.upsert_customer(replace(draft, name="Moved On Ltd", **changes), a_key())

        assert (refused.value.code, refused.value.field) == ("INVALID_CUSTOMER", field)
        assert erp.customer_by_account(draft.crm_account_id) == customer

    def test_credit_exposure_moves_with_the_customers_orders(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        customer = erp.upsert_customer(a_draft(), a_key()).customer
        fresh = erp.credit(customer.id)
        booked = order_request(customer_id=customer.id)
        order = erp.create_sales_order(booked, a_key())
        cancelled = order_request(customer_id=customer.id)
        erp.create_sales_order(cancelled, a_key())
        erp.cancel_sales_order(cancelled.external_id, "not wanted", a_key())
        open_only = erp.credit(customer.id)
        erp_control.invoice(booked.external_id)
        invoiced = erp.credit(customer.id)

        assert fresh is not None
        assert (fresh.customer_id, fresh.status, fresh.currency) == (
            customer.id,
            CustomerStatus.ACTIVE,
            "USD",
        )
        assert (fresh.credit_limit, fresh.exposure, fresh.available) == (
            Decimal("50000.0000"),
            Decimal(0),
            Decimal(50000),
        )
        assert open_only is not None
        assert open_only.exposure == order.grand_total == Decimal("205.2000")
        assert open_only.available == Decimal("49794.8000")
        assert invoiced == open_only, "an unpaid invoice is as exposed as the open order"

    def test_an_erp_users_credit_edit_is_the_credit_position(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        customer = erp.upsert_customer(a_draft(), a_key()).customer
        erp.create_sales_order(order_request(customer_id=customer.id), a_key())

        erp_control.edit_customer(
            customer.id, credit_limit=Decimal(100), status=CustomerStatus.CREDIT_HOLD
        )

        position = erp.credit(customer.id)
        assert position is not None
        assert (position.status, position.credit_limit) == (
            CustomerStatus.CREDIT_HOLD,
            Decimal("100.0000"),
        )
        assert position.available == Decimal("-105.2000")

    # --- stock -------------------------------------------------------------------------

    def test_stock_is_by_sku_in_a_region_and_unknown_skus_are_absent(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        region, elsewhere = f"R-{uuid.uuid4().hex[:8]}", f"R-{uuid.uuid4().hex[:8]}"
        erp_control.seed_stock(
            [
                StockLevel("PC-SENSOR", region, Decimal(12), date(2026, 12, 24)),
                StockLevel("PC-TIE", region, Decimal("0.5"), None),
                StockLevel("PC-OLD", elsewhere, Decimal(3), None),
            ]
        )

        levels = erp.stock(["PC-SENSOR", "PC-TIE", "PC-OLD", "PC-NONE", "PC-TIE"], region)

        assert levels == {
            "PC-SENSOR": StockLevel("PC-SENSOR", region, Decimal("12.0000"), date(2026, 12, 24)),
            "PC-TIE": StockLevel("PC-TIE", region, Decimal("0.5000"), None),
        }
        assert str(levels["PC-TIE"].quantity) == "0.5000"
        assert erp.stock([], region) == {}
        assert erp.stock(["PC-SENSOR"], f"R-{uuid.uuid4().hex[:8]}") == {}

    # --- booking -----------------------------------------------------------------------

    def test_a_create_books_an_open_order_with_exact_amounts(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        request = order_request(
            line(1, "PC-SENSOR", "2", "100.0000", discount="10", tax="15.2000"),
            line(2, "PC-TIE", "3", "0.1000", tax="0.0300"),
        )

        order = erp.create_sales_order(request, a_key())

        assert (order.external_id, order.customer_id, order.currency) == (
            request.external_id,
            ACTIVE.id,
            "USD",
        )
        assert order.status is SalesOrderStatus.OPEN
        assert order.number.startswith("SO-")
        assert (order.subtotal, order.tax_total) == (Decimal("190.3000"), Decimal("15.2300"))
        assert str(order.grand_total) == "205.5300"
        assert order.credit_check is CreditCheckOutcome.APPROVED
        assert order.pricing_outcome is PricingOutcome.MATCHED
        assert order.created_at.tzinfo is not None
        assert erp_control.booked(request.external_id) == [order.id]

    def test_a_retry_under_the_same_key_returns_the_same_order_and_books_once(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        request, key = order_request(), a_key()

        first = erp.create_sales_order(request, key)
        again = erp.create_sales_order(request, key)

        assert again == first
        assert erp_control.booked(request.external_id) == [first.id]

    def test_a_create_under_a_new_key_for_a_booked_external_id_returns_the_booked_order(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        request = order_request()
        first = erp.create_sales_order(request, a_key())

        again = erp.create_sales_order(replace(request, po_number="PO-other"), a_key())

        assert again == first
        assert erp_control.booked(request.external_id) == [first.id]

    def test_a_key_reused_for_another_request_is_an_idempotency_conflict(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        key = a_key()
        erp.create_sales_order(order_request(), key)
        other = order_request()

        with pytest.raises(IdempotencyConflict, match="different request") as conflict:
            erp.create_sales_order(other, key)

        assert classify(conflict.value) is ErrorClass.UNKNOWN
        assert erp_control.booked(other.external_id) == []

    @pytest.mark.parametrize(
        ("changes", "lines", "code", "skus"),
        [
            ({"customer_id": HELD.id}, (), "CREDIT_HOLD", ()),
            ({"customer_id": BLOCKED.id}, (), "CUSTOMER_BLOCKED", ()),
            ({"customer_id": "C-PC-404"}, (), "CUSTOMER_NOT_MASTERED", ()),
            ({}, (line(1, "PC-SENSOR", "120", "100"),), "CREDIT_LIMIT_EXCEEDED", ()),
            (
                {},
                (
                    line(1, "PC-OLD", "1", "5"),
                    line(2, "PC-X", "1", "1"),
                    line(3, "PC-TIE", "1", "0.1"),
                ),
                "UNKNOWN_PRODUCT",
                ("PC-OLD", "PC-X"),
            ),
            ({"legal_entity": "DE01"}, (), "UNKNOWN_PRODUCT", ("PC-SENSOR",)),
            (
                {},
                (line(1, "PC-TIE", "1", "0.2"), line(2, "PC-SENSOR", "1", "98.9999")),
                "PRICING_MISMATCH",
                ("PC-SENSOR", "PC-TIE"),
            ),
            ({}, (line(1, "PC-TIE", "1", "0.1", discount="0.2"),), "INVALID_ORDER", ("PC-TIE",)),
            ({"currency": "EUR"}, (), "UNSUPPORTED_CURRENCY", ()),
            (
                {"currency": "EUR", "price_book_id": PRICE_BOOK_EUR.id},
                (line(1, "PC-SENSOR", "2", "92.0000"),),
                "UNSUPPORTED_CURRENCY",
                (),
            ),
            ({"price_book_id": "PB-PC-NOPE"}, (), "UNKNOWN_PRICE_BOOK", ()),
        ],
        ids=[
            "credit-hold",
            "blocked",
            "not-mastered",
            "credit-limit",
            "unknown-product",
            "not-sold-here",
            "mispriced",
            "discount-over-price",
            "currency",
            "not-the-customers-currency",
            "price-book",
        ],
    )
    def test_a_business_refusal_says_why_and_books_nothing(
        self,
        erp: ErpPort,
        erp_control: ErpControl,
        changes: dict[str, Any],
        lines: tuple[SalesOrderLine, ...],
        code: str,
        skus: tuple[str, ...],
    ) -> None:
        request = order_request(*lines, **changes)

        with pytest.raises(ErpRejected) as refused:
            erp.create_sales_order(request, a_key())

        assert (refused.value.code, refused.value.skus) == (code, skus)
        assert refused.value.message
        assert classify(refused.value) is ErrorClass.BUSINESS_RULE
        assert erp_control.booked(request.external_id) == []

    def test_a_refused_key_is_not_spent(self, erp: ErpPort, erp_control: ErpControl) -> None:
        """A refusal books nothing, so the same key books the order once it is fixed."""
        request, key = order_request(customer_id=HELD_UNTIL_PAID.id), a_key()
        with pytest.raises(ErpRejected):
            erp.create_sales_order(request, key)

        erp_control.seed_customers([replace(HELD_UNTIL_PAID, status=CustomerStatus.ACTIVE)])
        order = erp.create_sales_order(request, key)

        assert order.status is SalesOrderStatus.OPEN
        assert erp_control.booked(request.external_id) == [order.id]

    def test_tolerances_accept_with_their_outcomes(self, erp: ErpPort) -> None:
        within = erp.create_sales_order(
            order_request(line(1, "PC-SENSOR", "105", "99.0000")), a_key()
        )
        free = erp.create_sales_order(order_request(line(1, "PC-SAMPLE", "2", "0")), a_key())

        assert within.grand_total == Decimal("10395.0000")
        assert within.credit_check is CreditCheckOutcome.APPROVED_OVER_LIMIT
        assert within.pricing_outcome is PricingOutcome.ADJUSTED_WITHIN_TOLERANCE
        assert free.grand_total == 0
        assert free.credit_check is CreditCheckOutcome.NOT_REQUIRED

    # --- cancelling --------------------------------------------------------------------

    def test_a_cancel_cancels_an_open_order_once(self, erp: ErpPort) -> None:
        request = order_request()
        booked = erp.create_sales_order(request, a_key())
        key = a_key()

        cancelled = erp.cancel_sales_order(request.external_id, "customer changed mind", key)
        replayed = erp.cancel_sales_order(request.external_id, "customer changed mind", key)
        again = erp.cancel_sales_order(request.external_id, "duplicate event", a_key())

        assert (cancelled.id, cancelled.status) == (booked.id, SalesOrderStatus.CANCELLED)
        assert replayed == cancelled
        assert (again.id, again.status) == (booked.id, SalesOrderStatus.CANCELLED)
        with pytest.raises(IdempotencyConflict):
            erp.cancel_sales_order(request.external_id, "another reason", key)

    def test_a_cancel_of_an_order_the_erp_lacks_waits_for_it(self, erp: ErpPort) -> None:
        external_id = f"801{uuid.uuid4().hex[:15]}"

        with pytest.raises(ErpOrderMissing, match=external_id) as missing:
            erp.cancel_sales_order(external_id, "no longer needed", a_key())

        assert isinstance(missing.value, DependencyNotReady)

    def test_an_invoiced_order_is_not_cancellable_and_is_what_a_create_returns(
        self, erp: ErpPort, erp_control: ErpControl
    ) -> None:
        request = order_request()
        booked = erp.create_sales_order(request, a_key())
        erp_control.invoice(request.external_id)

        with pytest.raises(ErpRejected) as refused:
            erp.cancel_sales_order(request.external_id, "too late", a_key())

        assert refused.value.code == "ORDER_NOT_CANCELLABLE"
        assert classify(refused.value) is ErrorClass.BUSINESS_RULE
        current = erp.create_sales_order(request, a_key())
        assert (current.id, current.status) == (booked.id, SalesOrderStatus.INVOICED)
