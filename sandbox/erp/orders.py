"""Sales orders as the simulated ERP books them: validation against master data, pricing,
the credit check, idempotent creation, cancellation, and the order document the API returns."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from revsync.contracts.events import CreditCheckOutcome, PricingOutcome, money
from sandbox.erp.store import Connection
from sandbox.http import HttpFailure, Response

PRICE_TOLERANCE = Decimal("0.01")
"""A line priced within 1% of the price book is accepted (and reported as adjusted)."""
CREDIT_TOLERANCE = Decimal("1.10")
"""Up to 110% of the credit limit is approved over limit; beyond that, refused."""
REPLAYED = {"Idempotent-Replayed": "true"}


class StrictBody(BaseModel):
    """A request body that refuses unknown fields, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid")


class ShipTo(StrictBody):
    street: str = Field(min_length=1)
    city: str = Field(min_length=1)
    state_province: str | None = None
    postal_code: str | None = None
    country_code: str = Field(min_length=2, max_length=2)


class OrderLine(StrictBody):
    line_number: int = Field(ge=1)
    sku: str = Field(min_length=1)
    quantity: Decimal = Field(gt=0, decimal_places=4, allow_inf_nan=False)
    unit_price: Decimal = Field(ge=0, decimal_places=4, allow_inf_nan=False)
    discount_amount: Decimal = Field(ge=0, decimal_places=4, allow_inf_nan=False)
    tax_amount: Decimal = Field(ge=0, decimal_places=4, allow_inf_nan=False)


class OrderBody(StrictBody):
    """The body of ``POST /api/v1/sales-orders``."""

    external_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    currency: str = Field(min_length=3, max_length=3)
    price_book_id: str = Field(min_length=1)
    legal_entity: str = Field(min_length=1)
    region: str = Field(min_length=1)
    po_number: str | None = None
    requested_delivery_date: date | None = None
    ship_to: ShipTo
    lines: list[OrderLine] = Field(min_length=1)
    correlation_id: str | None = None


class CancelBody(StrictBody):
    reason: str = Field(min_length=1)


def request_hash(operation: str, body: Any) -> str:
    """What a key is bound to: the operation and its body, canonically serialised."""
    canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def refuse(code: str, message: str, skus: list[str] | None = None) -> HttpFailure:
    return HttpFailure(422, {"code": code, "message": message, "skus": sorted(skus or [])})


def claim_key(connection: Connection, key: str, fingerprint: str) -> Response | None:
    """Claims ``key`` in the open transaction; or, if a committed request holds it, the
    stored answer to replay (or a 422 when that request had another body).

    The insert waits for a concurrent holder of the same key to finish, so two identical
    requests never both proceed.
    """
    claimed = connection.execute(
        "INSERT INTO idempotency_keys (key, request_hash) VALUES (%s, %s) "
        "ON CONFLICT (key) DO NOTHING RETURNING key",
        (key, fingerprint),
    ).fetchone()
    if claimed is not None:
        return None
    stored = connection.execute(
        "SELECT request_hash, response FROM idempotency_keys WHERE key = %s", (key,)
    ).fetchone()
    assert stored is not None, "a conflicting key is committed before it is seen"
    if stored["request_hash"] != fingerprint:
        raise HttpFailure(
            422,
            {
                "code": "idempotency_key_reused",
                "message": f"Idempotency-Key {key!r} was used with a different request",
            },
        )
    return Response(200, stored["response"], dict(REPLAYED))


def store_answer(connection: Connection, key: str, status: int, document: dict[str, Any]) -> None:
    connection.execute(
        "UPDATE idempotency_keys SET status = %s, response = %s WHERE key = %s",
        (status, Jsonb(document), key),
    )


