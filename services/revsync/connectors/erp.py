"""The reference REST adapter of the ERP port (:class:`revsync.ports.erp.ErpPort`).

The reference ERP API (``/api/v1``, JSON, ``Authorization: Bearer <token>``; amounts and
quantities are JSON strings such as ``"1234.5000"`` so no float ever touches money):

``GET /api/v1/customers/{id}``
    200 with the customer; 404 when unknown.
``GET /api/v1/customers?external_id=X``
    200 ``{"items": [customer]}``: the customer mastered from CRM account X, or none.
``GET /api/v1/customers?tax_id=&duns=&name=&country=``
    200 ``{"items": [customer + "matched_on"]}``: every customer matching any criterion given,
    by number, each with the criteria it met (``tax_id``, ``duns``, ``name_country``). Tax ids
    and DUNS numbers are equal ignoring spacing, dashes, dots and case; a name is looked for
    in a country only (name and country come together), equal ignoring case, accents,
    punctuation, spacing and trailing legal forms (inc, llc, ltd, gmbh, ag, sa, sarl, bv,
    plc, corp, co...). 400 without a criterion, or with a name or country alone.
``PUT /api/v1/customers/by-external-id/{crm_account_id}`` (header ``Idempotency-Key``, required)
    Body: the fields the CRM owns, ``{"name", "legal_entity", "currency", "country_code",
    "tax_id", "duns", "billing_address": {"street", "city", "state_province", "postal_code",
    "country_code"}}``; an optional one left out or null is cleared. 201 ``{"created": true,
    "customer"}`` when it created the account's customer (active, NET30, its legal entity's
    default credit limit in its currency); 200 ``{"created": false, "customer"}`` when it
    wrote over the one the account has (two concurrent creates for one account make one
    customer). Idempotency as for sales orders: the same key and body again is the stored
    answer with ``Idempotent-Replayed: true``; the key with another body is 422
    ``idempotency_key_reused``. 422 ``{"code": "INVALID_CUSTOMER", "message", "field"}`` when
    a value is refused: a blank name, an unknown legal entity, codes not ISO in capitals, a
    DUNS number not of nine digits, or a change of legal entity or currency.
``GET /api/v1/customers/{id}/credit``
    200 ``{"customer_id", "status", "currency", "credit_limit", "exposure", "available"}``:
    exposure is the grand totals of the customer's open (neither invoiced nor cancelled)
    orders plus the amount due of its unpaid invoices; 404 when unknown.
``POST /api/v1/availability``
    Body ``{"region", "skus": [...]}``. 200 ``{"items": [{"sku", "region", "quantity",
    "available_on"}]}``: stock available to promise in the region, and the date more
    arrives (or null); SKUs the region does not stock are absent.
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

A customer is ``{"id", "number", "name", "crm_account_id", "legal_entity", "status",
"credit_limit", "currency", "payment_terms", "blocks": [...], "tax_id", "duns",
"country_code", "billing_address", "updated_at"}`` (``status``: active, blocked,
credit_hold; ``blocks``: order, delivery, billing). A sales order is ``{"id", "number",
"external_id", "customer_id", "status", "currency", "price_book_id", "legal_entity",
"region", "po_number", "subtotal", "tax_total", "grand_total", "credit_check",
"pricing_outcome", "correlation_id", "created_at", "lines"}``.
Errors are ``{"code", "message"}``; 401 ``{"code": "unauthorized"}``.

The ERP's outbox (Debezium's columns: ``aggregatetype``, ``aggregateid``, ``type``,
``payload``) gets a row in the transaction of each change: ``invoice``, ``shipment`` and
``payment`` rows keyed by the CRM order id, with ``payload.sales_order``; and ``customer``
rows keyed by the CRM account id, with the customer's whole record in ``payload.customer``
and ``payload.changed_at``: ``CustomerMastered`` whenever a customer is created or its
master record changes, and ``CreditStatusChanged`` besides when an ERP user changes its
credit limit or status (``payload.credit``: ``{"status", "currency", "credit_limit",
"exposure", "available_credit"}``). A customer no CRM account masters writes no rows:
there is nothing to key them by.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from revsync.connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BoundedClient,
    error_code,
    failed_call,
    raise_for_transient,
)
from revsync.contracts.events import (
    CreditCheckOutcome,
    PricingOutcome,
    decimal_text,
)
from revsync.errors import RevsyncError, TransientError
from revsync.ports.erp import (
    Address,
    CreditPosition,
    Customer,
    CustomerDraft,
    CustomerQuery,
    CustomerStatus,
    CustomerUpsert,
    ErpOrderMissing,
    ErpPort,
    ErpRejected,
    IdempotencyConflict,
    PriceBook,
    Product,
    SalesOrder,
    SalesOrderRequest,
    SalesOrderStatus,
    StockLevel,
)

SYSTEM = "erp"
API = "/api/v1"
PRODUCTS_PER_REQUEST = 100
"""SKUs per products lookup, so the query string stays well inside URL limits."""

T = TypeVar("T")


class ErpAuthFailed(TransientError):
    """The ERP refused the credentials (401/403): a configuration problem, not the order's
    fault, so the order waits in the retry tiers until the token is fixed."""


class ErpUnexpectedResponse(RevsyncError):
    """The ERP answered something this adapter does not understand (a 400, an unknown
    status, a malformed document); permanent, so it is looked at. Its text names the call,
    the status, the ERP's error code and the field at fault, never the answer's body or a
    value from it: an ERP's error body often quotes the order back, addresses and all."""


