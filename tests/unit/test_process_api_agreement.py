"""One source of truth: every case of order_sync's rule tests (tests/unit/test_order_sync.py,
each call its tests make to order-time validation, parametrized ones once per parameter) put
to the process API's pricing and credit answers as a quote of the same order. Where order-time
validation rejects the order for its customer (its currency among them), the credit answer
holds it for the same reason in the same words; for its prices, products or currency, the
pricing answer refuses it the same way, offending products and all; where the order passes (or
breaks only a rule a quote is not asked about: a PO number, the limit for automatic entry),
both answers pass."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import test_order_sync

from process_api import logic
from process_api.models import CreditAnswer, CreditRequest, PricingAnswer, PricingRequest
from revsync.connectors.guard import Freshness
from revsync.contracts.events import OrderCreated, RejectionReason
from revsync.ports.erp import CreditPosition, Customer, PriceBook, Product
from revsync.rules import checks
from revsync.rules.book import OrderRules

FRESH = Freshness(stale=False, age_s=0.0)
CUSTOMER_REASONS = {
    RejectionReason.CUSTOMER_NOT_MASTERED,
    RejectionReason.CREDIT_HOLD,
    RejectionReason.OTHER,
}
PRICING_REASONS = {
    RejectionReason.UNSUPPORTED_CURRENCY,
    RejectionReason.PRICING_MISMATCH,
    RejectionReason.UNKNOWN_PRODUCT,
}
NOT_QUOTED = {RejectionReason.INVALID_ORDER}
"""Rules of automatic entry (a PO number, a maximum total) that no quote answer covers."""


@dataclass(frozen=True)
class Case:
    test: str
    order: OrderCreated
    customer: Customer | None
    products: Mapping[str, Product]
    price_book: PriceBook | None
    rules: OrderRules
    verdict: checks.Rejection | None


def rule_tests() -> Iterator[tuple[str, Callable[..., None], dict[str, Any]]]:
    """Each test of order_sync's that judges an order, with each of its parametrizations."""
    for name, test in inspect.getmembers(test_order_sync, inspect.isfunction):
        if not name.startswith("test_") or "judge" not in test.__code__.co_names:
            continue
        grids = []
        for mark in getattr(test, "pytestmark", []):
            if mark.name != "parametrize":
                continue
            names, values = mark.args[0], mark.args[1]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
            rows = [v if len(names) > 1 else (v,) for v in values]
            grids.append([dict(zip(names, row, strict=True)) for row in rows])
        for combination in itertools.product(*grids):
            yield name, test, {k: v for part in combination for k, v in part.items()}


def cases() -> list[Case]:
    """Each call order_sync's rule tests make to order-time validation, and its verdict."""
    recorded: list[Case] = []
    validate = checks.validate
    with pytest.MonkeyPatch.context() as patch:
        for name, test, arguments in rule_tests():

            def recording(
                order: OrderCreated,
                customer: Customer | None,
                products: Mapping[str, Product],
                price_book: PriceBook | None,
                rules: OrderRules,
                name: str = name,
            ) -> checks.Rejection | None:
                verdict = validate(order, customer, products, price_book, rules)
                recorded.append(Case(name, order, customer, products, price_book, rules, verdict))
                return verdict

            patch.setattr(checks, "validate", recording)
            test(**arguments)
    return recorded


CASES = cases()


def quoted(case: Case) -> tuple[PricingAnswer, CreditAnswer]:
    """The process API's answers to a quote of the case's order, its master data as the ERP
    would give it (the customer's exposure nil)."""
    order = case.order
    quote = PricingRequest.model_validate(
        {
            "legal_entity": order.legal_entity,
            "region": order.region,
            "currency": order.currency,
            "price_book_id": order.price_book_id,
            "lines": [
                {
                    "sku": line.sku,
                    "quantity": format(line.quantity, "f"),
                    "unit_price": format(line.unit_price, "f"),
                }
                for line in order.lines
            ],
        }
    )
    credit = CreditRequest.model_validate(
        {
            "legal_entity": order.legal_entity,
            "currency": order.currency,
            "amount": format(order.grand_total, "f"),
            "customer_id": order.erp_customer_id,
            "account_id": order.crm_account_id,
        }
    )
    customer = case.customer
    position = (
        CreditPosition(
            customer.id, customer.status, customer.currency, customer.credit_limit, Decimal(0)
        )
        if customer
        else None
    )
    return (
        logic.price_quote(quote, case.price_book, case.products, case.rules, FRESH),
        logic.judge_credit(credit, customer, position, FRESH),
    )


def customer_verdict(case: Case) -> checks.Rejection | None:
    """What order-time validation says of the case's customer alone (its currency too)."""
    order = case.order
    if order.erp_customer_id is None:
        return None
    return checks.customer_rejection(
        order.erp_customer_id, case.customer, order.legal_entity, order.currency
    )


def test_every_rule_test_of_order_sync_is_a_case() -> None:
    assert len(CASES) >= 30
    assert {case.verdict.reason for case in CASES if case.verdict} == (
        CUSTOMER_REASONS | PRICING_REASONS | NOT_QUOTED
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{n}-{c.test}" for n, c in enumerate(CASES)])
def test_the_quote_answers_agree_with_order_time_validation(case: Case) -> None:
    pricing, credit = quoted(case)
    verdict = case.verdict

    if verdict is None or verdict.reason in NOT_QUOTED:
        assert pricing.accepted, pricing.message
        assert credit.decision == "approved", credit.message
    elif verdict.reason in CUSTOMER_REASONS or verdict == customer_verdict(case):
        assert (credit.decision, credit.reason, credit.message) == (
            "held",
            verdict.reason,
            verdict.message,
        )
    else:
        assert (pricing.accepted, pricing.reason, pricing.message, tuple(pricing.skus)) == (
            False,
            verdict.reason,
            verdict.message,
            verdict.skus,
        )
        assert credit.decision == "approved", "the customer passed order-time validation"
