"""The ERP port's own rules, whatever the adapter: who a customer query matches, and what a
refusal tells where it is logged."""

from __future__ import annotations

from decimal import Decimal

import pytest

from leaks import told
from revsync.ports.erp import (
    Customer,
    CustomerQuery,
    CustomerStatus,
    ErpRejected,
    normalised_identifier,
    normalised_name,
)

CUSTOMER = Customer(
    "C-100042",
    "Müller Maschinenbau GmbH",
    None,
    "DE01",
    CustomerStatus.ACTIVE,
    Decimal(45_000),
    "EUR",
    tax_id="DE 123 456 789",
    duns="15-048-3782",
    country_code="DE",
)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Acme Industrial, Inc.", "ACME industrial inc"),
        ("Müller Maschinenbau GmbH", "Muller Maschinenbau"),
        ("Smith & Sons Ltd.", "smith sons limited"),
        ("Société Générale S.A.", "societe generale"),
        ("Banque Lux S. à r.l.", "banque lux"),
        ("Acme Co Corp", "Acme"),
    ],
)
def test_names_compare_without_case_accents_punctuation_or_legal_forms(
    one: str, other: str
) -> None:
    assert normalised_name(one) == normalised_name(other)


def test_a_name_keeps_a_legal_form_that_is_all_of_it_or_not_at_its_end() -> None:
    assert normalised_name("Co") == "co"
    assert normalised_name("AG Holdings") == "agholdings"
    assert normalised_name("Acme Industries") != normalised_name("Acme Industrial")
    assert normalised_name("...") == ""


@pytest.mark.parametrize(
    ("value", "normalised"),
    [("12-3456789", "123456789"), ("de 123.456/789", "DE123456789"), ("--", None), (None, None)],
)
def test_identifiers_compare_without_spacing_dashes_dots_or_case(
    value: str | None, normalised: str | None
) -> None:
    assert normalised_identifier(value) == normalised


@pytest.mark.parametrize(
    "query",
    [
        CustomerQuery(tax_id="de123456789"),
        CustomerQuery(duns="150483782"),
        CustomerQuery(name="MULLER MASCHINENBAU AG", country_code="de"),
        CustomerQuery(tax_id="XX1", duns="15 048 3782"),
    ],
    ids=["tax-id", "duns", "name-in-country", "any-criterion"],
)
def test_a_query_matches_a_customer_by_any_criterion(query: CustomerQuery) -> None:
    assert query.matches(CUSTOMER)


@pytest.mark.parametrize(
    "query",
    [
        CustomerQuery(),
        CustomerQuery(tax_id="DE999"),
        CustomerQuery(name="Muller Maschinenbau", country_code="AT"),
        CustomerQuery(name="...", country_code="DE"),
        CustomerQuery(tax_id="--"),
    ],
    ids=["nothing", "other-tax-id", "other-country", "no-name-left", "no-tax-id-left"],
)
def test_a_query_matches_nothing_else(query: CustomerQuery) -> None:
    assert not query.matches(CUSTOMER)
    assert not query.matches(
        Customer("C-1", "...", None, "DE01", CUSTOMER.status, Decimal(0), "EUR")
    )


@pytest.mark.parametrize(
    "half", [{"name": "Acme"}, {"country_code": "US"}], ids=["name", "country"]
)
def test_a_name_and_its_country_come_together(half: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="name and a country_code together"):
        CustomerQuery(tax_id="12-3456789", **half)


def test_a_refusal_names_its_code_skus_and_field_but_never_the_erps_message() -> None:
    refused = ErpRejected("INVALID_CUSTOMER", "tax id DE 123 456 789 is taken", field="tax_id")
    order = ErpRejected("UNKNOWN_PRODUCT", "no such product", ("SKU-1",))

    assert str(refused) == "erp rejected: INVALID_CUSTOMER (field: tax_id)"
    assert "123 456" not in told(refused)
    assert str(order) == "erp rejected: UNKNOWN_PRODUCT (skus: SKU-1)"
    assert order.field is None
