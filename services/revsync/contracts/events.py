"""Typed order-to-cash events: one pydantic model per Avro contract, with business validation.

A test holds each model and its ``.avsc`` to the same fields, so the two cannot drift.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

import pycountry
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCALE = Decimal("0.0001")
MONEY_ARITHMETIC = Context(prec=40, rounding=ROUND_HALF_EVEN)
"""Exact for the product of two decimal(18,4) amounts, up to 36 digits: the default context's
28 would round it, and refuse to quantize it to 4 places."""
INT_MAX = 2**31 - 1
"""The largest Avro int."""


_CURRENCIES = frozenset(currency.alpha_3.lower() for currency in pycountry.currencies)
_COUNTRIES = frozenset(country.alpha_2.lower() for country in pycountry.countries)
"""ISO 4217 and 3166-1 codes, matched without regard to case as pycountry matches them."""


def _iso_4217(code: str) -> str:
    if code.lower() not in _CURRENCIES:
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


def _iso_3166(code: str) -> str:
    if code.lower() not in _COUNTRIES:
        raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
    return code


def _unicode(text: str) -> str:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{text!r} holds a lone surrogate: not Unicode text") from None
    return text


def _utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is outside the years 1 to 9999 in UTC") from None


# Decimal(18, 4), as in the schemas. Amounts are never floats.
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=4, allow_inf_nan=False)]
NonNegativeMoney = Annotated[Money, Field(ge=0)]
Quantity = Annotated[Decimal, Field(max_digits=18, decimal_places=4, gt=0, allow_inf_nan=False)]
CurrencyCode = Annotated[str, AfterValidator(_iso_4217)]
CountryCode = Annotated[str, AfterValidator(_iso_3166)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Str = Annotated[str, AfterValidator(_unicode)]
"""Text Avro can carry (UTF-8). A plain ``str`` lets a lone surrogate (U+D800 to U+DFFF)
through, and the event could then never be encoded; a constrained one, like Text, refuses it."""
Text = Annotated[str, Field(min_length=1)]


def money(value: Decimal) -> Decimal:
    """Rounds to the contracts' scale of 4 decimal places (banker's rounding). Raises
    ValueError for an amount that is not finite or too large to round exactly."""
    try:
        return value.quantize(SCALE, rounding=ROUND_HALF_EVEN, context=MONEY_ARITHMETIC)
    except InvalidOperation:
        raise ValueError(f"{value} cannot be rounded to 4 decimal places") from None


def decimal_text(value: object) -> Decimal:
    """An amount written as a JSON string (``"1234.5000"``), as the ERP writes money: a JSON
    number would have been through a float. Raises TypeError or ValueError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"expected a decimal string, got {value!r}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite amount")
    return amount


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSystem(StrEnum):
    """The system that recorded the fact."""

    UNKNOWN = "UNKNOWN"
    CRM = "CRM"
    ERP = "ERP"
    REVSYNC = "REVSYNC"


class CreditCheckOutcome(StrEnum):
    """Result of the ERP's credit check."""

    UNKNOWN = "UNKNOWN"
    APPROVED = "APPROVED"
    NOT_REQUIRED = "NOT_REQUIRED"
    APPROVED_OVER_LIMIT = "APPROVED_OVER_LIMIT"


class PricingOutcome(StrEnum):
    """How the ERP's pricing compared with the CRM's."""

    UNKNOWN = "UNKNOWN"
    MATCHED = "MATCHED"
    ADJUSTED_WITHIN_TOLERANCE = "ADJUSTED_WITHIN_TOLERANCE"


class RejectionReason(StrEnum):
    """Why an order was rejected."""

    OTHER = "OTHER"
    CREDIT_HOLD = "CREDIT_HOLD"
    PRICING_MISMATCH = "PRICING_MISMATCH"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    CUSTOMER_NOT_MASTERED = "CUSTOMER_NOT_MASTERED"
    UNSUPPORTED_CURRENCY = "UNSUPPORTED_CURRENCY"
    INVALID_ORDER = "INVALID_ORDER"


class ShipmentCompleteness(StrEnum):
    """Whether the order is now fully shipped."""

    UNKNOWN = "UNKNOWN"
    PARTIAL = "PARTIAL"
    COMPLETE = "COMPLETE"


class PaymentMethod(StrEnum):
    """How the customer paid."""

    OTHER = "OTHER"
    WIRE = "WIRE"
    ACH = "ACH"
    CARD = "CARD"
    CHECK = "CHECK"
    DIRECT_DEBIT = "DIRECT_DEBIT"


class Envelope(_Contract):
    event_id: uuid.UUID
    event_type: Text
    occurred_at: UtcDatetime
    source_system: SourceSystem
    correlation_id: Text
    causation_id: Str | None = None
    schema_version: int = Field(ge=1, le=INT_MAX)


class Address(_Contract):
    street: Text
    city: Text
    state_province: Str | None = None
    postal_code: Str | None = None
    country_code: CountryCode


