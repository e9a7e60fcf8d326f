"""The ERP simulator itself: invoices, shipments and payments written with their outbox
rows in one transaction, and its idempotency answers over plain HTTP."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from erp_outbox_publisher.logic import ErpOutboxRow, canonical_event
from port_contracts import ACTIVE, PRICE_BOOK, order_request
from revsync.connectors.erp import ErpRestAdapter
from revsync.contracts.events import InvoicePosted, PaymentReceived, ShipmentConfirmed
from revsync.ports.erp import ErpRejected
from runtime_support import wait_for


def test_a_create_without_idempotency_key_is_refused(simulator: ErpSimulator) -> None:
    answer = httpx.post(
        f"{simulator.url}/api/v1/sales-orders",
        json={},
        headers={"Authorization": f"Bearer {DEFAULT_API_TOKEN}"},
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "idempotency_key_required"


def test_progression_writes_documents_and_outbox_rows_together(
    erp: ErpRestAdapter, control: ErpSandbox, database: psycopg.Connection[Any]
) -> None:
    requests = [order_request() for _ in range(3)]
    for request in requests:
        erp.create_sales_order(request, str(uuid.uuid4()))
    ours = [request.external_id for request in requests]
    cancelled = order_request()
    erp.create_sales_order(cancelled, str(uuid.uuid4()))
    erp.cancel_sales_order(cancelled.external_id, "not wanted", str(uuid.uuid4()))

    def statuses() -> set[str]:
        return {
            row[0]
            for row in database.execute(
                "SELECT status FROM erp.sales_orders WHERE external_id = ANY(%s)", (ours,)
            )
        }

    control.set_clock(invoice_delay_s=0, ship_delay_s=0)
    wait_for(lambda: statuses() == {"shipped"}, timeout_s=10)
    with pytest.raises(ErpRejected) as refused:
        erp.cancel_sales_order(ours[0], "too late", str(uuid.uuid4()))
    assert refused.value.code == "ORDER_NOT_CANCELLABLE"
    # Same inserting transaction (xmin) for each document and its outbox row: neither
    # can ever be seen without the other.
    for table, document in (("invoices", "invoice"), ("shipments", "shipment")):
        pairs = database.execute(
            f"SELECT d.xmin::text, o.xmin::text FROM erp.{table} d "  # noqa: S608 - fixed names
            "JOIN erp.sales_orders s ON s.id = d.sales_order_id "
            f"LEFT JOIN erp.outbox o ON o.payload -> '{document}' ->> 'id' = d.id "
            "WHERE s.external_id = ANY(%s)",
            (ours,),
        ).fetchall()
        assert len(pairs) == 3
        assert all(business == outbox for business, outbox in pairs), table

    control.set_clock(payment_delay_s=0)
    wait_for(lambda: _payments(database, ours) == 3, timeout_s=10)
    pairs = database.execute(
        "SELECT p.xmin::text, o.xmin::text FROM erp.payments p "
        "LEFT JOIN erp.outbox o ON o.payload -> 'payment' ->> 'id' = p.id "
        "WHERE o.aggregateid = ANY(%s)",
        (ours,),
    ).fetchall()
    assert len(pairs) == 3
    assert all(business == outbox for business, outbox in pairs)

    rows = database.execute(
        "SELECT id, aggregatetype, aggregateid, type, payload, created_at FROM erp.outbox "
        "WHERE aggregateid = ANY(%s) ORDER BY seq",
        ([*ours, cancelled.external_id],),
    ).fetchall()
    events = [canonical_event(ErpOutboxRow(*row)) for row in rows]
    assert all(e.key != cancelled.external_id for e in events)
    for external_id, request in zip(ours, requests, strict=True):
        kinds = [type(e) for e in events if e.key == external_id]
        assert kinds == [InvoicePosted, ShipmentConfirmed, PaymentReceived]
        assert {e.envelope.correlation_id for e in events if e.key == external_id} == {
            request.correlation_id
        }
    invoice = next(e for e in events if isinstance(e, InvoicePosted))
    assert (invoice.crm_account_id, invoice.grand_total) == ("001A", Decimal("205.2000"))
    assert (invoice.due_date - invoice.posting_date).days == 30
    payment = next(e for e in events if isinstance(e, PaymentReceived))
    assert (payment.amount, payment.remaining_balance) == (Decimal("205.2000"), Decimal(0))
    stats = control.stats()
    assert stats.outbox_rows == stats.invoices + stats.shipments + stats.payments


def _payments(database: psycopg.Connection[Any], external_ids: list[str]) -> int:
    row = database.execute(
        "SELECT count(*) FROM erp.outbox WHERE type = 'PaymentReceived' AND aggregateid = ANY(%s)",
        (external_ids,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_replayed_create_answers_200_and_says_so(simulator: ErpSimulator) -> None:
    body = {
        "external_id": f"801{uuid.uuid4().hex[:15]}",
        "customer_id": ACTIVE.id,
        "currency": "USD",
        "price_book_id": PRICE_BOOK.id,
        "legal_entity": "US01",
        "region": "NA",
        "ship_to": {"street": "1 Market St", "city": "San Francisco", "country_code": "US"},
        "lines": [
            {
                "line_number": 1,
                "sku": "PC-TIE",
                "quantity": "10",
                "unit_price": "0.1000",
                "discount_amount": "0",
                "tax_amount": "0.0800",
            }
        ],
    }
    headers = {"Authorization": f"Bearer {DEFAULT_API_TOKEN}", "Idempotency-Key": str(uuid.uuid4())}
    url = f"{simulator.url}/api/v1/sales-orders"
    first = httpx.post(url, json=body, headers=headers)
    again = httpx.post(url, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert first.json()["grand_total"] == "1.0800"
