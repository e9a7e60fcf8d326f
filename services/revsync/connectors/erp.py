"""The ERP port, its reference REST adapter, and the mapping of the ERP's outbox rows to
revsync's canonical events.

The reference ERP API (``/api/v1``, JSON, ``Authorization: Bearer <token>``; amounts and
quantities are JSON strings such as ``"1234.5000"`` so no float ever touches money):

``GET /api/v1/customers/{id}``
    200 ``{"id", "name", "crm_account_id", "legal_entity", "status", "credit_limit",
    "currency"}``; 404 when unknown.
``GET /api/v1/products?sku=A&sku=B``
    200 ``{"items": [{"sku", "name", "product_line", "unit_of_measure", "active",
    "legal_entities": [...]}]}``; unknown SKUs are simply absent.
``GET /api/v1/price-books/{id}``
    200 ``{"id", "name", "currency", "legal_entity", "entries": [{"sku", "unit_price"}]}``;
    404 when unknown.
``POST /api/v1/sales-orders`` (headers ``Idempotency-Key``, required, and ``X-Correlation-Id``)
    Body ``{"external_id", "customer_id", "currency", "price_book_id", "legal_entity",
    "region", "po_number", "requested_delivery_date", "ship_to": {"street", "city",
    "state_province", "postal_code", "country_code"}, "lines": [{"line_number", "sku",
    "quantity", "unit_price", "discount_amount", "tax_amount"}], "correlation_id"}``.
    201 with the sales order; 200 with ``Idempotent-Replayed: true`` when the key was seen
    with the same body; 409 ``{"code": "duplicate_external_id", "message", "order"}`` when
    another key already created an order for the external id; 422 ``{"code", "message",
    "skus"}`` when the business refuses the order, or ``{"code": "idempotency_key_reused"}``
    when the key was used with a different body.
``POST /api/v1/sales-orders/{external_id}/cancel`` (header ``Idempotency-Key``)
    Body ``{"reason"}``. 200 with the order (also when it was already cancelled); 404 when no
    order has the external id; 422 ``ORDER_NOT_CANCELLABLE`` once invoiced or shipped.
``GET /api/v1/sales-orders?external_id=X``
    200 ``{"items": [order]}``.

A sales order is ``{"id", "number", "external_id", "customer_id", "status", "currency",
"price_book_id", "legal_entity", "region", "po_number", "subtotal", "tax_total",
"grand_total", "credit_check", "pricing_outcome", "correlation_id", "created_at", "lines"}``.
Errors are ``{"code", "message"}``; 401 ``{"code": "unauthorized"}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr, ValidationError

from revsync.connectors.http import pooled_client, raise_for_transient, transport_failure
from revsync.contracts.events import (
    CreditCheckOutcome,
    Envelope,
    Event,
    InvoicePosted,
    PaymentMethod,
    PaymentReceived,
    PricingOutcome,
    ShipmentCompleteness,
    ShipmentConfirmed,
    ShippedLine,
    SourceSystem,
)
from revsync.errors import (
    BusinessRuleViolation,
    DependencyNotReady,
    ErrorClass,
    RevsyncError,
    TransientError,
)

SYSTEM = "erp"
API = "/api/v1"
PRODUCTS_PER_REQUEST = 100
"""SKUs per products lookup, so the query string stays well inside URL limits."""
SCHEMA_VERSION = 1

T = TypeVar("T")


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
    ORDER_NOT_CANCELLABLE, ...) and ``skus`` names the offending products, if any."""

    def __init__(self, code: str, message: str, skus: tuple[str, ...] = ()) -> None:
        detail = f" (skus: {', '.join(skus)})" if skus else ""
        super().__init__(f"erp rejected: {code}: {message}{detail}")
        self.code = code
        self.message = message
        self.skus = skus


class IdempotencyConflict(RevsyncError):
    """The idempotency key was already used with a different request body.

    Unknown, not a business rule: keys derive from the causing event, so this means revsync
    built two different requests from one event, which needs a person, not a retry.
    """

    error_class = ErrorClass.UNKNOWN


class ErpAuthFailed(TransientError):
    """The ERP refused the credentials (401/403): a configuration problem, not the order's
    fault, so the order waits in the retry tiers until the token is fixed."""


