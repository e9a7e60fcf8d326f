"""The ERP REST adapter against the ERP simulator on the live PostgreSQL: orders booked once
whatever the retries, every refusal and failure typed, and invoices, shipments and payments
written with their outbox rows in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from erp_outbox_publisher.logic import ErpOutboxRow, canonical_event
from revsync.connectors.erp import ErpAuthFailed, ErpConfig, ErpRestAdapter
from revsync.contracts.events import (
    CreditCheckOutcome,
    InvoicePosted,
    PaymentReceived,
    PricingOutcome,
    ShipmentConfirmed,
)
from revsync.errors import TransientError
from revsync.ports.erp import (
    Address,
    Customer,
    CustomerStatus,
    ErpOrderMissing,
    ErpRejected,
    IdempotencyConflict,
    PriceBook,
    Product,
    SalesOrderLine,
    SalesOrderRequest,
    SalesOrderStatus,
)
from revsync.settings import Settings
from runtime_support import wait_for

NEVER = 3600.0
CUSTOMERS = [
    Customer(
        "C-10001", "Acme Corp", "001A", "US01", CustomerStatus.ACTIVE, Decimal("10000"), "USD"
    ),
    Customer(
        "C-10002", "Held Inc", "001B", "US01", CustomerStatus.CREDIT_HOLD, Decimal("1E4"), "USD"
    ),
    Customer(
        "C-10003", "Closed LLC", "001C", "US01", CustomerStatus.BLOCKED, Decimal("1E4"), "USD"
    ),
]
PRODUCTS = [
    Product("SKU-A", "Pressure sensor", "SENSORS", "EA", True, frozenset({"US01"})),
    Product("SKU-B", "Cable tie", "ACCESSORIES", "EA", True, frozenset()),
    Product("SKU-OLD", "Retired gauge", "SENSORS", "EA", False, frozenset()),
]
PRICE_BOOK = PriceBook(
    "PB-US",
    "US standard",
    "USD",
    "US01",
    {"SKU-A": Decimal("100.0000"), "SKU-B": Decimal("0.1000"), "SKU-OLD": Decimal("5")},
)


@pytest.fixture(scope="module")
def simulator(settings: Settings) -> Iterator[ErpSimulator]:
    erp = ErpSimulator(
        settings.postgres_dsn.get_secret_value(),
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
    ).start()
    with ErpSandbox(erp.url) as control:
        control.seed_customers(CUSTOMERS)
        control.seed_products(PRODUCTS)
        control.seed_price_books([PRICE_BOOK])
    yield erp
    erp.stop()


@pytest.fixture
def control(simulator: ErpSimulator) -> Iterator[ErpSandbox]:
    with ErpSandbox(simulator.url) as sandbox:
        yield sandbox
        sandbox.set_faults(error_rate=0, throttle_rate=0, timeout_rate=0, latency_ms=0)
        sandbox.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)


@pytest.fixture
def erp(simulator: ErpSimulator) -> Iterator[ErpRestAdapter]:
    adapter = ErpRestAdapter(ErpConfig(simulator.url, SecretStr(DEFAULT_API_TOKEN), timeout_s=1.0))
    yield adapter
    adapter.close()


@pytest.fixture
def database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        yield db


def order_request(
    *lines: SalesOrderLine, customer_id: str = "C-10001", **changes: Any
) -> SalesOrderRequest:
    request = SalesOrderRequest(
        external_id=f"801{uuid.uuid4().hex[:15]}",
        customer_id=customer_id,
        currency="USD",
        price_book_id="PB-US",
        legal_entity="US01",
        region="NA",
        po_number="PO-7781",
        requested_delivery_date=date(2026, 12, 24),
        ship_to=Address("1 Market St", "San Francisco", "CA", "94105", "US"),
        lines=lines or (line(1, "SKU-A", "2", "100.0000", discount="10", tax="15.2000"),),
        correlation_id=f"corr-{uuid.uuid4()}",
    )
    return replace(request, **changes)


def line(
    number: int, sku: str, quantity: str, price: str, discount: str = "0", tax: str = "0"
) -> SalesOrderLine:
    return SalesOrderLine(
        number, sku, Decimal(quantity), Decimal(price), Decimal(discount), Decimal(tax)
    )


def orders_for(database: psycopg.Connection[Any], external_id: str) -> int:
    row = database.execute(
        "SELECT count(*) FROM erp.sales_orders WHERE external_id = %s", (external_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_master_data_reads_back_as_seeded(erp: ErpRestAdapter) -> None:
    assert erp.customer("C-10001") == replace(CUSTOMERS[0], credit_limit=Decimal("10000.0000"))
    assert erp.products(["SKU-A", "SKU-B", "SKU-NONE"]) == {p.sku: p for p in PRODUCTS[:2]}
    assert erp.products([]) == {}
    assert erp.price_book("PB-US") == replace(
        PRICE_BOOK, prices={**PRICE_BOOK.prices, "SKU-OLD": Decimal("5.0000")}
    )


def test_unknown_customer_and_price_book_are_none(erp: ErpRestAdapter) -> None:
    assert erp.customer("C-99999") is None
    assert erp.price_book("PB-NOPE") is None


def test_create_books_an_order_with_exact_amounts(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    request = order_request(
        line(1, "SKU-A", "2", "100.0000", discount="10", tax="15.2000"),
        line(2, "SKU-B", "3", "0.1000", tax="0.0300"),
    )
    order = erp.create_sales_order(request, idempotency_key=str(uuid.uuid4()))
    assert order.external_id == request.external_id
    assert order.number.startswith("SO-")
    assert order.status is SalesOrderStatus.OPEN
    assert (order.subtotal, order.tax_total) == (Decimal("190.3000"), Decimal("15.2300"))
    assert order.grand_total == Decimal("205.5300")
    assert order.credit_check is CreditCheckOutcome.APPROVED
    assert order.pricing_outcome is PricingOutcome.MATCHED
    assert order.created_at.tzinfo is not None
    [stored] = control.sales_orders(request.external_id)
    assert stored["correlation_id"] == request.correlation_id
    assert [entry["line_total"] for entry in stored["lines"]] == ["190.0000", "0.3000"]


def test_a_retry_after_a_timeout_returns_the_same_order(
    erp: ErpRestAdapter, control: ErpSandbox, database: psycopg.Connection[Any]
) -> None:
    request = order_request()
    key = str(uuid.uuid4())
    control.set_faults(timeout_rate=1, hang_s=2)
    with pytest.raises(TransientError, match="timed out"):
        erp.create_sales_order(request, key)
    control.set_faults(timeout_rate=0)
    replays = control.stats().idempotent_replays
    retried = erp.create_sales_order(request, key)
    [booked] = control.sales_orders(request.external_id)
    assert retried.id == booked["id"]
    assert control.stats().idempotent_replays == replays + 1
    assert orders_for(database, request.external_id) == 1


def test_concurrent_identical_creates_book_one_order(
    erp: ErpRestAdapter, database: psycopg.Connection[Any]
) -> None:
    request = order_request()
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        orders = list(pool.map(lambda _: erp.create_sales_order(request, key), range(8)))
    assert len({order.id for order in orders}) == 1
    assert orders_for(database, request.external_id) == 1


def test_concurrent_creates_under_different_keys_book_one_order(
    erp: ErpRestAdapter, database: psycopg.Connection[Any]
) -> None:
    request = order_request()
    with ThreadPoolExecutor(8) as pool:
        orders = list(
            pool.map(lambda _: erp.create_sales_order(request, str(uuid.uuid4())), range(8))
        )
    assert len({order.id for order in orders}) == 1
    assert orders_for(database, request.external_id) == 1


def test_a_new_key_for_a_booked_external_id_returns_the_existing_order(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    request = order_request()
    first = erp.create_sales_order(request, str(uuid.uuid4()))
    duplicates = control.stats().duplicate_external_ids
    again = erp.create_sales_order(replace(request, po_number="PO-other"), str(uuid.uuid4()))
    assert again == first
    assert control.stats().duplicate_external_ids == duplicates + 1


def test_a_key_reused_with_another_body_is_an_idempotency_conflict(
    erp: ErpRestAdapter,
) -> None:
    key = str(uuid.uuid4())
    erp.create_sales_order(order_request(), key)
    with pytest.raises(IdempotencyConflict, match="different request"):
        erp.create_sales_order(order_request(), key)


def test_throttling_is_transient_with_retry_after(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    control.set_faults(throttle_rate=1, retry_after_s=7)
    with pytest.raises(TransientError) as throttled:
        erp.create_sales_order(order_request(), str(uuid.uuid4()))
    assert throttled.value.retry_after == 7.0
    with pytest.raises(TransientError, match="429"):
        erp.customer("C-10001")


def test_server_errors_are_transient(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    control.set_faults(error_rate=1)
    with pytest.raises(TransientError, match="503") as failed:
        erp.products(["SKU-A"])
    assert failed.value.retry_after is None


def test_an_unreachable_erp_is_transient() -> None:
    adapter = ErpRestAdapter(ErpConfig("http://127.0.0.1:9", SecretStr("t"), timeout_s=1.0))
    with pytest.raises(TransientError, match="failed"):
        adapter.customer("C-10001")
    adapter.close()


def test_a_refused_token_is_auth_failed_without_the_token(simulator: ErpSimulator) -> None:
    token = "wrong-token-s3cr3t"
    adapter = ErpRestAdapter(ErpConfig(simulator.url, SecretStr(token)))
    with pytest.raises(ErpAuthFailed) as refused:
        adapter.customer("C-10001")
    assert isinstance(refused.value, TransientError)
    assert "401" in str(refused.value)
    assert token not in str(refused.value)
    adapter.close()


def test_a_create_without_idempotency_key_is_refused(simulator: ErpSimulator) -> None:
    answer = httpx.post(
        f"{simulator.url}/api/v1/sales-orders",
        json={},
        headers={"Authorization": f"Bearer {DEFAULT_API_TOKEN}"},
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "idempotency_key_required"


def test_cancel_an_open_order_once(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    request = order_request()
    booked = erp.create_sales_order(request, str(uuid.uuid4()))
    key = str(uuid.uuid4())
    cancelled = erp.cancel_sales_order(request.external_id, "customer changed mind", key)
    assert (cancelled.id, cancelled.status) == (booked.id, SalesOrderStatus.CANCELLED)
    assert erp.cancel_sales_order(request.external_id, "customer changed mind", key) == cancelled
    again = erp.cancel_sales_order(request.external_id, "duplicate event", str(uuid.uuid4()))
    assert again.status is SalesOrderStatus.CANCELLED
    assert control.sales_orders(request.external_id)[0]["cancel_reason"] == "customer changed mind"
    with pytest.raises(IdempotencyConflict):
        erp.cancel_sales_order(request.external_id, "another reason", key)


def test_cancel_of_an_unknown_order_is_not_ready(erp: ErpRestAdapter) -> None:
    with pytest.raises(ErpOrderMissing, match="801unknown"):
        erp.cancel_sales_order("801unknown", "no longer needed", str(uuid.uuid4()))


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
    assert all(e.crm_order_id != cancelled.external_id for e in events)
    for external_id, request in zip(ours, requests, strict=True):
        kinds = [type(e) for e in events if e.crm_order_id == external_id]
        assert kinds == [InvoicePosted, ShipmentConfirmed, PaymentReceived]
        assert {e.envelope.correlation_id for e in events if e.crm_order_id == external_id} == {
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
        "customer_id": "C-10001",
        "currency": "USD",
        "price_book_id": "PB-US",
        "legal_entity": "US01",
        "region": "NA",
        "ship_to": {"street": "1 Market St", "city": "San Francisco", "country_code": "US"},
        "lines": [
            {
                "line_number": 1,
                "sku": "SKU-B",
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