def book(connection: Connection, body: OrderBody) -> tuple[DictRow, list[dict[str, Any]]]:
    """Validates ``body`` and inserts its order and lines in the open transaction.

    Raises a 422 for a business refusal and a 409 (with the existing order) when the
    external id already has an order; either rolls the transaction back.
    """
    customer = connection.execute(
        "SELECT * FROM customers WHERE id = %s", (body.customer_id,)
    ).fetchone()
    if customer is None:
        raise refuse("CUSTOMER_NOT_MASTERED", f"no customer {body.customer_id!r}")
    if customer["status"] == "blocked":
        raise refuse("CUSTOMER_BLOCKED", f"customer {body.customer_id} is blocked")
    if customer["status"] == "credit_hold":
        raise refuse("CREDIT_HOLD", f"customer {body.customer_id} is on credit hold")
    if customer["currency"] != body.currency:
        # As the ERPs do: a customer is billed only in its currency, its credit kept in it.
        raise refuse(
            "UNSUPPORTED_CURRENCY",
            f"customer {body.customer_id} is billed in {customer['currency']}, not {body.currency}",
        )
    numbers = [line.line_number for line in body.lines]
    if len(set(numbers)) != len(numbers):
        raise refuse("INVALID_ORDER", f"line numbers repeat: {sorted(numbers)}")
    _check_products(connection, body)
    lines, pricing = _price(connection, body)
    subtotal = sum((line["line_total"] for line in lines), Decimal(0))
    tax_total = sum((line["tax_amount"] for line in lines), Decimal(0))
    grand_total = subtotal + tax_total
    credit = _credit_check(customer, grand_total)
    order = connection.execute(
        "INSERT INTO sales_orders (id, number, external_id, customer_id, currency, "
        "price_book_id, legal_entity, region, po_number, requested_delivery_date, ship_to, "
        "subtotal, tax_total, grand_total, credit_check, pricing_outcome, status, "
        "correlation_id) VALUES (%s, 'SO-' || lpad(nextval('sales_order_numbers')::text, "
        "6, '0'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'open', %s) "
        "ON CONFLICT (external_id) DO NOTHING RETURNING *",
        (
            f"SO-{uuid.uuid4()}",
            body.external_id,
            body.customer_id,
            body.currency,
            body.price_book_id,
            body.legal_entity,
            body.region,
            body.po_number,
            body.requested_delivery_date,
            Jsonb(body.ship_to.model_dump()),
            subtotal,
            tax_total,
            grand_total,
            credit,
            pricing,
            body.correlation_id,
        ),
    ).fetchone()
    if order is None:
        existing = find(connection, body.external_id)
        assert existing is not None, "the conflicting order is committed before it is seen"
        raise HttpFailure(
            409,
            {
                "code": "duplicate_external_id",
                "message": f"external id {body.external_id!r} already has order "
                f"{existing['number']}",
                "order": existing,
            },
        )
    connection.cursor().executemany(
        "INSERT INTO sales_order_lines (sales_order_id, line_number, sku, quantity, "
        "unit_price, list_price, discount_amount, tax_amount, line_total) "
        "VALUES (%(order)s, %(line_number)s, %(sku)s, %(quantity)s, %(unit_price)s, "
        "%(list_price)s, %(discount_amount)s, %(tax_amount)s, %(line_total)s)",
        [{"order": order["id"], **line} for line in lines],
    )
    return order, lines


def _check_products(connection: Connection, body: OrderBody) -> None:
    skus = sorted({line.sku for line in body.lines})
    rows = connection.execute(
        "SELECT sku, active, legal_entities FROM products WHERE sku = ANY(%s)", (skus,)
    ).fetchall()
    known = {row["sku"]: row for row in rows}
    unknown = [sku for sku in skus if sku not in known or not known[sku]["active"]]
    if unknown:
        raise refuse("UNKNOWN_PRODUCT", "unknown or inactive products", unknown)
    unsold = [
        sku
        for sku in skus
        if known[sku]["legal_entities"] and body.legal_entity not in known[sku]["legal_entities"]
    ]
    if unsold:
        raise refuse("UNKNOWN_PRODUCT", f"not sold by legal entity {body.legal_entity}", unsold)


def _price(connection: Connection, body: OrderBody) -> tuple[list[dict[str, Any]], str]:
    """The order's lines with their list prices and totals, and the pricing outcome."""
    book = connection.execute(
        "SELECT currency FROM price_books WHERE id = %s", (body.price_book_id,)
    ).fetchone()
    if book is None:
        raise refuse("UNKNOWN_PRICE_BOOK", f"no price book {body.price_book_id!r}")
    if book["currency"] != body.currency:
        raise refuse(
            "UNSUPPORTED_CURRENCY",
            f"price book {body.price_book_id} is in {book['currency']}, the order in "
            f"{body.currency}",
        )
    prices = {
        row["sku"]: row["unit_price"]
        for row in connection.execute(
            "SELECT sku, unit_price FROM price_book_entries WHERE price_book_id = %s",
            (body.price_book_id,),
        )
    }
    mismatched: list[str] = []
    adjusted = False
    lines = []
    for line in body.lines:
        list_price = prices.get(line.sku)
        if list_price is None or abs(line.unit_price - list_price) > list_price * PRICE_TOLERANCE:
            mismatched.append(line.sku)
            continue
        adjusted |= line.unit_price != list_price
        gross = line.quantity * line.unit_price
        if line.discount_amount > gross:
            raise refuse(
                "INVALID_ORDER",
                f"line {line.line_number}: discount {line.discount_amount} exceeds {money(gross)}",
                [line.sku],
            )
        lines.append(
            {
                **line.model_dump(),
                "list_price": list_price,
                "line_total": money(gross - line.discount_amount),
            }
        )
    if mismatched:
        raise refuse(
            "PRICING_MISMATCH", "prices differ from the price book by more than 1%", mismatched
        )
    pricing = PricingOutcome.ADJUSTED_WITHIN_TOLERANCE if adjusted else PricingOutcome.MATCHED
    return lines, pricing.value


