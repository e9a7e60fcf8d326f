"""The process API's decisions, free of I/O: a quote's lines priced and its customer's credit
judged by the rules order_sync applies when the order comes (:mod:`revsync.rules.checks`),
stock against the quantities asked for, a submitted order as the canonical order-created
event, who is calling and how often they may, and the trace a request belongs to."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from process_api.models import (
    AvailabilityAnswer,
    AvailabilityRequest,
    CreditAnswer,
    CreditRequest,
    LineVerdict,
    OrderSubmission,
    PricingAnswer,
    PricingRequest,
    StockVerdict,
    SubmissionAnswer,
)
from revsync.connectors.guard import Freshness
from revsync.contracts.events import (
    MONEY_ARITHMETIC,
    Envelope,
    OrderCreated,
    RejectionReason,
    SourceSystem,
    money,
)
from revsync.ports.erp import CreditPosition, Customer, PriceBook, Product, StockLevel
from revsync.rules import checks
from revsync.rules.book import OrderRules
from revsync.runtime.handler import derived_event_id

SCOPES = {
    "pricing:read": "POST /v1/pricing/validate",
    "credit:read": "POST /v1/credit/check",
    "availability:read": "POST /v1/availability",
    "orders:write": "POST /v1/orders",
}
"""The scope each endpoint needs in the caller's access token."""
CORRELATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-([0-9a-f]{2})$")
"""W3C Trace Context, version 00: trace id, parent id (neither all zeros), flags."""


def _fresh(freshness: Freshness) -> dict[str, Any]:
    return {"stale": freshness.stale, "age_s": round(freshness.age_s, 3)}


# --- pricing ---------------------------------------------------------------------------------


def price_quote(
    quote: PricingRequest,
    price_book: PriceBook | None,
    products: Mapping[str, Product],
    rules: OrderRules,
    freshness: Freshness,
) -> PricingAnswer:
    """Each line as order-time validation will judge it, and the rejection it would give."""
    tolerance = rules.price_tolerance
    rejection = checks.price_book_rejection(
        quote.currency, quote.legal_entity, quote.price_book_id, price_book, rules
    )
    if rejection is not None:
        # No line can pass: the book is missing, or in a currency the order may not have.
        lines = [
            LineVerdict(
                line=number,
                sku=line.sku,
                unit_price=line.unit_price,
                accepted=False,
                reason=rejection.reason,
                list_price=None,
                deviation=None,
                tolerance=tolerance,
            )
            for number, line in enumerate(quote.lines, 1)
        ]
    else:
        assert price_book is not None  # no rejection: the book exists
        verdicts = checks.line_verdicts(
            quote.lines, price_book.prices, products, quote.legal_entity, rules
        )
        rejection = checks.lines_rejection(verdicts, price_book, quote.legal_entity, rules)
        lines = [
            LineVerdict(
                line=number,
                sku=verdict.sku,
                unit_price=verdict.unit_price,
                accepted=verdict.reason is None,
                reason=verdict.reason,
                list_price=verdict.list_price,
                deviation=verdict.deviation,
                tolerance=tolerance,
            )
            for number, verdict in enumerate(verdicts, 1)
        ]
    return PricingAnswer(
        accepted=rejection is None,
        reason=rejection.reason if rejection else None,
        message=rejection.message if rejection else None,
        skus=list(rejection.skus) if rejection else [],
        lines=lines,
        **_fresh(freshness),
    )


# --- credit ----------------------------------------------------------------------------------


def judge_credit(
    request: CreditRequest,
    customer: Customer | None,
    position: CreditPosition | None,
    freshness: Freshness,
) -> CreditAnswer:
    """Held for what order-time validation would reject the customer for, or for an amount
    over the credit available now (the ERP's own check at order time allows less than that
    never refuses: a quote approved here is not refused for credit)."""
    rejection = _customer_rejection(request, customer)
    if rejection is None:
        assert customer is not None  # one that passes its rules exists
        rejection = (
            _credit_rejection(request, position)
            if position is not None
            else checks.customer_rejection(
                customer.id, None, request.legal_entity, request.currency
            )
        )
    return CreditAnswer(
        decision="approved" if rejection is None else "held",
        reason=rejection.reason if rejection else None,
        message=rejection.message if rejection else None,
        customer_id=customer.id if customer else None,
        currency=position.currency if position else None,
        credit_limit=position.credit_limit if position else None,
        exposure=position.exposure if position else None,
        available_credit=position.available if position else None,
        **_fresh(freshness),
    )


def _customer_rejection(
    request: CreditRequest, customer: Customer | None
) -> checks.Rejection | None:
    if customer is not None:
        return checks.customer_rejection(
            customer.id, customer, request.legal_entity, request.currency
        )
    if request.customer_id is not None:
        return checks.customer_rejection(
            request.customer_id, None, request.legal_entity, request.currency
        )
    assert request.account_id is not None  # the request names one or the other
    return checks.unmastered(request.account_id)


def _credit_rejection(request: CreditRequest, position: CreditPosition) -> checks.Rejection | None:
    who = f"ERP customer {position.customer_id}"
    if request.currency != position.currency:
        return checks.Rejection(
            RejectionReason.UNSUPPORTED_CURRENCY,
            f"{who}'s credit is kept in {position.currency}, not {request.currency}",
        )
    if request.amount > position.available:
        return checks.Rejection(
            checks.ERP_REASONS["CREDIT_LIMIT_EXCEEDED"],
            f"{request.amount} {request.currency} is over {who}'s available credit "
            f"{position.available} {position.currency}",
        )
    return None


# --- availability ----------------------------------------------------------------------------