@dataclass(frozen=True)
class ErpConfig:
    """Where the ERP's API is, the token revsync calls it with, and the bounds of a call."""

    base_url: str
    api_token: SecretStr
    timeout_s: float = 10.0
    """The deadline of one call, its whole answer read (see
    :class:`~revsync.connectors.http.BoundedClient`)."""
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """The largest answer read; a larger one fails as transient, unread."""
    max_connections: int = 20


class ErpRestAdapter(ErpPort):
    """The ERP over its REST API, on one keep-alive connection pool."""

    def __init__(self, config: ErpConfig) -> None:
        self._client = BoundedClient(
            SYSTEM,
            config.base_url,
            timeout_s=config.timeout_s,
            max_response_bytes=config.max_response_bytes,
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

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        response = self._send("GET", f"{API}/customers", params={"external_id": [crm_account_id]})
        found = _parse(response, _customers, self._expect(response, 200))
        if len(found) > 1:
            raise ErpUnexpectedResponse(
                f"erp: GET {API}/customers answered {len(found)} customers for one external id"
            )
        return found[0] if found else None

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        criteria = {
            "tax_id": query.tax_id,
            "duns": query.duns,
            "name": query.name,
            "country": query.country_code,
        }
        params = {name: [value] for name, value in criteria.items() if value}
        if not params:
            return []  # no criterion: nobody matches
        response = self._send("GET", f"{API}/customers", params=params)
        return _parse(response, _customers, self._expect(response, 200))

    def upsert_customer(self, draft: CustomerDraft, idempotency_key: str) -> CustomerUpsert:
        response = self._send(
            "PUT",
            f"{API}/customers/by-external-id/{quote(draft.crm_account_id, safe='')}",
            json_body=customer_body(draft),
            headers={"Idempotency-Key": idempotency_key},
        )
        self._raise_for_refusal(response)
        return _parse(response, _customer_upsert, self._expect(response, 200, 201))

    def credit(self, customer_id: str) -> CreditPosition | None:
        response = self._send("GET", f"{API}/customers/{quote(customer_id, safe='')}/credit")
        if response.status_code == 404:
            return None
        return _parse(response, _credit_position, self._expect(response, 200))

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        response = self._send(
            "POST", f"{API}/availability", json_body={"region": region, "skus": wanted}
        )
        levels = _parse(
            response,
            lambda d: [_stock_level(i) for i in d["items"]],
            self._expect(response, 200),
        )
        return {level.sku: level for level in levels}

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
        response = self._client.request(
            method, path, params=params, json_body=json_body, headers=headers
        )
        raise_for_transient(SYSTEM, response)
        if response.status_code in (401, 403):
            raise ErpAuthFailed(f"{failed_call(SYSTEM, response)}: the API token was refused")
        return response

    @staticmethod
    def _raise_for_refusal(response: httpx.Response) -> None:
        if response.status_code != 422:
            return
        document = _json(response)
        code = error_code(document.get("code")) or "UNKNOWN"
        if code == "idempotency_key_reused":
            raise IdempotencyConflict(
                f"{failed_call(SYSTEM, response, code)}: the Idempotency-Key was used with a "
                "different request"
            )
        skus = document.get("skus") or []
        message = str(document.get("message") or "no reason given")
        raise ErpRejected(code, message, tuple(map(str, skus)), error_code(document.get("field")))

    @staticmethod
    def _expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
        if response.status_code not in statuses:
            raise ErpUnexpectedResponse(failed_call(SYSTEM, response, _error_code(response)))
        return _json(response)


def _error_code(response: httpx.Response) -> str | None:
    """The ``code`` of the ERP's error document ``{"code", "message"}``, if it sent one."""
    try:
        document = response.json()
    except ValueError:
        return None
    return error_code(document.get("code")) if isinstance(document, dict) else None


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
    """``build(document)``, with any shape error reported as the ERP's fault: a missing
    field by its name; a value of the wrong type or form by its kind alone, since the text of
    such an error quotes the value (which may be the customer's name or address)."""
    try:
        return build(document)
    except KeyError as missing:
        problem = f"no field {missing.args[0]!r}"
    except (TypeError, ValueError, InvalidOperation) as error:
        problem = f"a value of the wrong type or form ({type(error).__name__})"
    raise ErpUnexpectedResponse(
        f"erp: malformed answer to {response.request.method} {response.request.url.path}: {problem}"
    )


def _plain(value: Decimal) -> str:
    return format(value, "f")


def _customer(document: dict[str, Any]) -> Customer:
    return Customer(
        id=document["id"],
        name=document["name"],
        crm_account_id=document.get("crm_account_id"),
        legal_entity=document["legal_entity"],
        status=CustomerStatus(document["status"]),
        credit_limit=decimal_text(document["credit_limit"]),
        currency=document["currency"],
        number=document["number"],
        payment_terms=document["payment_terms"],
        blocks=_texts(document["blocks"]),
        tax_id=document["tax_id"],
        duns=document["duns"],
        country_code=document["country_code"],
        billing_address=_billing_address(document.get("billing_address")),
    )


def _billing_address(document: object) -> Address | None:
    if document is None:
        return None
    if not isinstance(document, dict):
        raise TypeError("billing_address is not an object")
    return Address(
        street=document["street"],
        city=document["city"],
        state_province=document.get("state_province"),
        postal_code=document.get("postal_code"),
        country_code=document["country_code"],
    )


def _customers(document: dict[str, Any]) -> list[Customer]:
    return [_customer(item) for item in document["items"]]


def _customer_upsert(document: dict[str, Any]) -> CustomerUpsert:
    created = document["created"]
    if not isinstance(created, bool):
        raise TypeError("created is not a boolean")
    return CustomerUpsert(customer=_customer(document["customer"]), created=created)


def _credit_position(document: dict[str, Any]) -> CreditPosition:
    return CreditPosition(
        customer_id=document["customer_id"],
        status=CustomerStatus(document["status"]),
        currency=document["currency"],
        credit_limit=decimal_text(document["credit_limit"]),
        exposure=decimal_text(document["exposure"]),
    )


def _stock_level(document: dict[str, Any]) -> StockLevel:
    available_on = document["available_on"]
    return StockLevel(
        sku=document["sku"],
        region=document["region"],
        quantity=decimal_text(document["quantity"]),
        available_on=None if available_on is None else date.fromisoformat(available_on),
    )


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of text")
    return tuple(value)


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
        prices={entry["sku"]: decimal_text(entry["unit_price"]) for entry in document["entries"]},
    )