def _credit_check(customer: DictRow, grand_total: Decimal) -> str:
    limit: Decimal = customer["credit_limit"]
    if grand_total == 0:
        return CreditCheckOutcome.NOT_REQUIRED.value
    if grand_total <= limit:
        return CreditCheckOutcome.APPROVED.value
    if grand_total <= limit * CREDIT_TOLERANCE:
        return CreditCheckOutcome.APPROVED_OVER_LIMIT.value
    raise refuse(
        "CREDIT_LIMIT_EXCEEDED",
        f"order total {grand_total} exceeds customer {customer['id']}'s credit limit {limit}",
    )


def cancel(connection: Connection, external_id: str, reason: str) -> dict[str, Any]:
    """Cancels the open order for ``external_id`` in the open transaction; an order already
    cancelled is returned as it is."""
    order = connection.execute(
        "SELECT status FROM sales_orders WHERE external_id = %s FOR UPDATE", (external_id,)
    ).fetchone()
    if order is None:
        raise HttpFailure(
            404, {"code": "not_found", "message": f"no sales order for {external_id!r}"}
        )
    if order["status"] in ("invoiced", "shipped"):
        raise refuse(
            "ORDER_NOT_CANCELLABLE", f"the order for {external_id!r} is already {order['status']}"
        )
    if order["status"] == "open":
        connection.execute(
            "UPDATE sales_orders SET status = 'cancelled', cancel_reason = %s, "
            "status_changed_at = now() WHERE external_id = %s",
            (reason, external_id),
        )
    document = find(connection, external_id)
    assert document is not None
    return document


def find(connection: Connection, external_id: str) -> dict[str, Any] | None:
    """The document of the order for ``external_id``."""
    orders = documents(connection, external_id)
    return orders[0] if orders else None


def documents(connection: Connection, external_id: str | None = None) -> list[dict[str, Any]]:
    """Order documents, oldest first: every order, or the one for ``external_id``."""
    orders = connection.execute(
        "SELECT * FROM sales_orders WHERE %(external_id)s::text IS NULL "
        "OR external_id = %(external_id)s ORDER BY created_at, number",
        {"external_id": external_id},
    ).fetchall()
    lines: dict[str, list[DictRow]] = {}
    for line in connection.execute(
        "SELECT * FROM sales_order_lines WHERE sales_order_id = ANY(%s) "
        "ORDER BY sales_order_id, line_number",
        ([order["id"] for order in orders],),
    ):
        lines.setdefault(line["sales_order_id"], []).append(line)
    return [document(order, lines.get(order["id"], [])) for order in orders]


def document(order: DictRow, lines: list[DictRow] | list[dict[str, Any]]) -> dict[str, Any]:
    """The API's JSON form of an order: amounts as strings, timestamps ISO 8601."""
    delivery = order["requested_delivery_date"]
    return {
        "id": order["id"],
        "number": order["number"],
        "external_id": order["external_id"],
        "customer_id": order["customer_id"],
        "status": order["status"],
        "currency": order["currency"],
        "price_book_id": order["price_book_id"],
        "legal_entity": order["legal_entity"],
        "region": order["region"],
        "po_number": order["po_number"],
        "requested_delivery_date": delivery.isoformat() if delivery else None,
        "ship_to": order["ship_to"],
        "subtotal": amount(order["subtotal"]),
        "tax_total": amount(order["tax_total"]),
        "grand_total": amount(order["grand_total"]),
        "credit_check": order["credit_check"],
        "pricing_outcome": order["pricing_outcome"],
        "cancel_reason": order["cancel_reason"],
        "correlation_id": order["correlation_id"],
        "created_at": order["created_at"].isoformat(),
        "lines": [
            {
                "line_number": line["line_number"],
                "sku": line["sku"],
                "quantity": amount(line["quantity"]),
                "unit_price": amount(line["unit_price"]),
                "list_price": amount(line["list_price"]),
                "discount_amount": amount(line["discount_amount"]),
                "tax_amount": amount(line["tax_amount"]),
                "line_total": amount(line["line_total"]),
            }
            for line in lines
        ],
    }


def amount(value: Decimal) -> str:
    """An amount as the API writes it: four decimal places, as a string."""
    return format(money(value), "f")