class ErpOrderMissing(DependencyNotReady):
    """No sales order has this external id (yet): the create may still be on its way."""


class ErpUnexpectedResponse(RevsyncError):
    """The ERP answered something this adapter does not understand (a 400, an unknown
    status, a malformed document); permanent, so it is looked at."""


class UnknownErpEventType(RevsyncError):
    """An ERP outbox row of a type revsync has no canonical event for."""

    error_class = ErrorClass.SCHEMA

    def __init__(self, row_id: uuid.UUID, event_type: str) -> None:
        super().__init__(f"erp outbox row {row_id}: unknown type {event_type!r}")
        self.row_id = row_id
        self.event_type = event_type


class ErpPayloadInvalid(RevsyncError):
    """An ERP outbox row whose payload cannot become its canonical event; ``field`` names
    the culprit (a dotted path into the payload, or the event field)."""

    error_class = ErrorClass.VALIDATION

    def __init__(self, row_id: uuid.UUID, event_type: str, field: str, reason: str) -> None:
        super().__init__(f"erp outbox row {row_id} ({event_type}): {field}: {reason}")
        self.row_id = row_id
        self.event_type = event_type
        self.field = field


class ErpPort(Protocol):
    """What revsync needs from the ERP: master data to validate against, and sales orders."""

    def customer(self, customer_id: str) -> Customer | None: ...

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        """Products by SKU; unknown SKUs are absent."""
        ...

    def price_book(self, price_book_id: str) -> PriceBook | None: ...

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        """Books the order once: a retry with the same key, or a create for an external id
        that already has an order, returns that order."""
        ...

    def cancel_sales_order(
        self, external_id: str, reason: str, idempotency_key: str
    ) -> SalesOrder: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ErpConfig:
    base_url: str
    api_token: SecretStr
    timeout_s: float = 10.0
    max_connections: int = 20


class ErpRestAdapter(ErpPort):
    """The ERP over its REST API, on one keep-alive connection pool."""

    def __init__(self, config: ErpConfig) -> None:
        self._client = pooled_client(
            config.base_url,
            timeout_s=config.timeout_s,
            max_connections=config.max_connections,
            headers={
                "Authorization": f"Bearer {config.api_token.get_secret_value()}",
                "Accept": "application/json",
            },
        )

    def customer(self, customer_id: str) -> Customer | None:
        response = self._send("GET", f"{API}/customers/{quote(customer_id, safe='')}")
        if response.status_code == 404:
            return None
        return _parse(response, _customer, self._expect(response, 200))

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        wanted = sorted(set(skus))
        found: dict[str, Product] = {}
        for start in range(0, len(wanted), PRODUCTS_PER_REQUEST):
            chunk = wanted[start : start + PRODUCTS_PER_REQUEST]
            response = self._send("GET", f"{API}/products", params={"sku": chunk})
            document = self._expect(response, 200)
            for product in _parse(response, lambda d: [_product(i) for i in d["items"]], document):
                found[product.sku] = product
        return found

    def price_book(self, price_book_id: str) -> PriceBook | None:
        response = self._send("GET", f"{API}/price-books/{quote(price_book_id, safe='')}")
        if response.status_code == 404:
            return None
        return _parse(response, _price_book, self._expect(response, 200))

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        response = self._send(
            "POST",
            f"{API}/sales-orders",
            json_body=_request_body(request),
            headers={
                "Idempotency-Key": idempotency_key,
                "X-Correlation-Id": request.correlation_id,
            },
        )
        if response.status_code == 409:
            # Another key already booked this external id: that order is the answer.
            return _parse(response, lambda d: _sales_order(d["order"]), _json(response))
        self._raise_for_refusal(response)
        return _parse(response, _sales_order, self._expect(response, 200, 201))

    def cancel_sales_order(self, external_id: str, reason: str, idempotency_key: str) -> SalesOrder:
        response = self._send(
            "POST",
            f"{API}/sales-orders/{quote(external_id, safe='')}/cancel",
            json_body={"reason": reason},
            headers={"Idempotency-Key": idempotency_key},
        )
        if response.status_code == 404:
            raise ErpOrderMissing(f"erp: no sales order has external id {external_id!r}")
        self._raise_for_refusal(response)
        return _parse(response, _sales_order, self._expect(response, 200))

    def close(self) -> None:
        self._client.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, list[str]] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        described = f"{method} {path}"
        try:
            response = self._client.request(
                method, path, params=params, json=json_body, headers=headers
            )
        except httpx.TransportError as error:
            raise transport_failure(SYSTEM, described, error) from error
        raise_for_transient(SYSTEM, response)
        if response.status_code in (401, 403):
            raise ErpAuthFailed(
                f"erp: HTTP {response.status_code} on {described}: the API token was refused"
            )
        return response

    @staticmethod
    def _raise_for_refusal(response: httpx.Response) -> None:
        if response.status_code != 422:
            return
        document = _json(response)
        code = str(document.get("code", ""))
        message = str(document.get("message", ""))
        if code == "idempotency_key_reused":
            raise IdempotencyConflict(
                f"erp: {response.request.method} {response.request.url.path}: {message or code}"
            )
        skus = document.get("skus") or []
        raise ErpRejected(code or "UNKNOWN", message or "no reason given", tuple(map(str, skus)))

    @staticmethod
    def _expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
        if response.status_code not in statuses:
            body = response.text[:300]
            raise ErpUnexpectedResponse(
                f"erp: HTTP {response.status_code} on {response.request.method} "
                f"{response.request.url.path}: {body}"
            )
        return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ErpUnexpectedResponse(
            f"erp: {response.request.method} {response.request.url.path} answered "
            f"HTTP {response.status_code} without a JSON object"
        )
    return document


