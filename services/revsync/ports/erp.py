"""The ERP port: what revsync needs from an ERP, in the domain's own terms.

The master data an order is validated against (customers, products, price books), the sales
order revsync books and cancels, and the refusals a caller must tell apart. Adapters
(:mod:`revsync.connectors.erp` for the reference REST API) translate their wire into these.
"""

from __future__ import annotations

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
    legal_entity: str
    status: CustomerStatus
    credit_limit: Decimal
    currency: str


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
    """The ERP refused the order for a business reason; ``code`` says which (CREDIT_HOLD,
    CREDIT_LIMIT_EXCEEDED, UNKNOWN_PRODUCT, PRICING_MISMATCH, CUSTOMER_BLOCKED,
    ORDER_NOT_CANCELLABLE, ...) and ``skus`` names the offending products, if any.

    ``message`` is the ERP's own reason, for the person the refusal is reported to (the CRM
    user who placed the order). It may quote the order's values, so the exception's text,
    which may be logged or dead-lettered, leaves it out."""

    def __init__(self, code: str, message: str, skus: tuple[str, ...] = ()) -> None:
        detail = f" (skus: {', '.join(skus)})" if skus else ""
        super().__init__(f"erp rejected: {code}{detail}")
        self.code = code
        self.message = message
        self.skus = skus


class IdempotencyConflict(RevsyncError):
    """The idempotency key was already used with a different request body.

    Unknown, not a business rule: keys derive from the causing event, so this means revsync
    built two different requests from one event, which needs a person, not a retry.
    """

    error_class = ErrorClass.UNKNOWN


class ErpOrderMissing(DependencyNotReady):
    """No sales order has this external id (yet): the create may still be on its way."""


class ErpPort(Protocol):
    """What revsync needs from the ERP: master data to validate against, and sales orders.

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

    def close(self) -> None: ...