def _sales_order(document: dict[str, Any]) -> SalesOrder:
    return SalesOrder(
        id=document["id"],
        number=document["number"],
        external_id=document["external_id"],
        customer_id=document["customer_id"],
        status=SalesOrderStatus(document["status"]),
        currency=document["currency"],
        subtotal=decimal_text(document["subtotal"]),
        tax_total=decimal_text(document["tax_total"]),
        grand_total=decimal_text(document["grand_total"]),
        credit_check=CreditCheckOutcome(document["credit_check"]),
        pricing_outcome=PricingOutcome(document["pricing_outcome"]),
        created_at=datetime.fromisoformat(document["created_at"]),
    )


def _address(address: Address) -> dict[str, Any]:
    return {
        "street": address.street,
        "city": address.city,
        "state_province": address.state_province,
        "postal_code": address.postal_code,
        "country_code": address.country_code,
    }


def customer_body(draft: CustomerDraft) -> dict[str, Any]:
    """The body of the customer upsert ``draft`` makes."""
    return {
        "name": draft.name,
        "legal_entity": draft.legal_entity,
        "currency": draft.currency,
        "country_code": draft.country_code,
        "tax_id": draft.tax_id,
        "duns": draft.duns,
        "billing_address": _address(draft.billing_address) if draft.billing_address else None,
    }


def _request_body(request: SalesOrderRequest) -> dict[str, Any]:
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
        "ship_to": _address(request.ship_to),
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
