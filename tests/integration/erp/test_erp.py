"""The ERP REST adapter against the ERP simulator on the live PostgreSQL: orders booked once
whatever the retries, every refusal and failure typed. The simulator's own behaviour (its
documents and outbox rows, its idempotency answers) is in test_erp_simulator.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator
from sandbox.http import JsonServer, Request, Response

from leaks import told
from port_contracts import ACTIVE, PRICE_BOOK, PRODUCTS, a_draft, a_key, line, order_request
from revsync.connectors.erp import ErpAuthFailed, ErpConfig, ErpRestAdapter, ErpUnexpectedResponse
from revsync.connectors.http import DEFAULT_MAX_RESPONSE_BYTES, DeadlineExceeded, ResponseTooLarge
from revsync.contracts.events import CreditCheckOutcome, PricingOutcome
from revsync.errors import ErrorClass, TransientError, classify
from revsync.ports.erp import (
    CustomerQuery,
    ErpOrderMissing,
    ErpRejected,
    IdempotencyConflict,
    SalesOrderStatus,
)


def orders_for(database: psycopg.Connection[Any], external_id: str) -> int:
    row = database.execute(
        "SELECT count(*) FROM erp.sales_orders WHERE external_id = %s", (external_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_master_data_reads_back_as_seeded(erp: ErpRestAdapter) -> None:
    assert erp.customer(ACTIVE.id) == replace(ACTIVE, credit_limit=Decimal("10000.0000"))
    assert erp.products(["PC-SENSOR", "PC-TIE", "PC-NONE"]) == {p.sku: p for p in PRODUCTS[:2]}
    assert erp.products([]) == {}
    assert erp.price_book(PRICE_BOOK.id) == replace(
        PRICE_BOOK, prices={**PRICE_BOOK.prices, "PC-OLD": Decimal("5.0000")}
    )


def test_unknown_customer_and_price_book_are_none(erp: ErpRestAdapter) -> None:
    assert erp.customer("C-PC-NONE") is None
    assert erp.price_book("PB-NOPE") is None


def test_create_books_an_order_with_exact_amounts(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    request = order_request(
        line(1, "PC-SENSOR", "2", "100.0000", discount="10", tax="15.2000"),
        line(2, "PC-TIE", "3", "0.1000", tax="0.0300"),
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
    with pytest.raises(IdempotencyConflict, match="different request") as conflict:
        erp.create_sales_order(order_request(), key)
    assert str(conflict.value).startswith(
        "erp: HTTP 422 on POST /api/v1/sales-orders (idempotency_key_reused): "
    )
    assert key not in told(conflict.value)  # the ERP's message quotes it; ours does not


def test_a_refusal_quoting_the_order_back_is_told_by_status_and_code_alone(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    """No customer data in errors: the ERP's error body repeats the ship-to address."""
    request = order_request()
    control.set_faults(echo_rate=1)
    with pytest.raises(ErpUnexpectedResponse) as refused:
        erp.create_sales_order(request, str(uuid.uuid4()))
    assert str(refused.value) == "erp: HTTP 400 on POST /api/v1/sales-orders (invalid_request)"
    assert request.ship_to.street not in told(refused.value)
    assert "94105" not in told(refused.value)  # the postal code


def test_a_business_refusal_keeps_the_erps_reason_for_the_crm_user_out_of_its_text(
    erp: ErpRestAdapter,
) -> None:
    request = order_request(customer_id="C-PC-UNKNOWN")
    with pytest.raises(ErpRejected) as refused:
        erp.create_sales_order(request, str(uuid.uuid4()))
    assert str(refused.value) == "erp rejected: CUSTOMER_NOT_MASTERED"
    assert "C-PC-UNKNOWN" in refused.value.message  # what the ERP said, written back to the CRM
    assert "C-PC-UNKNOWN" not in told(refused.value)


def test_a_malformed_answer_names_the_missing_field_or_the_kind_of_fault_never_a_value() -> None:
    """No customer data in errors: a value that does not fit is not quoted."""
    odd: dict[str, Any] = {
        "id": "C-ODD",
        "name": "Acme Corp",
        "crm_account_id": None,
        "legal_entity": "US01",
        "status": "ap@acme.example",  # the contact's email where the status belongs
        "credit_limit": "100.0000",
        "currency": "USD",
        "number": "100001",
        "payment_terms": "NET30",
        "blocks": [],
        "tax_id": None,
        "duns": None,
        "country_code": "US",
    }
    answers = {"C-ODD": odd, "C-SHORT": {"id": "C-SHORT"}}
    server = JsonServer()
    server.route(
        "GET",
        r"/api/v1/customers/(?P<id>[^/]+)",
        lambda request: Response(body=answers[request.params["id"]]),
    )
    server.start()
    adapter = ErpRestAdapter(ErpConfig(server.url, SecretStr("t"), timeout_s=1.0))
    try:
        with pytest.raises(ErpUnexpectedResponse) as wrong_value:
            adapter.customer("C-ODD")
        with pytest.raises(ErpUnexpectedResponse) as missing:
            adapter.customer("C-SHORT")
    finally:
        adapter.close()
        server.stop()
    assert str(wrong_value.value) == (
        "erp: malformed answer to GET /api/v1/customers/C-ODD: "
        "a value of the wrong type or form (ValueError)"
    )
    assert "ap@acme.example" not in told(wrong_value.value)
    assert str(missing.value) == (
        "erp: malformed answer to GET /api/v1/customers/C-SHORT: no field 'name'"
    )