def availability(
    request: AvailabilityRequest, levels: Mapping[str, StockLevel | None], freshness: Freshness
) -> AvailabilityAnswer:
    verdicts = []
    for number, line in enumerate(request.lines, 1):
        level = levels.get(line.sku)
        enough = level is not None and level.quantity >= line.quantity
        verdicts.append(
            StockVerdict(
                line=number,
                sku=line.sku,
                quantity=line.quantity,
                known=level is not None,
                available=enough,
                available_quantity=level.quantity if level else None,
                available_on=None if enough or level is None else level.available_on,
            )
        )
    return AvailabilityAnswer(lines=verdicts, **_fresh(freshness))


# --- order submission ------------------------------------------------------------------------


def order_id(submission: OrderSubmission) -> str:
    return f"{submission.channel}:{submission.order_number}"


def submitted_order(
    submission: OrderSubmission, correlation_id: str, now: datetime
) -> OrderCreated:
    """The canonical order-created event of a submission, as order_sync's capture makes one
    of a CRM order: line totals from quantity, price and discount, order totals from the
    lines. Recorded by revsync (there is no CRM order), its id derived from the order's, so a
    submission made twice is one event. Raises pydantic's ValidationError naming the field
    that does not add up."""
    identity = order_id(submission)
    with localcontext(MONEY_ARITHMETIC):
        lines = [
            {
                **line.model_dump(),
                "line_number": number,
                "crm_line_id": f"{identity}/{number}",
                "line_total": money(line.quantity * line.unit_price - line.discount_amount),
            }
            for number, line in enumerate(submission.lines, 1)
        ]
        subtotal = sum((line["line_total"] for line in lines), Decimal(0))
        discount = sum((line.discount_amount for line in submission.lines), Decimal(0))
        tax = sum((line.tax_amount for line in submission.lines), Decimal(0))
        grand_total = subtotal + tax
    envelope = Envelope(
        event_id=derived_event_id(identity, OrderCreated.event_type),
        event_type=OrderCreated.event_type,
        occurred_at=now,
        source_system=SourceSystem.REVSYNC,
        correlation_id=correlation_id,
        schema_version=1,
    )
    return OrderCreated.model_validate(
        {
            "envelope": envelope,
            "crm_order_id": identity,
            "crm_order_number": submission.order_number,
            "crm_account_id": submission.account_id,
            "purchase_order_number": submission.purchase_order_number,
            "price_book_id": submission.price_book_id,
            "currency": submission.currency,
            "legal_entity": submission.legal_entity,
            "region": submission.region,
            "lines": lines,
            "subtotal": subtotal,
            "discount_total": discount,
            "tax_total": tax,
            "grand_total": grand_total,
            "ordered_at": now,
            "requested_delivery_date": submission.requested_delivery_date,
            "billing_address": submission.billing_address.model_dump(),
            "shipping_address": submission.shipping_address.model_dump(),
        }
    )


def submission_answer(order: OrderCreated) -> SubmissionAnswer:
    return SubmissionAnswer(
        order_id=order.crm_order_id,
        event_id=str(order.envelope.event_id),
        status="submitted",
        submitted_at=order.ordered_at,
        correlation_id=order.envelope.correlation_id,
    )


def fingerprint(submission: OrderSubmission) -> str:
    """What an Idempotency-Key is bound to: the submission as it was understood."""
    return hashlib.sha256(submission.model_dump_json().encode()).hexdigest()


# --- callers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is calling, as its access token says: its client, and the scopes granted it."""

    client_id: str
    scopes: frozenset[str]


def caller(claims: Mapping[str, Any]) -> Caller:
    """The client of a verified token (``client_id``, else ``azp``, else ``sub``) and its
    scopes (``scope``, space-separated, or ``scp``, a list)."""
    client = claims.get("client_id") or claims.get("azp") or claims.get("sub")
    scope, scp = claims.get("scope"), claims.get("scp")
    granted = scope.split() if isinstance(scope, str) else []
    if isinstance(scp, list):
        granted += [item for item in scp if isinstance(item, str)]
    return Caller(str(client), frozenset(granted))


class RateLimits:
    """A token bucket per client: ``burst`` requests at once, refilled at ``rate_per_s``.
    Safe across threads; once more than ``max_clients`` are tracked, those whose bucket has
    filled up again are forgotten."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        """Client -> (tokens, when counted)."""
        self._lock = threading.Lock()

    def take(self, client: str, now: float) -> float:
        """0 when ``client`` may make a request now (it is counted), else the seconds until
        it may."""
        with self._lock:
            if len(self._buckets) > self.max_clients:
                self._buckets = {
                    name: bucket
                    for name, bucket in self._buckets.items()
                    if self._tokens(bucket, now) < self.burst
                }
            tokens = self._tokens(self._buckets.get(client, (self.burst, now)), now)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate_per_s

    def _tokens(self, bucket: tuple[float, float], now: float) -> float:
        tokens, counted = bucket
        return min(float(self.burst), tokens + max(now - counted, 0.0) * self.rate_per_s)


# --- tracing ---------------------------------------------------------------------------------


def correlation_id(given: str | None, new: str) -> str:
    """The caller's ``X-Correlation-Id`` when it is a sound one, else ``new``."""
    return given if given is not None and CORRELATION_ID.fullmatch(given) else new


def traceparent(given: str | None, new_trace_id: str, span_id: str) -> str:
    """The ``traceparent`` this request passes on (in its answer and its events): the
    caller's trace, with this service's span ``span_id`` as the parent; a new trace when the
    caller sent none, or none W3C's version 00 allows."""
    found = TRACEPARENT.fullmatch(given) if given is not None else None
    if found is None:
        return f"00-{new_trace_id}-{span_id}-01"
    return f"00-{found[1]}-{span_id}-{found[2]}"
