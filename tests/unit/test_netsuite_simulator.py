"""The NetSuite simulator's pure parts: what SuiteQL runs and how it renders values, and the
translation of NetSuite's records and the books' refusals."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sandbox.netsuite.records import Ids, customer_body, order_body, order_refusal
from sandbox.netsuite.suiteql import (
    DEFAULT_CURRENCIES,
    DEFAULT_SUBSIDIARIES,
    QueryRefused,
    check_select,
    rendered,
)

pytestmark = pytest.mark.unit

IDS = Ids(DEFAULT_SUBSIDIARIES, DEFAULT_CURRENCIES)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id FROM customer",
        "select id from customer;",
        "SELECT id FROM customer WHERE companyname = 'a;b' -- ; not a second one",
        "SELECT id /* ; */ FROM customer",
    ],
)
def test_one_select_is_run(query: str) -> None:
    assert not check_select(query).rstrip().endswith(";")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("DELETE FROM customer", "only a SELECT"),
        ("UPDATE customer SET companyname = 'x'", "only a SELECT"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "only a SELECT"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT 1; DROP TABLE customer", "one statement"),
        ("-- SELECT\nDELETE FROM customer", "only a SELECT"),
    ],
)
def test_anything_else_is_refused(query: str, reason: str) -> None:
    with pytest.raises(QueryRefused, match=reason):
        check_select(query)


def test_values_are_rendered_as_suiteql_answers_them() -> None:
    zone = ZoneInfo("America/Los_Angeles")
    late_utc = datetime(2026, 12, 8, 3, 30, tzinfo=UTC)  # still the 7th in Los Angeles

    assert rendered(late_utc, zone) == "12/7/2026"
    assert rendered(date(2026, 1, 5)) == "1/5/2026"
    assert rendered(Decimal("205.2000")) == "205.2"
    assert rendered(Decimal("100.0000")) == "100"
    assert rendered(Decimal("0.0000")) == "0"
    assert rendered(True) == "T"
    assert rendered(42) == "42"


def test_a_refusal_naming_skus_points_at_their_lines() -> None:
    body = order_refusal(
        {"code": "PRICING_MISMATCH", "message": "prices differ", "skus": ["B", "A"]}, ["A", "B"]
    )

    assert body["status"] == 400
    assert [(d["o:errorCode"], d["o:errorPath"]) for d in body["o:errorDetails"]] == [
        ("PRICING_MISMATCH", "item.items[1].rate"),
        ("PRICING_MISMATCH", "item.items[0].rate"),
    ]


@pytest.mark.parametrize(
    ("code", "path"),
    [
        ("CREDIT_HOLD", "entity"),
        ("UNSUPPORTED_CURRENCY", "currency"),
        ("UNKNOWN_PRICE_BOOK", "item.items[0].price"),
        ("ORDER_NOT_CANCELLABLE", "orderStatus"),
    ],
)
def test_a_refusal_without_skus_points_at_the_header_field(code: str, path: str) -> None:
    body = order_refusal({"code": code, "message": "no", "skus": []}, ["A"])

    assert [(d["o:errorCode"], d["o:errorPath"]) for d in body["o:errorDetails"]] == [(code, path)]


def test_a_customer_record_is_the_books_body_over_what_it_leaves_out() -> None:
    existing = {
        "name": "Old",
        "legal_entity": "US01",
        "currency": "USD",
        "country_code": "US",
        "tax_id": "T-1",
        "duns": "123456789",
        "billing_street": None,
        "billing_city": None,
        "billing_state_province": None,
        "billing_postal_code": None,
        "billing_country_code": None,
    }

    body, unknown = customer_body(
        {
            "companyName": "New",
            "vatRegNumber": None,
            "subsidiary": {"id": "3"},
            "currency": {"id": "99"},
            "addressBook": {
                "items": [
                    {
                        "defaultBilling": True,
                        "addressBookAddress": {
                            "addr1": "1 Way",
                            "city": "Bonn",
                            "country": {"id": "DE"},
                        },
                    }
                ]
            },
            "colour": "blue",
        },
        existing,
        IDS,
    )

    assert body["name"] == "New"
    assert (body["tax_id"], body["duns"]) == (None, "123456789")
    assert (body["legal_entity"], body["currency"]) == ("DE01", "?")
    assert body["billing_address"] == {
        "street": "1 Way",
        "city": "Bonn",
        "state_province": None,
        "postal_code": None,
        "country_code": "DE",
    }
    assert unknown == ["colour"]


def test_a_sales_order_record_is_the_books_order_or_its_faults() -> None:
    record = {
        "entity": {"id": "C-1"},
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "location": {"id": "NA"},
        "memo": "corr-1",
        "item": {
            "items": [
                {"item": {"id": "A"}, "quantity": 2, "rate": 99.99, "price": {"id": "PB"}},
            ]
        },
    }

    body, faults = order_body("801X", record, IDS)
    _, missing = order_body("801Y", {"subsidiary": {"id": "9"}}, IDS)

    assert faults == []
    assert (body["external_id"], body["legal_entity"], body["currency"], body["region"]) == (
        "801X",
        "US01",
        "USD",
        "NA",
    )
    assert body["lines"][0] == {
        "line_number": 1,
        "sku": "A",
        "quantity": "2",
        "unit_price": "99.99",
        "discount_amount": "0",
        "tax_amount": "0",
    }
    assert [path for path, _ in missing] == ["subsidiary", "currency", "entity", "location", "item"]