def test_a_customer_upsert_quoted_back_is_told_by_status_and_code_alone(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    """No customer data in errors: the ERP's error body repeats the name, tax id and street."""
    draft = a_draft()
    control.set_faults(echo_rate=1)
    with pytest.raises(ErpUnexpectedResponse) as refused:
        erp.upsert_customer(draft, a_key())
    path = f"/api/v1/customers/by-external-id/{draft.crm_account_id}"
    assert str(refused.value) == f"erp: HTTP 400 on PUT {path} (invalid_request)"
    assert draft.billing_address is not None
    for quoted in (draft.name, str(draft.tax_id), draft.billing_address.street):
        assert quoted not in told(refused.value)


def test_a_refused_customer_names_the_field_and_keeps_the_erps_reason_out_of_its_text(
    erp: ErpRestAdapter,
) -> None:
    draft = a_draft(duns="15-048-37X2")
    with pytest.raises(ErpRejected) as refused:
        erp.upsert_customer(draft, a_key())
    assert str(refused.value) == "erp rejected: INVALID_CUSTOMER (field: duns)"
    assert refused.value.message  # what the ERP said, for the person fixing the account
    assert "37X2" not in told(refused.value)


CUSTOMER: dict[str, Any] = {
    "id": "C-100001",
    "name": "Acme Corp",
    "crm_account_id": "001A",
    "legal_entity": "US01",
    "status": "active",
    "credit_limit": "100.0000",
    "currency": "USD",
    "number": "100001",
    "payment_terms": "NET30",
    "blocks": [],
    "tax_id": None,
    "duns": None,
    "country_code": "US",
}
"""A customer as the ERP answers it."""
EMAIL = "ap@acme.example"


def _searched(request: Request) -> Response:
    if "external_id" in request.query:
        return Response(body={"items": [CUSTOMER, {**CUSTOMER, "id": "C-100002"}]})
    return Response(body={"items": [{**CUSTOMER, "blocks": EMAIL}]})


def _upserted(request: Request) -> Response:
    if request.params["id"] == "001REFUSED":
        refusal = {"code": "INVALID_CUSTOMER", "message": "no", "field": f"tax id of {EMAIL}"}
        return Response(422, refusal)
    return Response(201, {"created": "yes", "customer": CUSTOMER})


def test_malformed_customer_answers_name_the_field_or_the_kind_of_fault_never_a_value() -> None:
    server = JsonServer()
    server.route("GET", r"/api/v1/customers", _searched)
    server.route("PUT", r"/api/v1/customers/by-external-id/(?P<id>[^/]+)", _upserted)
    server.route(
        "GET",
        r"/api/v1/customers/(?P<id>[^/]+)/credit",
        lambda _: Response(body={k: CUSTOMER[k] for k in ("status", "currency", "credit_limit")}),
    )
    stock = {"sku": "PC-TIE", "region": "NA", "quantity": "1.0000", "available_on": EMAIL}
    server.route("POST", r"/api/v1/availability", lambda _: Response(body={"items": [stock]}))
    server.start()
    adapter = ErpRestAdapter(ErpConfig(server.url, SecretStr("t"), timeout_s=1.0))
    failures: list[BaseException] = []
    try:
        for call in (
            lambda: adapter.customer_by_account("001A"),
            lambda: adapter.find_customers(CustomerQuery(tax_id="12-3456789")),
            lambda: adapter.upsert_customer(a_draft(crm_account_id="001ODD"), a_key()),
            lambda: adapter.credit("C-100001"),
            lambda: adapter.stock(["PC-TIE"], "NA"),
        ):
            with pytest.raises(ErpUnexpectedResponse) as malformed:
                call()
            failures.append(malformed.value)
        with pytest.raises(ErpRejected) as refused:
            adapter.upsert_customer(a_draft(crm_account_id="001REFUSED"), a_key())
    finally:
        adapter.close()
        server.stop()
    wrong_kind = "a value of the wrong type or form"
    assert [str(failure) for failure in failures] == [
        "erp: GET /api/v1/customers answered 2 customers for one external id",
        f"erp: malformed answer to GET /api/v1/customers: {wrong_kind} (TypeError)",
        "erp: malformed answer to PUT /api/v1/customers/by-external-id/001ODD: "
        f"{wrong_kind} (TypeError)",
        "erp: malformed answer to GET /api/v1/customers/C-100001/credit: no field 'customer_id'",
        f"erp: malformed answer to POST /api/v1/availability: {wrong_kind} (ValueError)",
    ]
    assert all(EMAIL not in told(failure) for failure in failures)
    assert (refused.value.code, refused.value.field) == ("INVALID_CUSTOMER", None)
    assert EMAIL not in told(refused.value)


CUSTOMER_CALLS: dict[str, Callable[[ErpRestAdapter], object]] = {
    "by-account": lambda erp: erp.customer_by_account(str(ACTIVE.crm_account_id)),
    "search": lambda erp: erp.find_customers(CustomerQuery(tax_id=ACTIVE.tax_id)),
    "upsert": lambda erp: erp.upsert_customer(a_draft(), a_key()),
    "credit": lambda erp: erp.credit(ACTIVE.id),
    "stock": lambda erp: erp.stock(["PC-TIE"], "NA"),
}


@pytest.mark.parametrize("call", CUSTOMER_CALLS.values(), ids=CUSTOMER_CALLS)
def test_an_erp_that_is_down_fails_every_customer_call_as_transient(
    erp: ErpRestAdapter, control: ErpSandbox, call: Callable[[ErpRestAdapter], object]
) -> None:
    control.set_faults(error_rate=1)
    with pytest.raises(TransientError, match="503") as failed:
        call(erp)
    assert classify(failed.value) is ErrorClass.TRANSIENT
    control.set_faults(error_rate=0)
    call(erp)


def test_latency_past_the_deadline_is_transient(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    control.set_faults(latency_ms=1500)  # the adapter's deadline is 1 s
    with pytest.raises(TransientError, match="timed out") as late:
        erp.credit(ACTIVE.id)
    assert classify(late.value) is ErrorClass.TRANSIENT


def test_throttling_is_transient_with_retry_after(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    control.set_faults(throttle_rate=1, retry_after_s=7)
    with pytest.raises(TransientError) as throttled:
        erp.create_sales_order(order_request(), str(uuid.uuid4()))
    assert throttled.value.retry_after == 7.0
    with pytest.raises(TransientError, match="429"):
        erp.customer(ACTIVE.id)


def test_server_errors_are_transient(erp: ErpRestAdapter, control: ErpSandbox) -> None:
    control.set_faults(error_rate=1)
    with pytest.raises(TransientError, match="503") as failed:
        erp.products(["PC-SENSOR"])
    assert failed.value.retry_after is None


def test_an_answer_dripped_in_past_the_deadline_is_transient(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    # Every read gets bytes within 0.1 s, far inside the 1 s timeout; the whole answer would
    # take four seconds.
    control.set_faults(drip_ms=100, drip_bytes=50, pad_bytes=2000)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as late:
        erp.customer(ACTIVE.id)
    assert time.monotonic() - started < 2.0
    assert classify(late.value) is ErrorClass.TRANSIENT
    message = str(late.value)
    assert message.startswith(f"erp: GET /api/v1/customers/{ACTIVE.id} timed out: the 1 s ")
    assert ACTIVE.name not in message
    control.set_faults(drip_ms=0, pad_bytes=0)
    assert erp.customer(ACTIVE.id) is not None


@pytest.mark.parametrize(
    ("chunked", "found"),
    [(False, "declares"), (True, "passed")],
    ids=["by-content-length", "by-streamed-bytes"],
)
def test_an_answer_larger_than_the_cap_is_transient_and_not_kept(
    erp: ErpRestAdapter, control: ErpSandbox, chunked: bool, found: str
) -> None:
    control.set_faults(pad_bytes=DEFAULT_MAX_RESPONSE_BYTES, chunked=chunked)
    with pytest.raises(ResponseTooLarge) as too_large:
        erp.products(["PC-SENSOR"])
    assert classify(too_large.value) is ErrorClass.TRANSIENT
    message = str(too_large.value)
    assert message.startswith(f"erp: GET /api/v1/products: the answer (HTTP 200) {found} ")
    assert f"the {DEFAULT_MAX_RESPONSE_BYTES}-byte cap" in message
    assert PRODUCTS[0].name not in message
    control.set_faults(pad_bytes=0)
    assert set(erp.products(["PC-SENSOR"])) == {"PC-SENSOR"}


def test_the_size_cap_is_the_adapters_own(simulator: ErpSimulator) -> None:
    config = ErpConfig(simulator.url, SecretStr(DEFAULT_API_TOKEN), max_response_bytes=64)
    adapter = ErpRestAdapter(config)
    with pytest.raises(ResponseTooLarge, match="the 64-byte cap"):
        adapter.customer(ACTIVE.id)
    adapter.close()


def test_an_unreachable_erp_is_transient() -> None:
    adapter = ErpRestAdapter(ErpConfig("http://127.0.0.1:9", SecretStr("t"), timeout_s=1.0))
    with pytest.raises(TransientError, match="failed"):
        adapter.customer(ACTIVE.id)
    adapter.close()


def test_a_refused_token_is_auth_failed_without_the_token(simulator: ErpSimulator) -> None:
    token = "wrong-token-s3cr3t"
    adapter = ErpRestAdapter(ErpConfig(simulator.url, SecretStr(token)))
    with pytest.raises(ErpAuthFailed) as refused:
        adapter.customer(ACTIVE.id)
    assert isinstance(refused.value, TransientError)
    assert "401" in str(refused.value)
    assert token not in str(refused.value)
    adapter.close()


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
