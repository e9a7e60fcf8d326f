"""Whether the ERP may take an order, rule by rule: the customer, the currency and price book,
each line's product and price, the paperwork for automatic entry. order_sync judges a whole
order with :func:`validate` when it places it; the process API judges a quote's lines and its
customer with the same checks while the quote is priced, so a quote that passes is an order
that passes. Each check returns the :class:`Rejection` of the rule broken, or None; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from revsync.contracts.events import OrderCreated, RejectionReason
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product
from revsync.rules.book import OrderRules


@dataclass(frozen=True)
class Rejection:
    """Why the ERP may not take the order: a reason code, a message for the person who entered
    it (never a customer's data beyond ids), and the offending products."""

    reason: RejectionReason
    message: str
    skus: tuple[str, ...] = ()


class PricedLine(Protocol):
    """What the price check needs of a line, an order's or a quote's."""

    @property
    def sku(self) -> str: ...

    @property
    def unit_price(self) -> Decimal: ...


@dataclass(frozen=True)
class LineVerdict:
    """One line against the price book: accepted (``reason`` None), or the rule it breaks
    (``UNKNOWN_PRODUCT``, ``PRICING_MISMATCH``)."""

    sku: str
    unit_price: Decimal
    list_price: Decimal | None
    """The price book's unit price; None where the book does not list the product."""
    reason: RejectionReason | None

    @property
    def deviation(self) -> Decimal | None:
        """How far the price is from the list price, relative to it; None without a list
        price to be relative to (none, or a free product)."""
        if not self.list_price:
            return None
        return abs(self.unit_price - self.list_price) / self.list_price


# --- the customer ------------------------------------------------------------------------------


def unmastered(crm_account_id: str) -> Rejection:
    """An account the ERP has no customer for (yet)."""
    return Rejection(
        RejectionReason.CUSTOMER_NOT_MASTERED, f"account {crm_account_id} has no ERP customer id"
    )


def customer_rejection(
    customer_id: str, customer: Customer | None, legal_entity: str, currency: str
) -> Rejection | None:
    """The ERP customer exists, is mastered in the order's legal entity, takes orders, and is
    billed in the order's currency (the ERPs refuse an order in another: the customer's
    credit is kept in its own)."""
    if customer is None:
        return Rejection(
            RejectionReason.CUSTOMER_NOT_MASTERED, f"ERP customer {customer_id} does not exist"
        )
    if customer.legal_entity != legal_entity:
        return Rejection(
            RejectionReason.CUSTOMER_NOT_MASTERED,
            f"ERP customer {customer.id} is mastered in {customer.legal_entity}, "
            f"not {legal_entity}",
        )
    if customer.status is CustomerStatus.CREDIT_HOLD:
        return Rejection(RejectionReason.CREDIT_HOLD, f"ERP customer {customer.id} is on hold")
    if customer.status is CustomerStatus.BLOCKED:
        return Rejection(RejectionReason.OTHER, f"ERP customer {customer.id} is blocked")
    if customer.currency != currency:
        return Rejection(
            RejectionReason.UNSUPPORTED_CURRENCY,
            f"ERP customer {customer.id} is billed in {customer.currency}, not {currency}",
        )
    return None


# --- currency, price book, lines ---------------------------------------------------------------


def price_book_rejection(
    currency: str,
    legal_entity: str,
    price_book_id: str,
    price_book: PriceBook | None,
    rules: OrderRules,
) -> Rejection | None:
    """The legal entity invoices in the currency, and the ERP has the price book in it."""
    if currency not in rules.currencies:
        allowed = ", ".join(sorted(rules.currencies))
        return Rejection(
            RejectionReason.UNSUPPORTED_CURRENCY,
            f"{legal_entity} does not invoice in {currency} (only {allowed})",
        )
    if price_book is None:
        return Rejection(
            RejectionReason.PRICING_MISMATCH, f"price book {price_book_id} is not in the ERP"
        )
    if price_book.currency != currency:
        return Rejection(
            RejectionReason.UNSUPPORTED_CURRENCY,
            f"price book {price_book.id} is in {price_book.currency}, the order in {currency}",
        )
    return None


def line_verdicts(
    lines: Sequence[PricedLine],
    prices: Mapping[str, Decimal],
    products: Mapping[str, Product],
    legal_entity: str,
    rules: OrderRules,
) -> list[LineVerdict]:
    """Each line: a product the legal entity sells, at a price within the tolerance of the
    price book's (``prices``, by SKU)."""
    verdicts = []
    for line in lines:
        list_price = prices.get(line.sku)
        reason = None
        if line.sku not in products or not products[line.sku].sold_by(legal_entity):
            reason = RejectionReason.UNKNOWN_PRODUCT
        elif not price_agrees(line.unit_price, list_price, rules.price_tolerance):
            reason = RejectionReason.PRICING_MISMATCH
        verdicts.append(LineVerdict(line.sku, line.unit_price, list_price, reason))
    return verdicts


def lines_rejection(
    verdicts: Sequence[LineVerdict], price_book: PriceBook, legal_entity: str, rules: OrderRules
) -> Rejection | None:
    """Products first (every unsold one named), then prices (every mispriced one named)."""
    unknown = tuple(v.sku for v in verdicts if v.reason is RejectionReason.UNKNOWN_PRODUCT)
    if unknown:
        return Rejection(
            RejectionReason.UNKNOWN_PRODUCT,
            f"not sold by {legal_entity}: {', '.join(unknown)}",
            unknown,
        )
    mispriced = tuple(v.sku for v in verdicts if v.reason is RejectionReason.PRICING_MISMATCH)
    if mispriced:
        return Rejection(
            RejectionReason.PRICING_MISMATCH,
            f"prices differ from price book {price_book.id} by more than "
            f"{rules.price_tolerance:%}: {', '.join(mispriced)}",
            mispriced,
        )
    return None


def price_agrees(price: Decimal, list_price: Decimal | None, tolerance: Decimal) -> bool:
    """Within ``tolerance`` of the list price, relative to it; a free product only for free."""
    if list_price is None:
        return False
    if list_price == 0:
        return price == 0
    return abs(price - list_price) / list_price <= tolerance


# --- the whole order ---------------------------------------------------------------------------


def entry_rejection(order: OrderCreated, rules: OrderRules) -> Rejection | None:
    """What automatic entry asks beyond customer and prices: a PO number where the legal
    entity requires one, and a grand total within the limit."""
    if rules.require_po_number and not order.purchase_order_number:
        return Rejection(
            RejectionReason.INVALID_ORDER, f"{order.legal_entity} orders need a PO number"
        )
    if rules.max_order_total is not None and order.grand_total > rules.max_order_total:
        return Rejection(
            RejectionReason.INVALID_ORDER,
            f"grand total {order.grand_total} {order.currency} is over the "
            f"{rules.max_order_total} limit for automatic entry",
        )
    return None


def validate(
    order: OrderCreated,
    customer: Customer | None,
    products: Mapping[str, Product],
    price_book: PriceBook | None,
    rules: OrderRules,
) -> Rejection | None:
    """Whether the ERP may take the order; the first rule it breaks, if any."""
    if order.erp_customer_id is None:
        return unmastered(order.crm_account_id)
    rejection = customer_rejection(
        order.erp_customer_id, customer, order.legal_entity, order.currency
    )
    if rejection is None:
        rejection = price_book_rejection(
            order.currency, order.legal_entity, order.price_book_id, price_book, rules
        )
    if rejection is None and price_book is not None:
        entity = order.legal_entity
        verdicts = line_verdicts(order.lines, price_book.prices, products, entity, rules)
        rejection = lines_rejection(verdicts, price_book, entity, rules)
    return rejection or entry_rejection(order, rules)


# --- the ERP's own refusals --------------------------------------------------------------------

ERP_REASONS = {
    "CREDIT_HOLD": RejectionReason.CREDIT_HOLD,
    "CREDIT_LIMIT_EXCEEDED": RejectionReason.CREDIT_HOLD,
    "UNKNOWN_PRODUCT": RejectionReason.UNKNOWN_PRODUCT,
    "PRICING_MISMATCH": RejectionReason.PRICING_MISMATCH,
    "CUSTOMER_BLOCKED": RejectionReason.OTHER,
    "CUSTOMER_NOT_MASTERED": RejectionReason.CUSTOMER_NOT_MASTERED,
    "UNSUPPORTED_CURRENCY": RejectionReason.UNSUPPORTED_CURRENCY,
    "UNKNOWN_PRICE_BOOK": RejectionReason.PRICING_MISMATCH,
    "INVALID_ORDER": RejectionReason.INVALID_ORDER,
}
"""The ERP's refusal codes as rejection reasons; any other code is ``OTHER``."""


def erp_rejection(code: str, message: str, skus: Sequence[str]) -> Rejection:
    """The ERP's own refusal (it checks credit, which revsync cannot) as a rejection."""
    reason = ERP_REASONS.get(code, RejectionReason.OTHER)
    return Rejection(reason, f"the ERP refused the order ({code}): {message}", tuple(skus))
