"""The ERP's own clock: open orders get invoiced, invoiced orders shipped, invoices paid.

Each kind of step runs as one transaction per tick over a batch of due rows, writing the
business rows and their outbox rows together, so a relay never sees one without the other.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from sandbox.erp.orders import amount
from sandbox.erp.store import DEFAULT_SCHEMA, Connection, connect

log = logging.getLogger(__name__)

PAYMENT_TERMS = "NET30"
PAYMENT_TERM_DAYS = 30
CARRIERS = (
    ("UPS", "1Z", "https://www.ups.com/track?tracknum={}"),
    ("FedEx", "7", "https://www.fedex.com/fedextrack/?trknbr={}"),
    ("DHL Express", "JD", "https://www.dhl.com/en/express/tracking.html?AWB={}"),
)
"""(carrier, tracking number prefix, tracking URL template)."""
WAREHOUSES = {"NA": "WH-RENO", "EMEA": "WH-VENLO", "APAC": "WH-SINGAPORE"}
DEFAULT_WAREHOUSE = "WH-CENTRAL"
PAYMENT_METHODS = ("wire_transfer", "ach", "card", "check", "direct_debit")


@dataclass
class Clock:
    """How long each step waits, in seconds; a negative payment delay means never paid."""

    invoice_delay_s: float = 0.5
    ship_delay_s: float = 1.0
    payment_delay_s: float = -1.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, changes: dict[str, Any]) -> None:
        """Applies ``changes`` all or nothing; unknown names and negative invoice or ship
        delays are refused."""
        known = set(self.settings())
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown clock settings {unknown}; known: {sorted(known)}")
        values = {name: float(value) for name, value in changes.items()}
        for name in ("invoice_delay_s", "ship_delay_s"):
            if values.get(name, 0.0) < 0:
                raise ValueError(f"{name} must be >= 0, got {values[name]}")
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def settings(self) -> dict[str, float]:
        with self._lock:
            return {
                "invoice_delay_s": self.invoice_delay_s,
                "ship_delay_s": self.ship_delay_s,
                "payment_delay_s": self.payment_delay_s,
            }


def sales_order_reference(order: Mapping[str, Any]) -> dict[str, Any]:
    """What every outbox payload says about its order; ``external_id`` is the CRM order id."""
    return {
        "id": order["id"],
        "number": order["number"],
        "external_id": order["external_id"],
        "customer_id": order["customer_id"],
        "crm_account_id": order["crm_account_id"],
        "legal_entity": order["legal_entity"],
        "region": order["region"],
        "currency": order["currency"],
        "correlation_id": order["correlation_id"],
    }


def _outbox_row(
    kind: str, event_type: str, order: Mapping[str, Any], payload: dict[str, Any]
) -> tuple[Any, ...]:
    payload["sales_order"] = sales_order_reference(order)
    return (uuid.uuid4(), kind, order["external_id"], event_type, Jsonb(payload))


INSERT_OUTBOX = (
    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES (%s, %s, %s, %s, %s)"
)


class Progression:
    """Moves orders along on a background thread, one tick every ``tick_s``."""

    def __init__(
        self,
        dsn: str,
        clock: Clock,
        tick_s: float = 0.1,
        batch_size: int = 500,
        schema: str = DEFAULT_SCHEMA,
    ) -> None:
        self.clock = clock
        self._dsn = dsn
        self._schema = schema
        self._tick_s = tick_s
        self._batch_size = batch_size
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="erp-progression", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        connection: Connection | None = None
        while not self._stopping.wait(self._tick_s):
            try:
                if connection is None or connection.closed:
                    connection = connect(self._dsn, self._schema)
                self.advance(connection)
            except psycopg.Error as error:
                # The database restarting or a reset racing a tick: try again next tick.
                log.warning("erp progression tick failed: %s", error)
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def advance(self, connection: Connection) -> dict[str, int]:
        """One tick: how many invoices, shipments and payments it made."""
        clock = self.clock.settings()
        made = {
            "invoices": self._invoice(connection, clock["invoice_delay_s"]),
            "shipments": self._ship(connection, clock["ship_delay_s"]),
            "payments": 0,
        }
        if clock["payment_delay_s"] >= 0:
            made["payments"] = self._collect(connection, clock["payment_delay_s"])
        return made

    def _due(self, connection: Connection, status: str, delay_s: float) -> list[DictRow]:
        return connection.execute(
            "SELECT o.*, c.crm_account_id FROM sales_orders o "
            "JOIN customers c ON c.id = o.customer_id "
            "WHERE o.status = %s AND o.status_changed_at <= now() - make_interval(secs => %s) "
            "ORDER BY o.status_changed_at LIMIT %s FOR UPDATE OF o SKIP LOCKED",
            (status, delay_s, self._batch_size),
        ).fetchall()

    @staticmethod
    def _numbers(connection: Connection, sequence: str, count: int) -> list[DictRow]:
        """``count`` fresh document numbers, each with the transaction's time."""
        return connection.execute(
            "SELECT now() AS at, nextval(%s::regclass) AS n FROM generate_series(1, %s)",
            (sequence, count),
        ).fetchall()

    def _invoice(self, connection: Connection, delay_s: float) -> int:
        with connection.transaction():
            orders = self._due(connection, "open", delay_s)
            if not orders:
                return 0
            invoices, outbox = [], []
            for order, number in zip(
                orders, self._numbers(connection, "invoice_numbers", len(orders)), strict=True
            ):
                posted_at = number["at"]
                invoice = {
                    "id": f"INV-{uuid.uuid4()}",
                    "number": f"INV-{number['n']:06d}",
                    "sales_order_id": order["id"],
                    "currency": order["currency"],
                    "subtotal": order["subtotal"],
                    "tax_total": order["tax_total"],
                    "grand_total": order["grand_total"],
                    "amount_due": order["grand_total"],
                    "posting_date": posted_at.date(),
                    "due_date": posted_at.date() + timedelta(days=PAYMENT_TERM_DAYS),
                    "payment_terms": PAYMENT_TERMS,
                    "posted_at": posted_at,
                }
                invoices.append(invoice)
                outbox.append(_outbox_row("invoice", "InvoicePosted", order, _invoice_doc(invoice)))
            connection.cursor().executemany(
                "INSERT INTO invoices (id, number, sales_order_id, currency, subtotal, "
                "tax_total, grand_total, amount_due, posting_date, due_date, payment_terms, "
                "status, posted_at) VALUES (%(id)s, %(number)s, %(sales_order_id)s, "
                "%(currency)s, %(subtotal)s, %(tax_total)s, %(grand_total)s, %(amount_due)s, "
                "%(posting_date)s, %(due_date)s, %(payment_terms)s, 'posted', %(posted_at)s)",
                invoices,
            )
            connection.cursor().executemany(INSERT_OUTBOX, outbox)
            self._move(connection, orders, "invoiced")
        return len(orders)

    def _ship(self, connection: Connection, delay_s: float) -> int:
        with connection.transaction():
            orders = self._due(connection, "invoiced", delay_s)
            if not orders:
                return 0
            lines: dict[str, list[dict[str, Any]]] = {}
            for line in connection.execute(
                "SELECT sales_order_id, line_number, sku, quantity FROM sales_order_lines "
                "WHERE sales_order_id = ANY(%s) ORDER BY sales_order_id, line_number",
                ([order["id"] for order in orders],),
            ):
                lines.setdefault(line["sales_order_id"], []).append(
                    {
                        "line_number": line["line_number"],
                        "sku": line["sku"],
                        "quantity": amount(line["quantity"]),
                    }
                )
            shipments, outbox = [], []
            for order, number in zip(
                orders, self._numbers(connection, "shipment_numbers", len(orders)), strict=True
            ):
                carrier, prefix, url = CARRIERS[number["n"] % len(CARRIERS)]
                tracking_number = f"{prefix}{uuid.uuid4().hex[:14].upper()}"
                shipment = {
                    "id": f"SH-{uuid.uuid4()}",
                    "number": f"SH-{number['n']:06d}",
                    "sales_order_id": order["id"],
                    "carrier": carrier,
                    "tracking_number": tracking_number,
                    "tracking_url": url.format(tracking_number),
                    "completeness": "complete",
                    "warehouse": WAREHOUSES.get(order["region"], DEFAULT_WAREHOUSE),
                    "lines": lines.get(order["id"], []),
                    "shipped_at": number["at"],
                }
                shipments.append({**shipment, "lines": Jsonb(shipment["lines"])})
                document = {**shipment, "shipped_at": shipment["shipped_at"].isoformat()}
                del document["sales_order_id"]
                outbox.append(
                    _outbox_row("shipment", "ShipmentConfirmed", order, {"shipment": document})
                )
            connection.cursor().executemany(
                "INSERT INTO shipments (id, number, sales_order_id, carrier, "
                "tracking_number, tracking_url, completeness, warehouse, lines, shipped_at) "
                "VALUES (%(id)s, %(number)s, %(sales_order_id)s, %(carrier)s, "
                "%(tracking_number)s, %(tracking_url)s, %(completeness)s, %(warehouse)s, "
                "%(lines)s, %(shipped_at)s)",
                shipments,
            )
            connection.cursor().executemany(INSERT_OUTBOX, outbox)
            self._move(connection, orders, "shipped")
        return len(orders)

    def _collect(self, connection: Connection, delay_s: float) -> int:
        with connection.transaction():
            invoices = connection.execute(
                "SELECT i.*, o.id AS order_id, o.number AS order_number, o.external_id, "
                "o.customer_id, c.crm_account_id, o.legal_entity, o.region, o.correlation_id "
                "FROM invoices i JOIN sales_orders o ON o.id = i.sales_order_id "
                "JOIN customers c ON c.id = o.customer_id "
                "WHERE i.status = 'posted' AND i.posted_at <= now() - make_interval(secs => %s) "
                "ORDER BY i.posted_at LIMIT %s FOR UPDATE OF i SKIP LOCKED",
                (delay_s, self._batch_size),
            ).fetchall()
            if not invoices:
                return 0
            payments, outbox = [], []
            for invoice, number in zip(
                invoices,
                self._numbers(connection, "payment_numbers", len(invoices)),
                strict=True,
            ):
                payment = {
                    "id": f"PAY-{uuid.uuid4()}",
                    "number": f"PAY-{number['n']:06d}",
                    "invoice_id": invoice["id"],
                    "amount": invoice["amount_due"],
                    "currency": invoice["currency"],
                    "method": PAYMENT_METHODS[number["n"] % len(PAYMENT_METHODS)],
                    "received_at": number["at"],
                }
                payments.append(payment)
                order = {**invoice, "id": invoice["order_id"], "number": invoice["order_number"]}
                document = {
                    "payment": {
                        "id": payment["id"],
                        "number": payment["number"],
                        "amount": amount(payment["amount"]),
                        "currency": payment["currency"],
                        "method": payment["method"],
                        "received_at": payment["received_at"].isoformat(),
                    },
                    "invoice": {
                        "id": invoice["id"],
                        "number": invoice["number"],
                        "grand_total": amount(invoice["grand_total"]),
                        "amount_due": amount(invoice["amount_due"] - payment["amount"]),
                    },
                }
                outbox.append(_outbox_row("payment", "PaymentReceived", order, document))
            connection.cursor().executemany(
                "INSERT INTO payments (id, number, invoice_id, amount, currency, method, "
                "received_at) VALUES (%(id)s, %(number)s, %(invoice_id)s, %(amount)s, "
                "%(currency)s, %(method)s, %(received_at)s)",
                payments,
            )
            connection.cursor().executemany(INSERT_OUTBOX, outbox)
            connection.execute(
                "UPDATE invoices SET amount_due = 0, status = 'paid' WHERE id = ANY(%s)",
                ([invoice["id"] for invoice in invoices],),
            )
        return len(invoices)

    @staticmethod
    def _move(connection: Connection, orders: list[DictRow], status: str) -> None:
        connection.execute(
            "UPDATE sales_orders SET status = %s, status_changed_at = now() WHERE id = ANY(%s)",
            (status, [order["id"] for order in orders]),
        )


def _invoice_doc(invoice: dict[str, Any]) -> dict[str, Any]:
    """The ERP-native invoice document carried in an ``InvoicePosted`` outbox row."""
    return {
        "invoice": {
            "id": invoice["id"],
            "number": invoice["number"],
            "status": "posted",
            "currency": invoice["currency"],
            "subtotal": amount(invoice["subtotal"]),
            "tax_total": amount(invoice["tax_total"]),
            "grand_total": amount(invoice["grand_total"]),
            "amount_due": amount(invoice["amount_due"]),
            "posting_date": invoice["posting_date"].isoformat(),
            "due_date": invoice["due_date"].isoformat(),
            "payment_terms": invoice["payment_terms"],
            "posted_at": invoice["posted_at"].isoformat(),
        }
    }