def _parse(
    response: httpx.Response, build: Callable[[dict[str, Any]], T], document: dict[str, Any]
) -> T:
    """``build(document)``, with any shape error reported as the ERP's fault."""
    try:
        return build(document)
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise ErpUnexpectedResponse(
            f"erp: malformed answer to {response.request.method} {response.request.url.path}: "
            f"{type(error).__name__}: {error}"
        ) from None


def _amount(value: object) -> Decimal:
    """A JSON-string decimal; a JSON number would have been through a float."""
    if not isinstance(value, str):
        raise TypeError(f"expected a decimal string, got {value!r}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite amount")
    return amount


def _plain(value: Decimal) -> str:
    return format(value, "f")


def _customer(document: dict[str, Any]) -> Customer:
    return Customer(
        id=document["id"],
        name=document["name"],
        crm_account_id=document.get("crm_account_id"),
        legal_entity=document["legal_entity"],
        status=CustomerStatus(document["status"]),
        credit_limit=_amount(document["credit_limit"]),
        currency=document["currency"],
    )


def _product(document: dict[str, Any]) -> Product:
    return Product(
        sku=document["sku"],
        name=document["name"],
        product_line=document["product_line"],
        unit_of_measure=document["unit_of_measure"],
        active=bool(document["active"]),
        legal_entities=frozenset(document["legal_entities"]),
    )


def _price_book(document: dict[str, Any]) -> PriceBook:
    return PriceBook(
        id=document["id"],
        name=document["name"],
        currency=document["currency"],
        legal_entity=document["legal_entity"],
        prices={entry["sku"]: _amount(entry["unit_price"]) for entry in document["entries"]},
    )


def _sales_order(document: dict[str, Any]) -> SalesOrder:
    return SalesOrder(
        id=document["id"],
        number=document["number"],
        external_id=document["external_id"],
        customer_id=document["customer_id"],
        status=SalesOrderStatus(document["status"]),
        currency=document["currency"],
        subtotal=_amount(document["subtotal"]),
        tax_total=_amount(document["tax_total"]),
        grand_total=_amount(document["grand_total"]),
        credit_check=CreditCheckOutcome(document["credit_check"]),
        pricing_outcome=PricingOutcome(document["pricing_outcome"]),
        created_at=datetime.fromisoformat(document["created_at"]),
    )


