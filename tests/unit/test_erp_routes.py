"""ERPs chosen per legal entity (revsync.connectors.erp_routes): the port contract holds through
the routes over two ERPs, and each request reaches the ERP of its legal entity only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from fakes import FakeErp
from port_contracts import (
    ACTIVE,
    PRICE_BOOK,
    PRODUCTS,
    ErpContract,
    a_draft,
    line,
    order_request,
)
from revsync.connectors.erp_routes import UNROUTED, ErpRoutes
from revsync.ports.erp import (
    Customer,
    CustomerStatus,
    ErpOrderMissing,
    ErpRejected,
    PriceBook,
    Product,
    StockLevel,
)

pytestmark = pytest.mark.unit

ROUTES = {"US01": "americas", "CA01": "americas", "DE01": "europe", "GB01": "europe"}


def routes(americas: FakeErp, europe: FakeErp) -> ErpRoutes:
    return ErpRoutes({"americas": americas, "europe": europe}, ROUTES)


class BothErps:
    """The control of two ERPs holding the same master data, as two ERPs of one company
    whose master data is kept alike (each takes every seed, and the count is the last's); what
    is booked is asked of both."""

    def __init__(self, *erps: FakeErp) -> None:
        self.erps = erps

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        listed = list(customers)
        return [erp.seed_customers(listed) for erp in self.erps][-1]

    def seed_products(self, products: Iterable[Product]) -> int:
        listed = list(products)
        return [erp.seed_products(listed) for erp in self.erps][-1]

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        listed = list(price_books)
        return [erp.seed_price_books(listed) for erp in self.erps][-1]

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        """Into the first ERP only: stock is counted across ERPs, and a warehouse is one's."""
        return self.erps[0].seed_stock(levels)

    def booked(self, external_id: str) -> list[str]:
        return [order for erp in self.erps for order in erp.booked(external_id)]

    def invoice(self, external_id: str) -> None:
        for erp in self.erps:
            if erp.booked(external_id):
                erp.invoice(external_id)

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        crm_account_id: str | None = None,
    ) -> None:
        for erp in self.erps:
            if erp.customer(customer_id) is not None:
                erp.edit_customer(
                    customer_id,
                    credit_limit=credit_limit,
                    status=status,
                    crm_account_id=crm_account_id,
                )


class TestErpRoutes(ErpContract):
    @pytest.fixture
    def both(self) -> tuple[FakeErp, FakeErp]:
        return FakeErp(), FakeErp()

    @pytest.fixture
    def erp(self, both: tuple[FakeErp, FakeErp]) -> ErpRoutes:
        return routes(*both)

    @pytest.fixture
    def erp_control(self, both: tuple[FakeErp, FakeErp]) -> BothErps:
        return BothErps(*both)


def test_an_order_is_booked_in_its_legal_entitys_erp_only() -> None:
    americas, europe = FakeErp(), FakeErp()
    german = replace(ACTIVE, id="C-DE", crm_account_id="001DE", number="900100",
                     legal_entity="DE01", currency="EUR")  # fmt: skip
    euro_book = replace(PRICE_BOOK, id="PB-EU", currency="EUR", legal_entity="DE01")
    for fake in (americas, europe):
        fake.seed_customers([ACTIVE, german])
        fake.seed_products(PRODUCTS)
        fake.seed_price_books([PRICE_BOOK, euro_book])
    erp = routes(americas, europe)

    us = erp.create_sales_order(order_request(), "key-us")
    de = erp.create_sales_order(
        order_request(customer_id="C-DE", currency="EUR", price_book_id="PB-EU",
                      legal_entity="DE01", lines=(line(1, "PC-TIE", "2", "0.1000"),)),
        "key-de",
    )  # fmt: skip

    assert (len(americas.booked(us.external_id)), len(europe.booked(us.external_id))) == (1, 0)
    assert (len(americas.booked(de.external_id)), len(europe.booked(de.external_id))) == (0, 1)