class OrderLine(_Contract):
    line_number: int = Field(ge=1, le=INT_MAX)
    crm_line_id: Text
    sku: Text
    product_name: Text
    product_line: Text
    quantity: Quantity
    unit_of_measure: Text
    unit_price: NonNegativeMoney
    discount_amount: NonNegativeMoney
    tax_amount: NonNegativeMoney
    line_total: NonNegativeMoney

    @model_validator(mode="after")
    def _line_total_adds_up(self) -> Self:
        gross = MONEY_ARITHMETIC.multiply(self.quantity, self.unit_price)
        net = MONEY_ARITHMETIC.subtract(gross, self.discount_amount)
        if self.discount_amount > gross:
            raise ValueError(
                f"line {self.line_number}: discount_amount {self.discount_amount} exceeds "
                f"quantity * unit_price {money(gross)}"
            )
        expected = money(net)
        if self.line_total != expected:
            raise ValueError(
                f"line {self.line_number}: line_total {self.line_total} is not quantity * "
                f"unit_price - discount_amount = {expected}"
            )
        return self


class ShippedLine(_Contract):
    line_number: int = Field(ge=1, le=INT_MAX)
    sku: Text
    quantity_shipped: Quantity


class Event(_Contract):
    """An event on a revsync topic: an envelope, what it is about (its key), the business
    payload."""

    schema_name: ClassVar[str]
    event_type: ClassVar[str]
    key_field: ClassVar[str]
    """The field that is the topic's key, so one order's (or account's) events keep their
    order."""

    envelope: Envelope

    @property
    def key(self) -> str:
        return str(getattr(self, self.key_field))

    @model_validator(mode="after")
    def _envelope_matches(self) -> Self:
        if self.envelope.event_type != self.event_type:
            raise ValueError(
                f"envelope.event_type is {self.envelope.event_type!r}, "
                f"expected {self.event_type!r} for {type(self).__name__}"
            )
        return self

    def to_avro(self) -> dict[str, Any]:
        """The Avro datum: Decimals, datetimes, dates and UUIDs as fastavro writes them."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, datum: dict[str, Any]) -> Self:
        return cls.model_validate(datum)


class OrderEvent(Event):
    """An order-to-cash event, keyed by the CRM order id."""

    key_field = "crm_order_id"

    crm_order_id: Text


class CustomerEvent(Event):
    """A customer master event, keyed by the CRM account id."""

    key_field = "crm_account_id"

    crm_account_id: Text


class OrderCreated(OrderEvent):
    schema_name = "io.revsync.events.OrderCreated"
    event_type = "io.revsync.order.created"

    crm_order_number: Text
    crm_account_id: Text
    erp_customer_id: Str | None = None
    purchase_order_number: Str | None = None
    price_book_id: Text
    currency: CurrencyCode
    legal_entity: Text
    region: Text
    lines: list[OrderLine] = Field(min_length=1)
    subtotal: NonNegativeMoney
    discount_total: NonNegativeMoney
    tax_total: NonNegativeMoney
    grand_total: NonNegativeMoney
    ordered_at: UtcDatetime
    requested_delivery_date: date | None = None
    billing_address: Address
    shipping_address: Address

    @model_validator(mode="after")
    def _totals_add_up(self) -> Self:
        numbers = [line.line_number for line in self.lines]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"line numbers repeat: {sorted(numbers)}")
        sums = {
            "subtotal": sum((line.line_total for line in self.lines), Decimal(0)),
            "discount_total": sum((line.discount_amount for line in self.lines), Decimal(0)),
            "tax_total": sum((line.tax_amount for line in self.lines), Decimal(0)),
        }
        for name, expected in sums.items():
            if getattr(self, name) != expected:
                raise ValueError(f"{name} {getattr(self, name)} is not the lines' sum {expected}")
        if self.grand_total != self.subtotal + self.tax_total:
            raise ValueError(
                f"grand_total {self.grand_total} is not subtotal + tax_total "
                f"{self.subtotal + self.tax_total}"
            )
        return self


class OrderAccepted(OrderEvent):
    schema_name = "io.revsync.events.OrderAccepted"
    event_type = "io.revsync.order.accepted"

    erp_order_id: Text
    erp_order_number: Text
    erp_customer_id: Text
    credit_check: CreditCheckOutcome
    pricing_outcome: PricingOutcome
    currency: CurrencyCode
    erp_grand_total: NonNegativeMoney
    accepted_at: UtcDatetime


class OrderRejected(OrderEvent):
    schema_name = "io.revsync.events.OrderRejected"
    event_type = "io.revsync.order.rejected"

    reason_code: RejectionReason
    message: Text
    offending_skus: list[Str] = Field(default_factory=list)
    legal_entity: Text
    region: Text
    rejected_at: UtcDatetime


class OrderCancelled(OrderEvent):
    schema_name = "io.revsync.events.OrderCancelled"
    event_type = "io.revsync.order.cancelled"

    erp_order_id: Str | None = None
    reason: Str | None = None
    cancelled_at: UtcDatetime


class InvoicePosted(OrderEvent):
    schema_name = "io.revsync.events.InvoicePosted"
    event_type = "io.revsync.invoice.posted"

    erp_order_id: Text
    erp_invoice_id: Text
    invoice_number: Text
    erp_customer_id: Text
    crm_account_id: Text
    currency: CurrencyCode
    subtotal: NonNegativeMoney
    tax_total: NonNegativeMoney
    grand_total: NonNegativeMoney
    amount_due: NonNegativeMoney
    posting_date: date
    due_date: date
    payment_terms: Text
    legal_entity: Text
    region: Text
    posted_at: UtcDatetime

    @model_validator(mode="after")
    def _amounts_and_dates_agree(self) -> Self:
        if self.grand_total != self.subtotal + self.tax_total:
            raise ValueError(
                f"grand_total {self.grand_total} is not subtotal + tax_total "
                f"{self.subtotal + self.tax_total}"
            )
        if self.amount_due > self.grand_total:
            raise ValueError(f"amount_due {self.amount_due} exceeds grand_total {self.grand_total}")
        if self.due_date < self.posting_date:
            raise ValueError(f"due_date {self.due_date} is before posting_date {self.posting_date}")
        return self


class ShipmentConfirmed(OrderEvent):
    schema_name = "io.revsync.events.ShipmentConfirmed"
    event_type = "io.revsync.shipment.confirmed"

    erp_order_id: Text
    erp_shipment_id: Text
    lines: list[ShippedLine] = Field(min_length=1)
    carrier: Text
    tracking_number: Text
    tracking_url: Str | None = None
    completeness: ShipmentCompleteness
    warehouse: Str | None = None
    shipped_at: UtcDatetime


class PaymentReceived(OrderEvent):
    schema_name = "io.revsync.events.PaymentReceived"
    event_type = "io.revsync.payment.received"

    erp_payment_id: Text
    erp_invoice_id: Text
    invoice_number: Text
    currency: CurrencyCode
    amount: Annotated[Money, Field(gt=0)]
    remaining_balance: NonNegativeMoney
    payment_method: PaymentMethod
    received_at: UtcDatetime


class CustomerStatus(StrEnum):
    """Whether the ERP takes orders for a customer."""

    OTHER = "OTHER"
    ACTIVE = "ACTIVE"
    BLOCKED = "BLOCKED"
    CREDIT_HOLD = "CREDIT_HOLD"


class MatchBasis(StrEnum):
    """Which rule matched a CRM account with an ERP customer."""

    OTHER = "OTHER"
    TAX_ID = "TAX_ID"
    DUNS = "DUNS"
    NAME_COUNTRY = "NAME_COUNTRY"


class CustomerMatch(_Contract):
    erp_customer_id: Text
    customer_number: Text
    crm_account_id: Str | None = None
    matched_on: MatchBasis


class CustomerUpserted(CustomerEvent):
    schema_name = "io.revsync.events.CustomerUpserted"
    event_type = "io.revsync.customer.upserted"

    erp_customer_id: Text
    created: bool
    legal_entity: Text
    fields: list[Str] = Field(default_factory=list)
    upserted_at: UtcDatetime


class CustomerMastered(CustomerEvent):
    schema_name = "io.revsync.events.CustomerMastered"
    event_type = "io.revsync.customer.mastered"

    erp_customer_id: Text
    customer_number: Text
    name: Text
    legal_entity: Text
    currency: CurrencyCode
    status: CustomerStatus
    credit_limit: NonNegativeMoney
    payment_terms: Text
    blocks: list[Str] = Field(default_factory=list)
    changed_at: UtcDatetime


class CreditStatusChanged(CustomerEvent):
    schema_name = "io.revsync.events.CreditStatusChanged"
    event_type = "io.revsync.customer.credit-status-changed"

    erp_customer_id: Text
    status: CustomerStatus
    currency: CurrencyCode
    credit_limit: NonNegativeMoney
    exposure: NonNegativeMoney
    available_credit: Money
    changed_at: UtcDatetime


class DuplicateCustomerSuspected(CustomerEvent):
    schema_name = "io.revsync.events.DuplicateCustomerSuspected"
    event_type = "io.revsync.customer.duplicate-suspected"

    legal_entity: Text
    matches: list[CustomerMatch] = Field(min_length=1)
    message: Text
    detected_at: UtcDatetime


EVENT_TYPES: tuple[type[Event], ...] = (
    OrderCreated,
    OrderAccepted,
    OrderRejected,
    OrderCancelled,
    InvoicePosted,
    ShipmentConfirmed,
    PaymentReceived,
    CustomerUpserted,
    CustomerMastered,
    CreditStatusChanged,
    DuplicateCustomerSuspected,
)
EVENTS_BY_SCHEMA: dict[str, type[Event]] = {event.schema_name: event for event in EVENT_TYPES}