def _request_body(request: SalesOrderRequest) -> dict[str, Any]:
    ship_to = request.ship_to
    return {
        "external_id": request.external_id,
        "customer_id": request.customer_id,
        "currency": request.currency,
        "price_book_id": request.price_book_id,
        "legal_entity": request.legal_entity,
        "region": request.region,
        "po_number": request.po_number,
        "requested_delivery_date": (
            request.requested_delivery_date.isoformat() if request.requested_delivery_date else None
        ),
        "ship_to": {
            "street": ship_to.street,
            "city": ship_to.city,
            "state_province": ship_to.state_province,
            "postal_code": ship_to.postal_code,
            "country_code": ship_to.country_code,
        },
        "lines": [
            {
                "line_number": line.line_number,
                "sku": line.sku,
                "quantity": _plain(line.quantity),
                "unit_price": _plain(line.unit_price),
                "discount_amount": _plain(line.discount_amount),
                "tax_amount": _plain(line.tax_amount),
            }
            for line in request.lines
        ],
        "correlation_id": request.correlation_id,
    }


# --- The ERP's outbox, as canonical events -------------------------------------------------


@dataclass(frozen=True)
class ErpOutboxRow:
    """One row of the ERP's Debezium-style outbox; ``aggregateid`` is the CRM order id."""

    id: uuid.UUID
    aggregatetype: str
    aggregateid: str
    type: str
    payload: Mapping[str, Any]
    created_at: datetime


ERP_COMPLETENESS = {
    "complete": ShipmentCompleteness.COMPLETE,
    "partial": ShipmentCompleteness.PARTIAL,
}
ERP_PAYMENT_METHODS = {
    "wire_transfer": PaymentMethod.WIRE,
    "ach": PaymentMethod.ACH,
    "card": PaymentMethod.CARD,
    "check": PaymentMethod.CHECK,
    "direct_debit": PaymentMethod.DIRECT_DEBIT,
}
"""ERP payment method codes; any other code is ``PaymentMethod.OTHER``."""


class _Payload:
    """Reads an outbox payload by dotted path; every failure names the row and the path."""

    def __init__(self, row: ErpOutboxRow) -> None:
        self.row = row

    def invalid(self, field: str, reason: str) -> ErpPayloadInvalid:
        return ErpPayloadInvalid(self.row.id, self.row.type, field, reason)

    def value(self, path: str) -> object:
        node: object = self.row.payload
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                raise self.invalid(path, "missing")
        return node

    def text(self, path: str) -> str:
        value = self.value(path)
        if not isinstance(value, str) or not value:
            raise self.invalid(path, f"expected non-empty text, got {value!r}")
        return value

    def optional_text(self, path: str) -> str | None:
        try:
            value = self.value(path)
        except ErpPayloadInvalid:
            return None
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.invalid(path, f"expected text, got {value!r}")
        return value or None

    def amount(self, path: str) -> Decimal:
        value = self.value(path)
        try:
            return _amount(value)
        except (TypeError, ValueError, InvalidOperation):
            raise self.invalid(path, f"expected a decimal string, got {value!r}") from None

    def day(self, path: str) -> date:
        value = self.text(path)
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise self.invalid(path, f"expected an ISO date, got {value!r}") from None

    def moment(self, path: str) -> datetime:
        value = self.text(path)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.invalid(path, f"expected an ISO timestamp, got {value!r}") from None
        if moment.tzinfo is None:
            raise self.invalid(path, f"timestamp {value!r} has no UTC offset")
        return moment

    def integer(self, path: str) -> int:
        value = self.value(path)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.invalid(path, f"expected an integer, got {value!r}")
        return value

    def elements(self, path: str) -> list[str]:
        """The paths of the elements of the non-empty list at ``path``."""
        value = self.value(path)
        if not isinstance(value, list) or not value:
            raise self.invalid(path, "expected a non-empty list")
        return [f"{path}.{index}" for index in range(len(value))]


def canonical_event(row: ErpOutboxRow) -> Event:
    """The canonical event for one ERP outbox row.

    Raises :class:`UnknownErpEventType` for a type revsync does not map and
    :class:`ErpPayloadInvalid` for a payload that cannot fill its event.
    """
    build = _BUILDERS.get(row.type)
    if build is None:
        raise UnknownErpEventType(row.id, row.type)
    payload = _Payload(row)
    crm_order_id = payload.text("sales_order.external_id")
    if crm_order_id != row.aggregateid:
        raise payload.invalid(
            "sales_order.external_id",
            f"{crm_order_id!r} is not the row's aggregateid {row.aggregateid!r}",
        )
    try:
        return build(payload)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or row.type
        raise payload.invalid(field, first["msg"]) from None