def test_an_order_of_a_legal_entity_no_route_names_is_refused() -> None:
    erp = routes(FakeErp(), FakeErp())

    with pytest.raises(ErpRejected) as refused:
        erp.create_sales_order(order_request(legal_entity="FR01"), "key")

    assert (refused.value.code, refused.value.field) == (UNROUTED, "legal_entity")


def test_a_lookup_takes_only_the_answer_of_the_erp_the_records_entity_is_routed_to() -> None:
    """Two ERPs may use one id for different customers: each is its own ERP's."""
    americas, europe = FakeErp(), FakeErp()
    americas.seed_customers([replace(ACTIVE, legal_entity="DE01")])  # mis-filed: not its ERP
    europe.seed_customers([replace(ACTIVE, legal_entity="DE01", name="Acme GmbH")])
    erp = routes(americas, europe)

    found = erp.customer(ACTIVE.id)

    assert found is not None
    assert found.name == "Acme GmbH"
    assert erp.customer_by_account(str(ACTIVE.crm_account_id)) == found


def test_products_are_sold_by_the_entities_of_each_erp_that_sells_them() -> None:
    americas, europe = FakeErp(), FakeErp()
    americas.seed_products([Product("SKU-1", "Gauge", "SENSORS", "EA", True, frozenset())])
    europe.seed_products(
        [
            Product("SKU-1", "Gauge", "SENSORS", "EA", True, frozenset({"GB01"})),
            Product("SKU-2", "Valve", "VALVES", "EA", False, frozenset()),
        ]
    )

    found = routes(americas, europe).products(["SKU-1", "SKU-2", "SKU-3"])

    assert found["SKU-1"].legal_entities == {"US01", "CA01", "GB01"}
    assert not found["SKU-2"].active
    assert not found["SKU-2"].sold_by("DE01")
    assert "SKU-3" not in found


def test_a_cancel_finds_the_erp_that_booked_the_order() -> None:
    americas, europe = FakeErp(), FakeErp()
    for fake in (americas, europe):
        fake.seed_customers([ACTIVE])
        fake.seed_products(PRODUCTS)
        fake.seed_price_books([PRICE_BOOK])
    erp = routes(americas, europe)
    booked = erp.create_sales_order(order_request(), "key-c")

    cancelled = erp.cancel_sales_order(booked.external_id, "changed mind", "cancel-c")
    assert cancelled.external_id == booked.external_id
    with pytest.raises(ErpOrderMissing):
        erp.cancel_sales_order("801-NONE", "changed mind", "cancel-none")


def test_stock_in_a_region_is_what_every_erp_holds_there() -> None:
    americas, europe = FakeErp(), FakeErp()
    americas.seed_stock([StockLevel("SKU-1", "EMEA", Decimal("5"), date(2026, 12, 20))])
    europe.seed_stock([StockLevel("SKU-1", "EMEA", Decimal("7"), date(2026, 12, 10)),
                       StockLevel("SKU-2", "EMEA", Decimal("1"), None)])  # fmt: skip

    found = routes(americas, europe).stock(["SKU-1", "SKU-2"], "EMEA")

    assert found["SKU-1"].quantity == Decimal("12")
    assert found["SKU-1"].available_on == date(2026, 12, 10)
    assert found["SKU-2"].quantity == Decimal("1")


def test_an_account_never_moves_its_customer_to_an_entity_of_another_erp() -> None:
    americas, europe = FakeErp(), FakeErp()
    erp = routes(americas, europe)
    draft = a_draft()
    erp.upsert_customer(draft, "k1")

    with pytest.raises(ErpRejected) as refused:
        erp.upsert_customer(replace(draft, legal_entity="DE01", currency="EUR"), "k2")

    assert (refused.value.code, refused.value.field) == ("INVALID_CUSTOMER", "legal_entity")
    assert europe.customer_by_account(draft.crm_account_id) is None


def test_routes_to_an_erp_not_configured_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not configured: nowhere"):
        ErpRoutes({"americas": FakeErp()}, {"US01": "americas", "DE01": "nowhere"})
