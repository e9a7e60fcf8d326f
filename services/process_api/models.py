"""What the process API takes and answers, as its OpenAPI document publishes it. Money and
quantities travel as decimal strings (``"199.99"``), never JSON numbers, which would go
through a float on the way."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Annotated, Literal, Self

import pycountry
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from revsync.contracts.events import (
    MONEY_ARITHMETIC,
    CountryCode,
    CurrencyCode,
    RejectionReason,
    Str,
)

DECIMAL = re.compile(r"^[0-9]{1,14}(\.[0-9]{1,4})?$")
"""At most 14 digits before the point and 4 after: what decimal(18,4) holds."""


def _decimal_string(value: object) -> object:
    if not isinstance(value, str) or not DECIMAL.fullmatch(value):
        raise ValueError('a decimal string such as "199.99" (at most 14 digits, 4 decimals)')
    return value


_AS_STRING = PlainSerializer(lambda amount: format(amount, "f"), return_type=str)
Amount = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    Field(ge=0),
    _AS_STRING,
    WithJsonSchema({"type": "string", "pattern": DECIMAL.pattern, "examples": ["199.99"]}),
]
"""A non-negative amount of money, as a decimal string."""
Quantity = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    Field(gt=0),
    _AS_STRING,
    WithJsonSchema({"type": "string", "pattern": DECIMAL.pattern, "examples": ["3"]}),
]
"""A positive quantity, as a decimal string."""
Answered = Annotated[Decimal, _AS_STRING, WithJsonSchema({"type": "string", "examples": ["0.5"]})]
"""A decimal the API answers with (credit may be negative), as a string."""
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
"""A product, price book, customer or account id."""
Code = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
"""A legal entity or region code."""
Currency = Annotated[
    CurrencyCode,
    WithJsonSchema({"type": "string", "enum": sorted(c.alpha_3 for c in pycountry.currencies)}),
]
"""ISO 4217."""
Country = Annotated[
    CountryCode,
    WithJsonSchema({"type": "string", "enum": sorted(c.alpha_2 for c in pycountry.countries)}),
]
"""ISO 3166-1 alpha-2."""
Text = Annotated[Str, Field(min_length=1, max_length=255)]
OptionalText = Annotated[Str, Field(max_length=255)] | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


class Freshness(_Answer):
    stale: bool = Field(
        description="True when the ERP could not be asked (it fails, or its circuit breaker "
        "is open) and the answer rests on values cached earlier, past their time to live."
    )
    age_s: float = Field(description="Age in seconds of the oldest ERP value the answer uses.")


# --- pricing ---------------------------------------------------------------------------------


class QuoteLine(_Request):
    sku: Id
    quantity: Quantity
    unit_price: Amount


class PricingRequest(_Request):
    """A quote's lines, priced as the order would be: in its legal entity, region and
    currency, against its price book."""

    legal_entity: Code
    region: Code
    currency: Currency
    price_book_id: Id
    lines: list[QuoteLine] = Field(min_length=1, max_length=200)


class LineVerdict(_Answer):
    line: int = Field(description="The line's position in the request, from 1.")
    sku: str
    unit_price: Answered
    accepted: bool
    reason: RejectionReason | None = Field(
        description="Why the order would be rejected for this line: UNKNOWN_PRODUCT, "
        "PRICING_MISMATCH, or the whole quote's reason (UNSUPPORTED_CURRENCY, ...)."
    )
    list_price: Answered | None = Field(description="The ERP price book's unit price.")
    deviation: Answered | None = Field(
        description="How far the unit price is from the list price, relative to it."
    )
    tolerance: Answered = Field(description="The largest deviation the rules allow.")


class PricingAnswer(Freshness):
    accepted: bool = Field(description="Every line would be accepted at order time.")
    reason: RejectionReason | None
    message: str | None = Field(description="What order-time validation would say, if not.")
    skus: list[str] = Field(description="The offending products, if any.")
    lines: list[LineVerdict]


# --- credit ----------------------------------------------------------------------------------


class CreditRequest(_Request):
    """Whether the customer may order ``amount`` now. The customer is its ERP id, or the CRM
    account it is mastered from."""

    legal_entity: Code
    currency: Currency
    amount: Amount
    customer_id: Id | None = None
    account_id: Id | None = None

    @model_validator(mode="after")
    def _names_the_customer(self) -> Self:
        if self.customer_id is None and self.account_id is None:
            raise ValueError("give customer_id (the ERP's) or account_id (the CRM's)")
        return self


class CreditAnswer(Freshness):
    decision: Literal["approved", "held"]
    reason: RejectionReason | None
    message: str | None
    customer_id: str | None
    currency: str | None = Field(description="The currency the customer's credit is kept in.")
    credit_limit: Answered | None
    exposure: Answered | None = Field(description="Open orders and unpaid invoices.")
    available_credit: Answered | None


# --- availability ----------------------------------------------------------------------------


class StockLine(_Request):
    sku: Id
    quantity: Quantity


class AvailabilityRequest(_Request):
    region: Code
    lines: list[StockLine] = Field(min_length=1, max_length=200)


class StockVerdict(_Answer):
    line: int
    sku: str
    quantity: Answered = Field(description="The quantity asked for.")
    known: bool = Field(description="Whether the region stocks the product at all.")
    available: bool = Field(description="Whether the whole quantity is available to promise.")
    available_quantity: Answered | None
    available_on: date | None = Field(
        description="When more arrives, where not enough is available now."
    )


class AvailabilityAnswer(Freshness):
    lines: list[StockVerdict]


# --- order submission ------------------------------------------------------------------------


class SubmittedAddress(_Request):
    street: Text
    city: Text
    state_province: OptionalText = None
    postal_code: OptionalText = None
    country_code: Country


class SubmittedLine(_Request):
    sku: Id
    product_name: Text
    product_line: Text
    quantity: Quantity
    unit_of_measure: Annotated[str, Field(pattern=r"^[A-Z]{1,8}$")] = "EA"
    unit_price: Amount
    discount_amount: Amount = Decimal(0)
    tax_amount: Amount = Decimal(0)

    @model_validator(mode="after")
    def _discount_within_the_line(self) -> Self:
        with localcontext(MONEY_ARITHMETIC):
            if self.discount_amount > self.quantity * self.unit_price:
                raise ValueError("discount_amount exceeds quantity * unit_price")
        return self


class OrderSubmission(_Request):
    """An order from a channel the CRM's change data capture does not see (a web shop, a
    partner portal). ``channel`` and ``order_number`` make its id, ``<channel>:<number>``,
    which keys it through the whole pipeline and is its external id in the ERP."""

    channel: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")]
    order_number: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    account_id: Id = Field(description="The CRM account of the customer.")
    price_book_id: Id
    currency: Currency
    legal_entity: Code
    region: Code
    purchase_order_number: OptionalText = None
    requested_delivery_date: date | None = None
    billing_address: SubmittedAddress
    shipping_address: SubmittedAddress
    lines: list[SubmittedLine] = Field(min_length=1, max_length=200)


class SubmissionAnswer(_Answer):
    order_id: str = Field(description="``<channel>:<order number>``: the order's key.")
    event_id: str = Field(description="The order-created event it entered the pipeline as.")
    status: Literal["submitted"]
    submitted_at: datetime = Field(description="When it was first submitted (UTC).")
    correlation_id: str


class Problem(_Answer):
    """Every refusal's body: a code, a message, and for a malformed request its fields."""

    code: str
    message: str
    fields: list[dict[str, str]] = Field(default_factory=list)
