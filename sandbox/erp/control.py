"""A typed client for the ERP simulator's control API (``/__sandbox/``): seeding master data
and stock, an ERP user's edits of customers, inspecting orders and counters, the progression
clock, faults and reset."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from sandbox.erp.progression import Clock
from sandbox.http import ControlClient

CONTROL = "/__sandbox"


@dataclass(frozen=True)
class ErpStats:
    """What the simulator has done since its last reset."""

    sales_orders: dict[str, int]
    """Sales orders by status (open, invoiced, shipped, cancelled)."""
    create_requests: int
    idempotent_replays: int
    duplicate_external_ids: int
    """Creates answered 409 because another key had already booked the external id."""
    rejected: int
    """Creates and cancels refused with a 422."""
    invoices: int
    shipments: int
    payments: int
    outbox_rows: int


class ErpSandbox(ControlClient):
    """One method per control route of the ERP simulator at ``url``."""

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        """Creates or replaces customers, as the ERP held them before revsync (no outbox
        rows); one without a number keeps its own or takes the next, one without payment
        terms gets NET30. Returns how many."""
        body = [
            {
                "id": c.id,
                "number": c.number,
                "name": c.name,
                "crm_account_id": c.crm_account_id,
                "legal_entity": c.legal_entity,
                "status": c.status.value,
                "credit_limit": format(c.credit_limit, "f"),
                "currency": c.currency,
                **({"payment_terms": c.payment_terms} if c.payment_terms else {}),
                "blocks": list(c.blocks),
                "tax_id": c.tax_id,
                "duns": c.duns,
                "country_code": c.country_code,
            }
            for c in customers
        ]
        return int(self._call("POST", "/customers", {"customers": body})["upserted"])

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        payment_terms: str | None = None,
        blocks: Iterable[str] | None = None,
        crm_account_id: str | None = None,
    ) -> dict[str, Any]:
        """An ERP user changes the given fields of a customer (blocks: ``order``,
        ``delivery``, ``billing``), or links it to a CRM account (409 when another customer
        has it); the ERP writes its outbox rows. Returns the customer's document as the REST
        API gives it."""
        changes: dict[str, Any] = {
            "credit_limit": None if credit_limit is None else format(credit_limit, "f"),
            "status": None if status is None else status.value,
            "payment_terms": payment_terms,
            "blocks": None if blocks is None else list(blocks),
            "crm_account_id": crm_account_id,
        }
        body = {name: value for name, value in changes.items() if value is not None}
        return self._call("PATCH", f"/customers/{quote(customer_id, safe='')}", body)

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        """Creates or replaces stock levels by SKU and region; returns how many."""
        body = [
            {
                "sku": level.sku,
                "region": level.region,
                "quantity": format(level.quantity, "f"),
                "available_on": level.available_on.isoformat() if level.available_on else None,
            }
            for level in levels
        ]
        return int(self._call("POST", "/stock", {"stock": body})["upserted"])

    def seed_products(self, products: Iterable[Product]) -> int:
        """Creates or replaces products; returns how many."""
        body = [
            {
                "sku": p.sku,
                "name": p.name,
                "product_line": p.product_line,
                "unit_of_measure": p.unit_of_measure,
                "active": p.active,
                "legal_entities": sorted(p.legal_entities),
            }
            for p in products
        ]
        return int(self._call("POST", "/products", {"products": body})["upserted"])

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        """Creates or replaces price books and all their entries; returns how many books."""
        body = [
            {
                "id": b.id,
                "name": b.name,
                "currency": b.currency,
                "legal_entity": b.legal_entity,
                "entries": [
                    {"sku": sku, "unit_price": format(price, "f")}
                    for sku, price in sorted(b.prices.items())
                ],
            }
            for b in price_books
        ]
        return int(self._call("POST", "/price-books", {"price_books": body})["upserted"])

    def stats(self) -> ErpStats:
        body = self._call("GET", "/stats")
        return ErpStats(**{f.name: body[f.name] for f in fields(ErpStats)})

    def sales_orders(self, external_id: str | None = None) -> list[dict[str, Any]]:
        """Order documents (as the REST API returns them), oldest first."""
        params = {"external_id": external_id} if external_id is not None else None
        items: list[dict[str, Any]] = self._call("GET", "/sales-orders", params=params)["items"]
        return items

    def clock(self) -> Clock:
        return Clock(**self._call("GET", "/clock"))

    def set_clock(
        self,
        *,
        invoice_delay_s: float | None = None,
        ship_delay_s: float | None = None,
        payment_delay_s: float | None = None,
    ) -> Clock:
        """Changes the given delays (seconds; a negative payment delay: never paid)."""
        changes = {
            name: value
            for name, value in (
                ("invoice_delay_s", invoice_delay_s),
                ("ship_delay_s", ship_delay_s),
                ("payment_delay_s", payment_delay_s),
            )
            if value is not None
        }
        return Clock(**self._call("PUT", "/clock", changes))

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/faults")

    def set_faults(self, **changes: float) -> dict[str, Any]:
        """Changes fault knobs (``error_rate``: 1 is the ERP down, ``latency_ms`` before every
        API answer, ``echo_rate``, ``throttle_rate``, ``timeout_rate``, ``drip_ms``,
        ``pad_bytes``, ``chunked``...; :class:`sandbox.http.Faults`)."""
        return self._call("PUT", "/faults", changes)

    def reset(self) -> None:
        """Empties every table and counter; the clock and faults stay as they are."""
        self._call("POST", "/reset")

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        response = self._client.request(method, CONTROL + path, json=body, params=params)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer
