"""The ERP port: what revsync needs from an ERP, in the domain's own terms.

The master data an order is validated against (customers, products, price books), the sales
order revsync books and cancels, and the refusals a caller must tell apart. Adapters
(:mod:`revsync.connectors.erp` for the reference REST API) translate their wire into these.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from revsync.contracts.events import CreditCheckOutcome, PricingOutcome
from revsync.errors import BusinessRuleViolation, DependencyNotReady, ErrorClass, RevsyncError


class CustomerStatus(StrEnum):
    """Whether the ERP will take orders for a customer."""

    ACTIVE = "active"
    """Orders are accepted, subject to the credit check."""
    BLOCKED = "blocked"
    """No orders at all (the account is closed or under review)."""
    CREDIT_HOLD = "credit_hold"
    """No new orders until receivables are settled."""


class SalesOrderStatus(StrEnum):
    """Where a sales order is in the ERP's order-to-cash cycle."""

    OPEN = "open"
    INVOICED = "invoiced"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    crm_account_id: str | None
    """The CRM account it is mastered from: its external id in the ERP."""
    legal_entity: str
    status: CustomerStatus
    credit_limit: Decimal
    currency: str
    number: str | None = None
    """Its number in the ERP, as people quote it."""
    payment_terms: str | None = None
    blocks: tuple[str, ...] = ()
    """Blocks set in the ERP (order, delivery, billing)."""
    tax_id: str | None = None
    duns: str | None = None
    country_code: str | None = None
    billing_address: Address | None = None


@dataclass(frozen=True)
class CustomerDraft:
    """What revsync writes to the ERP customer of a CRM account: the fields the CRM owns
    (``schemas/ownership.yaml``), never one the ERP owns."""

    crm_account_id: str
    name: str
    legal_entity: str
    currency: str
    country_code: str
    tax_id: str | None = None
    duns: str | None = None
    billing_address: Address | None = None


LEGAL_FORMS = frozenset(
    {
        "inc", "incorporated", "llc", "ltd", "limited", "gmbh", "ag", "sa", "sas", "sarl",
        "bv", "nv", "plc", "corp", "corporation", "co", "company", "srl", "spa", "oy", "ab",
        "kg", "se",
    }
)  # fmt: skip
"""Legal-form words a company name is compared without."""


def normalised_name(name: str) -> str:
    """A company name as :class:`CustomerQuery` compares it: without case, accents,
    punctuation, spacing and trailing legal forms, however spelled ("ACME Industrial, Inc."
    and "Acme Industrial Inc" are one, "S.A." and "S. à r.l." are legal forms). Empty for a
    name of punctuation alone."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    words = [word for word in re.split(r"[^a-z0-9]+", plain.replace(".", "")) if word]
    while True:
        form = next(
            (size for size in (1, 2, 3) if "".join(words[-size:]) in LEGAL_FORMS),
            None,
        )
        if form is None or form >= len(words):
            return "".join(words)
        del words[-form:]


def normalised_identifier(value: str | None) -> str | None:
    """A tax id or DUNS number as :class:`CustomerQuery` compares it: without spacing,
    dashes, dots or case ("12-3456789" and "12 3456789" are one); None when nothing is left."""
    if not value:
        return None
    return re.sub(r"[^0-9A-Za-z]", "", value).upper() or None


@dataclass(frozen=True)
class CustomerQuery:
    """Who might already be this customer: any of a tax id, a DUNS number, or a name in a
    country (equal ignoring case, punctuation, spacing and legal-form suffixes). Tax ids and
    DUNS numbers are equal ignoring spacing, dashes, dots and case. A name is only looked
    for in a country, so the two come together or not at all."""

    tax_id: str | None = None
    duns: str | None = None
    name: str | None = None
    country_code: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) != (self.country_code is None):
            raise ValueError("a customer query gives a name and a country_code together")

    def matches(self, customer: Customer) -> bool:
        """Whether ``customer`` meets any criterion of this query."""
        tax_id, duns = normalised_identifier(self.tax_id), normalised_identifier(self.duns)
        if tax_id is not None and tax_id == normalised_identifier(customer.tax_id):
            return True
        if duns is not None and duns == normalised_identifier(customer.duns):
            return True
        if self.name is None or self.country_code is None:
            return False
        name = normalised_name(self.name)
        return (
            bool(name)
            and name == normalised_name(customer.name)
            and self.country_code.upper() == (customer.country_code or "").upper()
        )


@dataclass(frozen=True)
class CustomerUpsert:
    customer: Customer
    created: bool


@dataclass(frozen=True)
class CreditPosition:
    """A customer's credit as the ERP sees it now."""

    customer_id: str
    status: CustomerStatus
    currency: str
    credit_limit: Decimal
    exposure: Decimal
    """Open (not yet invoiced) orders and unpaid invoices."""

    @property
    def available(self) -> Decimal:
        return self.credit_limit - self.exposure


@dataclass(frozen=True)
class StockLevel:
    sku: str
    region: str
    quantity: Decimal
    """Available to promise now."""
    available_on: date | None
    """When more arrives (None: nothing is on order)."""


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    product_line: str
    unit_of_measure: str
    active: bool
    legal_entities: frozenset[str]
    """Where it is sold; empty: by every legal entity."""

    def sold_by(self, legal_entity: str) -> bool:
        return self.active and (not self.legal_entities or legal_entity in self.legal_entities)


