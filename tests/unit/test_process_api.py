"""The process API's decisions without I/O: a quote's lines priced and a customer's credit
judged by the order rules, stock against quantities, a submitted order as its order-created
event, callers and their scopes, rate limits per client, and the trace a request carries."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from process_api import logic
from process_api.models import (
    AvailabilityRequest,
    CreditAnswer,
    CreditRequest,
    OrderSubmission,
    PricingAnswer,
    PricingRequest,
)
from revsync.connectors.guard import Freshness
from revsync.contracts.events import RejectionReason, SourceSystem
from revsync.ports.erp import (
    CreditPosition,
    Customer,
    CustomerStatus,
    PriceBook,
    Product,
    StockLevel,
)
from revsync.rules.book import OrderRules
from revsync.runtime.handler import derived_event_id

FRESH = Freshness(stale=False, age_s=0.0)
RULES = OrderRules(currencies=frozenset({"USD"}), price_tolerance=Decimal("0.01"))
BOOK = PriceBook(
    "01sBOOK", "US list", "USD", "US01", {"SEN-001": Decimal("120.0000"), "VAL-001": Decimal(50)}
)
PRODUCTS = {
    sku: Product(sku, f"{sku} part", "VALVES", "EA", True, frozenset({"US01"}))
    for sku in ("SEN-001", "VAL-001")
}
CUSTOMER = Customer("C-1", "Acme", "001ACME", "US01", CustomerStatus.ACTIVE, Decimal(10_000), "USD")
POSITION = CreditPosition("C-1", CustomerStatus.ACTIVE, "USD", Decimal(10_000), Decimal(7_500))
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def quote(*lines: tuple[str, str], currency: str = "USD") -> PricingRequest:
    return PricingRequest.model_validate(
        {
            "legal_entity": "US01",
            "region": "NA",
            "currency": currency,
            "price_book_id": "01sBOOK",
            "lines": [{"sku": sku, "quantity": "2", "unit_price": price} for sku, price in lines],
        }
    )


def priced(request: PricingRequest, book: PriceBook | None = BOOK) -> PricingAnswer:
    return logic.price_quote(request, book, PRODUCTS, RULES, FRESH)


# --- pricing ---------------------------------------------------------------------------------


def test_lines_within_tolerance_are_accepted_with_their_list_price() -> None:
    answer = priced(quote(("SEN-001", "121.20"), ("VAL-001", "50")))

    assert answer.accepted
    assert (answer.reason, answer.message, answer.skus) == (None, None, [])
    first, second = answer.lines
    assert (first.line, first.accepted, first.list_price) == (1, True, Decimal("120.0000"))
    assert first.deviation == Decimal("0.01")
    assert first.tolerance == Decimal("0.01")
    assert (second.deviation, second.reason) == (Decimal(0), None)
    assert (answer.stale, answer.age_s) == (False, 0.0)


def test_a_line_off_the_price_book_names_the_erp_price_and_the_tolerance_it_breaks() -> None:
    answer = priced(quote(("SEN-001", "121.21"), ("VAL-001", "50")))

    assert not answer.accepted
    assert answer.reason is RejectionReason.PRICING_MISMATCH
    assert answer.message == "prices differ from price book 01sBOOK by more than 1%: SEN-001"
    assert answer.skus == ["SEN-001"]
    mispriced, fine = answer.lines
    assert (mispriced.accepted, mispriced.reason) == (False, RejectionReason.PRICING_MISMATCH)
    assert (mispriced.list_price, mispriced.tolerance) == (Decimal("120.0000"), Decimal("0.01"))
    assert mispriced.deviation == Decimal("0.01008333333333333333333333333")
    assert fine.accepted


def test_a_product_the_legal_entity_does_not_sell_is_named_before_any_price() -> None:
    answer = priced(quote(("PUM-404", "10"), ("SEN-001", "99")))

    assert (answer.reason, answer.skus) == (RejectionReason.UNKNOWN_PRODUCT, ["PUM-404"])
    unknown, mispriced = answer.lines
    assert (unknown.reason, unknown.list_price) == (RejectionReason.UNKNOWN_PRODUCT, None)
    assert mispriced.reason is RejectionReason.PRICING_MISMATCH


@pytest.mark.parametrize(
    ("book", "currency", "reason", "message"),
    [
        (None, "USD", RejectionReason.PRICING_MISMATCH, "price book 01sBOOK is not in the ERP"),
        (
            replace(BOOK, currency="EUR"),
            "USD",
            RejectionReason.UNSUPPORTED_CURRENCY,
            "price book 01sBOOK is in EUR, the order in USD",
        ),
        (
            BOOK,
            "EUR",
            RejectionReason.UNSUPPORTED_CURRENCY,
            "US01 does not invoice in EUR (only USD)",
        ),
    ],
    ids=["no book", "book in another currency", "currency not invoiced"],
)
def test_a_quote_no_line_of_which_can_pass_says_why_on_every_line(
    book: PriceBook | None, currency: str, reason: RejectionReason, message: str
) -> None:
    answer = priced(quote(("SEN-001", "120"), currency=currency), book)

    assert (answer.accepted, answer.reason, answer.message) == (False, reason, message)
    [line] = answer.lines
    assert (line.accepted, line.reason, line.list_price) == (False, reason, None)


def test_an_answer_from_stale_values_says_so_and_how_old() -> None:
    answer = logic.price_quote(
        quote(("SEN-001", "120")), BOOK, PRODUCTS, RULES, Freshness(stale=True, age_s=61.23456)
    )

    assert (answer.stale, answer.age_s) == (True, 61.235)


# --- credit ----------------------------------------------------------------------------------


def credit(
    amount: str = "2500",
    customer: Customer | None = CUSTOMER,
    position: CreditPosition | None = POSITION,
    **request: Any,
) -> CreditAnswer:
    asked = CreditRequest.model_validate(
        {"legal_entity": "US01", "currency": "USD", "amount": amount, "customer_id": "C-1"}
        | request
    )
    return logic.judge_credit(asked, customer, position, FRESH)


def test_an_amount_within_the_available_credit_is_approved_with_the_position() -> None:
    answer = credit("2500")

    assert (answer.decision, answer.reason, answer.message) == ("approved", None, None)
    assert (answer.customer_id, answer.currency) == ("C-1", "USD")
    assert (answer.credit_limit, answer.exposure, answer.available_credit) == (
        Decimal(10_000),
        Decimal(7_500),
        Decimal(2_500),
    )


def test_an_amount_over_the_available_credit_is_held() -> None:
    answer = credit("2500.01")

    assert (answer.decision, answer.reason) == ("held", RejectionReason.CREDIT_HOLD)
    assert answer.message == "2500.01 USD is over ERP customer C-1's available credit 2500 USD"
    assert answer.available_credit == Decimal(2_500)


@pytest.mark.parametrize(
    ("customer", "reason", "message"),
    [
        (
            replace(CUSTOMER, status=CustomerStatus.CREDIT_HOLD),
            RejectionReason.CREDIT_HOLD,
            "ERP customer C-1 is on hold",
        ),
        (
            replace(CUSTOMER, status=CustomerStatus.BLOCKED),
            RejectionReason.OTHER,
            "ERP customer C-1 is blocked",
        ),
        (
            replace(CUSTOMER, legal_entity="DE01"),
            RejectionReason.CUSTOMER_NOT_MASTERED,
            "ERP customer C-1 is mastered in DE01, not US01",
        ),
        (None, RejectionReason.CUSTOMER_NOT_MASTERED, "ERP customer C-1 does not exist"),
    ],
    ids=["on hold", "blocked", "other legal entity", "unknown"],
)
def test_a_customer_order_time_validation_would_refuse_is_held_for_the_same_reason(
    customer: Customer | None, reason: RejectionReason, message: str
) -> None:
    answer = credit("1", customer)

    assert (answer.decision, answer.reason, answer.message) == ("held", reason, message)


def test_an_account_without_an_erp_customer_is_held_as_not_mastered() -> None:
    answer = credit("1", None, None, customer_id=None, account_id="001PROSPECT")

    assert (answer.decision, answer.reason) == ("held", RejectionReason.CUSTOMER_NOT_MASTERED)
    assert answer.message == "account 001PROSPECT has no ERP customer id"
    assert (answer.customer_id, answer.available_credit) == (None, None)


def test_credit_kept_in_another_currency_is_not_compared() -> None:
    answer = credit("1", position=replace(POSITION, currency="EUR"))

    assert (answer.decision, answer.reason) == ("held", RejectionReason.UNSUPPORTED_CURRENCY)
    assert answer.message == "ERP customer C-1's credit is kept in EUR, not USD"


def test_a_customer_the_erp_has_no_credit_position_for_is_not_mastered() -> None:
    answer = credit("1", CUSTOMER, None)

    assert (answer.decision, answer.message) == ("held", "ERP customer C-1 does not exist")


def test_a_credit_request_names_the_customer_one_way_or_the_other() -> None:
    with pytest.raises(ValidationError, match="give customer_id"):
        CreditRequest.model_validate({"legal_entity": "US01", "currency": "USD", "amount": "1"})


# --- availability ----------------------------------------------------------------------------


def test_stock_is_judged_per_line_with_the_date_more_arrives_where_it_is_short() -> None:
    request = AvailabilityRequest.model_validate(
        {
            "region": "NA",
            "lines": [
                {"sku": "SEN-001", "quantity": "5"},
                {"sku": "VAL-001", "quantity": "5"},
                {"sku": "PUM-404", "quantity": "1"},
            ],
        }
    )
    levels = {
        "SEN-001": StockLevel("SEN-001", "NA", Decimal(5), date(2027, 1, 4)),
        "VAL-001": StockLevel("VAL-001", "NA", Decimal("4.5"), date(2027, 1, 4)),
        "PUM-404": None,
    }

    enough, short, unknown = logic.availability(request, levels, FRESH).lines

    assert (enough.available, enough.available_quantity, enough.available_on) == (
        True,
        Decimal(5),
        None,
    )
    assert (short.available, short.available_quantity, short.available_on) == (
        False,
        Decimal("4.5"),
        date(2027, 1, 4),
    )
    assert (unknown.known, unknown.available, unknown.available_quantity) == (False, False, None)


# --- order submission ------------------------------------------------------------------------


def submission(**changes: Any) -> OrderSubmission:
    address = {"street": "1 Harbour Road", "city": "Chicago", "country_code": "US"}
    body = {
        "channel": "webshop",
        "order_number": "WS-1001",
        "account_id": "001ACME",
        "price_book_id": "01sBOOK",
        "currency": "USD",
        "legal_entity": "US01",
        "region": "NA",
        "billing_address": address,
        "shipping_address": address,
        "lines": [
            {
                "sku": "SEN-001",
                "product_name": "Pressure sensor",
                "product_line": "SENSORS",
                "quantity": "3",
                "unit_price": "120",
                "discount_amount": "10",
                "tax_amount": "28.80",
            },
            {
                "sku": "VAL-001",
                "product_name": "Valve",
                "product_line": "VALVES",
                "quantity": "1",
                "unit_price": "50",
            },
        ],
    }
    return OrderSubmission.model_validate(body | changes)


def test_a_submission_becomes_order_created_with_totals_from_its_lines() -> None:
    order = logic.submitted_order(submission(), "corr-ws-1001", NOW)

    assert (order.crm_order_id, order.crm_order_number) == ("webshop:WS-1001", "WS-1001")
    assert (order.crm_account_id, order.erp_customer_id) == ("001ACME", None)
    assert [(line.line_number, line.line_total) for line in order.lines] == [
        (1, Decimal("350.0000")),
        (2, Decimal("50.0000")),
    ]
    assert order.lines[0].crm_line_id == "webshop:WS-1001/1"
    assert (order.subtotal, order.discount_total, order.tax_total, order.grand_total) == (
        Decimal("400.0000"),
        Decimal("10.0000"),
        Decimal("28.8000"),
        Decimal("428.8000"),
    )
    envelope = order.envelope
    assert envelope.source_system is SourceSystem.REVSYNC
    assert (envelope.correlation_id, envelope.causation_id) == ("corr-ws-1001", None)
    assert envelope.event_id == derived_event_id("webshop:WS-1001", order.event_type)
    assert order.ordered_at == envelope.occurred_at == NOW
    answer = logic.submission_answer(order)
    assert (answer.order_id, answer.event_id) == ("webshop:WS-1001", str(envelope.event_id))


def test_a_line_whose_discount_exceeds_it_is_refused_naming_the_line() -> None:
    lines = [submission().lines[1].model_dump(mode="json") | {"discount_amount": "50.01"}]

    with pytest.raises(ValidationError) as refused:
        submission(lines=lines)

    assert refused.value.errors()[0]["loc"] == ("lines", 0)


def test_an_order_too_large_for_the_contract_is_refused_naming_the_field() -> None:
    huge = "99999999999999"
    lines = [submission().lines[1].model_dump(mode="json") | {"quantity": huge, "unit_price": huge}]

    with pytest.raises(ValidationError) as refused:
        logic.submitted_order(submission(lines=lines), "corr", NOW)

    assert refused.value.errors()[0]["loc"] == ("lines", 0, "line_total")


def test_the_fingerprint_is_the_submission_as_understood() -> None:
    same = logic.fingerprint(submission())

    assert logic.fingerprint(submission()) == same
    assert logic.fingerprint(submission(purchase_order_number="PO-9")) != same


# --- callers, rate limits, traces ------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "client", "scopes"),
    [
        ({"sub": "s", "client_id": "shop", "scope": "pricing:read orders:write"}, "shop", 2),
        ({"sub": "s", "azp": "portal", "scp": ["credit:read", 7]}, "portal", 1),
        ({"sub": "bot", "scope": 42}, "bot", 0),
    ],
)
def test_a_caller_is_its_client_and_the_scopes_granted_it(
    claims: dict[str, Any], client: str, scopes: int
) -> None:
    who = logic.caller(claims)

    assert (who.client_id, len(who.scopes)) == (client, scopes)


def test_a_client_may_burst_then_waits_for_its_bucket_to_refill() -> None:
    limits = logic.RateLimits(rate_per_s=2, burst=3)

    assert [limits.take("shop", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limits.take("shop", 100.0) == 0.5
    assert limits.take("portal", 100.0) == 0.0, "each client has its own bucket"
    assert limits.take("shop", 100.25) == 0.25
    assert limits.take("shop", 100.5) == 0.0


def test_quiet_clients_are_forgotten_once_too_many_are_tracked() -> None:
    limits = logic.RateLimits(rate_per_s=1, burst=1, max_clients=2)
    for client in ("a", "b", "c"):
        limits.take(client, 0.0)

    limits.take("d", 10.0)  # a, b and c have refilled: forgotten

    assert limits.take("a", 10.0) == 0.0
    assert limits.take("d", 10.0) == 1.0


@pytest.mark.parametrize(
    ("given", "kept"),
    [("corr-8015g00000AbCdE", True), ("x" * 129, False), ("bad id", False), (None, False)],
)
def test_a_sound_correlation_id_is_kept_and_any_other_replaced(
    given: str | None, kept: bool
) -> None:
    assert logic.correlation_id(given, "new") == (given if kept else "new")


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("given", "answered"),
    [
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01", f"00-{TRACE_ID}-1111111111111111-01"),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-00", f"00-{TRACE_ID}-1111111111111111-00"),
        (None, "00-ffffffffffffffffffffffffffffffff-1111111111111111-01"),
        (
            f"00-{'0' * 32}-00f067aa0ba902b7-01",
            "00-ffffffffffffffffffffffffffffffff-1111111111111111-01",
        ),
        (
            f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",
            "00-ffffffffffffffffffffffffffffffff-1111111111111111-01",
        ),
        ("01-garbage", "00-ffffffffffffffffffffffffffffffff-1111111111111111-01"),
    ],
    ids=["continued", "not sampled", "none", "zero trace", "upper case", "malformed"],
)
def test_a_trace_is_continued_with_this_span_as_the_parent_or_begun(
    given: str | None, answered: str
) -> None:
    assert logic.traceparent(given, "f" * 32, "1" * 16) == answered