def _envelope(payload: _Payload, event_type: str, occurred_at: datetime) -> Envelope:
    correlation_id = payload.optional_text("sales_order.correlation_id")
    return Envelope(
        event_id=payload.row.id,
        event_type=event_type,
        occurred_at=occurred_at,
        source_system=SourceSystem.ERP,
        correlation_id=correlation_id or payload.text("sales_order.external_id"),
        causation_id=None,
        schema_version=SCHEMA_VERSION,
    )


def _invoice_posted(payload: _Payload) -> InvoicePosted:
    return InvoicePosted(
        envelope=_envelope(payload, InvoicePosted.event_type, payload.moment("invoice.posted_at")),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_order_id=payload.text("sales_order.id"),
        erp_invoice_id=payload.text("invoice.id"),
        invoice_number=payload.text("invoice.number"),
        erp_customer_id=payload.text("sales_order.customer_id"),
        crm_account_id=payload.text("sales_order.crm_account_id"),
        currency=payload.text("invoice.currency"),
        subtotal=payload.amount("invoice.subtotal"),
        tax_total=payload.amount("invoice.tax_total"),
        grand_total=payload.amount("invoice.grand_total"),
        amount_due=payload.amount("invoice.amount_due"),
        posting_date=payload.day("invoice.posting_date"),
        due_date=payload.day("invoice.due_date"),
        payment_terms=payload.text("invoice.payment_terms"),
        legal_entity=payload.text("sales_order.legal_entity"),
        region=payload.text("sales_order.region"),
        posted_at=payload.moment("invoice.posted_at"),
    )


def _shipment_confirmed(payload: _Payload) -> ShipmentConfirmed:
    completeness = payload.text("shipment.completeness")
    if completeness not in ERP_COMPLETENESS:
        raise payload.invalid(
            "shipment.completeness", f"{completeness!r} is not one of {sorted(ERP_COMPLETENESS)}"
        )
    lines = [
        ShippedLine(
            line_number=payload.integer(f"{line}.line_number"),
            sku=payload.text(f"{line}.sku"),
            quantity_shipped=payload.amount(f"{line}.quantity"),
        )
        for line in payload.elements("shipment.lines")
    ]
    return ShipmentConfirmed(
        envelope=_envelope(
            payload, ShipmentConfirmed.event_type, payload.moment("shipment.shipped_at")
        ),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_order_id=payload.text("sales_order.id"),
        erp_shipment_id=payload.text("shipment.id"),
        lines=lines,
        carrier=payload.text("shipment.carrier"),
        tracking_number=payload.text("shipment.tracking_number"),
        tracking_url=payload.optional_text("shipment.tracking_url"),
        completeness=ERP_COMPLETENESS[completeness],
        warehouse=payload.optional_text("shipment.warehouse"),
        shipped_at=payload.moment("shipment.shipped_at"),
    )


def _payment_received(payload: _Payload) -> PaymentReceived:
    method = payload.text("payment.method")
    return PaymentReceived(
        envelope=_envelope(
            payload, PaymentReceived.event_type, payload.moment("payment.received_at")
        ),
        crm_order_id=payload.text("sales_order.external_id"),
        erp_payment_id=payload.text("payment.id"),
        erp_invoice_id=payload.text("invoice.id"),
        invoice_number=payload.text("invoice.number"),
        currency=payload.text("payment.currency"),
        amount=payload.amount("payment.amount"),
        remaining_balance=payload.amount("invoice.amount_due"),
        payment_method=ERP_PAYMENT_METHODS.get(method, PaymentMethod.OTHER),
        received_at=payload.moment("payment.received_at"),
    )


_BUILDERS: dict[str, Callable[[_Payload], Event]] = {
    "InvoicePosted": _invoice_posted,
    "ShipmentConfirmed": _shipment_confirmed,
    "PaymentReceived": _payment_received,
}