@dataclass(frozen=True)
class PriceBook:
    id: str
    name: str
    currency: str
    legal_entity: str
    prices: Mapping[str, Decimal]
    """Unit price by SKU."""


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    state_province: str | None
    postal_code: str | None
    country_code: str


@dataclass(frozen=True)
class SalesOrderLine:
    line_number: int
    sku: str
    quantity: Decimal
    unit_price: Decimal
    discount_amount: Decimal
    tax_amount: Decimal


@dataclass(frozen=True)
class SalesOrderRequest:
    """What revsync asks the ERP to book; ``external_id`` is the CRM order id."""

    external_id: str
    customer_id: str
    currency: str
    price_book_id: str
    legal_entity: str
    region: str
    po_number: str | None
    requested_delivery_date: date | None
    ship_to: Address
    lines: tuple[SalesOrderLine, ...]
    correlation_id: str


@dataclass(frozen=True)
class SalesOrder:
    """A sales order as the ERP booked it."""

    id: str
    number: str
    external_id: str
    customer_id: str
    status: SalesOrderStatus
    currency: str
    subtotal: Decimal
    tax_total: Decimal
    grand_total: Decimal
    credit_check: CreditCheckOutcome
    pricing_outcome: PricingOutcome
    created_at: datetime


class ErpRejected(BusinessRuleViolation):
    """The ERP refused the order or the customer for a business reason; ``code`` says which
    (CREDIT_HOLD, CREDIT_LIMIT_EXCEEDED, UNKNOWN_PRODUCT, PRICING_MISMATCH, CUSTOMER_BLOCKED,
    ORDER_NOT_CANCELLABLE, INVALID_CUSTOMER, ...), ``skus`` names the offending products and
    ``field`` the offending field of a customer, if any.

    ``message`` is the ERP's own reason, for the person the refusal is reported to (the CRM
    user who placed the order). It may quote the order's values, so the exception's text,
    which may be logged or dead-lettered, leaves it out."""

    def __init__(
        self, code: str, message: str, skus: tuple[str, ...] = (), field: str | None = None
    ) -> None:
        detail = f" (skus: {', '.join(skus)})" if skus else ""
        detail += f" (field: {field})" if field else ""
        super().__init__(f"erp rejected: {code}{detail}")
        self.code = code
        self.message = message
        self.skus = skus
        self.field = field


class IdempotencyConflict(RevsyncError):
    """The idempotency key was already used with a different request body.

    Unknown, not a business rule: keys derive from the causing event, so this means revsync
    built two different requests from one event, which needs a person, not a retry.
    """

    error_class = ErrorClass.UNKNOWN


class ErpOrderMissing(DependencyNotReady):
    """No sales order has this external id (yet): the create may still be on its way."""


class ErpPort(Protocol):
    """What revsync needs from the ERP: master data to validate against, sales orders, the
    customers it masters from CRM accounts, and the credit and stock a quote asks about.

    Amounts come back at the ERP's scale of four decimal places. Every failure an adapter's
    transport may add (timeouts, throttling, refused credentials) is a
    :class:`~revsync.errors.TransientError`; the ones below are the ERP's own answers.
    """

    def customer(self, customer_id: str) -> Customer | None:
        """The customer, or None when the ERP has no such customer."""
        ...

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        """Products by SKU, inactive ones included; unknown SKUs are absent."""
        ...

    def price_book(self, price_book_id: str) -> PriceBook | None:
        """The price book with its every price, or None when the ERP has no such book."""
        ...

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        """Books the order once: a retry with the same key, or a create for an external id
        that already has an order, returns that order.

        Raises :class:`ErpRejected` when the business refuses it (nothing is booked and the
        key stays unused), :class:`IdempotencyConflict` when the key was used with another
        request.
        """
        ...

    def cancel_sales_order(self, external_id: str, reason: str, idempotency_key: str) -> SalesOrder:
        """Cancels the order for ``external_id``; an order already cancelled is returned as it
        is. Raises :class:`ErpOrderMissing` when no order has the external id,
        :class:`ErpRejected` (``ORDER_NOT_CANCELLABLE``) once it is invoiced or shipped, and
        :class:`IdempotencyConflict` when the key was used with another reason."""
        ...

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        """The customer mastered from CRM account ``crm_account_id`` (its external id), or
        None."""
        ...

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        """Customers matching any part of ``query``: candidates for a duplicate."""
        ...

    def upsert_customer(self, draft: CustomerDraft, idempotency_key: str) -> CustomerUpsert:
        """Creates the customer for ``draft.crm_account_id``, or updates the fields it
        carries on the one that exists (by external id, so a retry never creates a second).
        Raises :class:`ErpRejected` when the ERP refuses it (``INVALID_CUSTOMER`` with the
        field named)."""
        ...

    def credit(self, customer_id: str) -> CreditPosition | None:
        """The customer's credit position now, or None when the ERP has no such customer."""
        ...

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        """Stock available to promise in ``region`` by SKU; unknown SKUs are absent."""
        ...

    def close(self) -> None: ...
