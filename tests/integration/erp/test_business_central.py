"""The Business Central adapter on the Business Central simulator, on the live PostgreSQL: the
whole ERP port contract, then what is Business Central's own: Entra tokens refused and
refreshed, one order for concurrent creates and for a create whose answer was lost,
throttling, stale ETags, every error mapped, paging, and the simulator's webhooks (the
handshake, expiry, renewal, retries, deletion, collection notifications)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from sandbox.business_central import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT_ID,
    SCOPE,
    BusinessCentralSandbox,
    BusinessCentralSimulator,
)
from sandbox.erp import ErpSandbox
from sandbox.http import Faults

from erp_sandbox_control import NEVER, SandboxErpControl
from port_contracts import (
    ACTIVE,
    BLOCKED,
    HELD,
    PRICE_BOOK,
    PRODUCTS,
    ErpContract,
    a_draft,
    a_key,
    line,
    order_request,
)
from revsync.connectors.business_central import (
    BusinessCentralAdapter,
    BusinessCentralAuthFailed,
    BusinessCentralConfig,
    BusinessCentralUnexpected,
)
from revsync.errors import ErrorClass, TransientError, classify
from revsync.ports.erp import Product, SalesOrderStatus
from revsync.settings import Settings
from runtime_support import wait_for

pytestmark = pytest.mark.integration

SCHEMA = "business_central_tests"
"""The tests' own books, apart from the demo's and the harness's (``business_central``)."""


@pytest.fixture(scope="module")
def simulator(settings: Settings) -> Iterator[BusinessCentralSimulator]:
    bc = BusinessCentralSimulator(
        settings.postgres_dsn.get_secret_value(),
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
        notification_interval_s=3600,
        schema=SCHEMA,
    ).start()
    yield bc
    bc.stop()


@pytest.fixture
def knobs(simulator: BusinessCentralSimulator) -> Iterator[BusinessCentralSandbox]:
    """The simulator's own knobs, set back after each test."""
    with BusinessCentralSandbox(simulator.url) as sandbox:
        before = sandbox.settings()
        yield sandbox
        sandbox.configure(**before)
        with ErpSandbox(simulator.url) as books:
            books.set_faults(**asdict(Faults()))
            books.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)


def config_for(simulator: BusinessCentralSimulator, **changes: Any) -> BusinessCentralConfig:
    config = BusinessCentralConfig(
        api_url=simulator.api_url,
        token_url=simulator.token_url,
        tenant_id=DEFAULT_TENANT_ID,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
        companies={c.legal_entity: c.id for c in simulator.companies.values()},
        timeout_s=5.0,
        duplicate_settle_s=0.05,
    )
    return replace(config, **changes)


@pytest.fixture
def adapter(simulator: BusinessCentralSimulator) -> Iterator[BusinessCentralAdapter]:
    erp = BusinessCentralAdapter(config_for(simulator))
    yield erp
    erp.close()


@pytest.fixture
def books(simulator: BusinessCentralSimulator) -> Iterator[ErpSandbox]:
    with ErpSandbox(simulator.url) as sandbox:
        sandbox.seed_customers([ACTIVE, HELD, BLOCKED])
        sandbox.seed_products(PRODUCTS)
        sandbox.seed_price_books([PRICE_BOOK])
        yield sandbox


class TestBusinessCentralAdapter(ErpContract):
    @pytest.fixture
    def erp(self, adapter: BusinessCentralAdapter) -> BusinessCentralAdapter:
        return adapter

    @pytest.fixture
    def erp_control(self, simulator: BusinessCentralSimulator) -> Iterator[SandboxErpControl]:
        with ErpSandbox(simulator.url) as sandbox:
            yield SandboxErpControl(sandbox)


# --- helpers ------------------------------------------------------------------------------


def counters(simulator: BusinessCentralSimulator) -> dict[str, int]:
    return dict(httpx.get(f"{simulator.url}/__sandbox/counters").json())


def token(simulator: BusinessCentralSimulator) -> str:
    answer = httpx.post(
        simulator.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "scope": SCOPE,
        },
    )
    assert answer.status_code == 200
    return str(answer.json()["access_token"])


@pytest.fixture
def api(simulator: BusinessCentralSimulator) -> Iterator[httpx.Client]:
    """A plain client of the simulator's API v2.0, signed in."""
    with httpx.Client(
        base_url=simulator.api_url + "/",
        headers={"Authorization": f"Bearer {token(simulator)}"},
        timeout=10.0,
    ) as client:
        yield client


def books_orders(simulator: BusinessCentralSimulator, external_id: str) -> list[str]:
    """Every order Business Central holds for an external document number, duplicates too."""
    with psycopg.connect(simulator.books._dsn, options=f"-c search_path={SCHEMA}") as db:
        rows = db.execute(
            "SELECT order_id FROM bc_sales_orders WHERE external_document_number = %s",
            (external_id,),
        ).fetchall()
    return [row[0] for row in rows]


# --- Entra tokens -------------------------------------------------------------------------


def test_refused_client_credentials_are_a_transient_auth_failure(
    simulator: BusinessCentralSimulator, books: ErpSandbox
) -> None:
    erp = BusinessCentralAdapter(config_for(simulator, client_secret=SecretStr("wrong")))
    try:
        with pytest.raises(BusinessCentralAuthFailed, match="invalid_client") as refused:
            erp.customer(ACTIVE.id)
    finally:
        erp.close()
    assert classify(refused.value) is ErrorClass.TRANSIENT
    assert "wrong" not in str(refused.value)


def test_an_expired_token_is_refreshed_once_and_the_call_goes_through(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    knobs: BusinessCentralSandbox,
) -> None:
    assert adapter.customer(ACTIVE.id) == ACTIVE
    before = counters(simulator)

    knobs.expire_tokens()
    again = adapter.customer(ACTIVE.id)

    after = counters(simulator)
    assert again == ACTIVE
    assert after["business_central.tokens"] == before["business_central.tokens"] + 1
    assert after.get("business_central.unauthorized", 0) == (
        before.get("business_central.unauthorized", 0) + 1
    )


def test_a_token_is_replaced_before_it_expires_without_a_refusal(
    simulator: BusinessCentralSimulator, books: ErpSandbox, knobs: BusinessCentralSandbox
) -> None:
    knobs.configure(token_lifetime_s=2)
    erp = BusinessCentralAdapter(config_for(simulator))
    try:
        erp.customer(ACTIVE.id)
        before = counters(simulator)
        wait_for(lambda: erp.customer(ACTIVE.id) is not None and _tokens(simulator, before))
    finally:
        erp.close()
    assert counters(simulator).get("business_central.unauthorized", 0) == before.get(
        "business_central.unauthorized", 0
    )


def _tokens(simulator: BusinessCentralSimulator, before: dict[str, int]) -> bool:
    return counters(simulator)["business_central.tokens"] > before["business_central.tokens"]


def test_a_token_refused_again_after_its_refresh_is_transient(
    simulator: BusinessCentralSimulator, books: ErpSandbox, knobs: BusinessCentralSandbox
) -> None:
    knobs.configure(token_lifetime_s=0)
    erp = BusinessCentralAdapter(config_for(simulator))
    try:
        with pytest.raises(BusinessCentralAuthFailed, match="HTTP 401") as refused:
            erp.customer(ACTIVE.id)
    finally:
        erp.close()
    assert isinstance(refused.value, TransientError)


# --- exactly one order --------------------------------------------------------------------


def test_concurrent_creates_of_one_order_leave_exactly_one(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    knobs: BusinessCentralSandbox,
) -> None:
    """Every lookup answers before any create lands (each answer held back), so every
    worker creates; the re-reads delete all but the oldest."""
    request = order_request()
    before = counters(simulator).get("business_central.duplicate_external_documents", 0)
    books.set_faults(latency_ms=300)
    start = threading.Barrier(6)

    def create(_: int) -> str:
        start.wait()
        return adapter.create_sales_order(request, a_key()).id

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(create, range(6)))

    assert len(set(ids)) == 1
    assert books_orders(simulator, request.external_id) == [ids[0]]
    duplicates = counters(simulator).get("business_central.duplicate_external_documents", 0)
    assert duplicates > before, "the creates raced: Business Central booked duplicates"


def test_a_create_whose_answer_was_lost_is_found_by_the_retry(
    simulator: BusinessCentralSimulator, books: ErpSandbox, knobs: BusinessCentralSandbox
) -> None:
    request, key = order_request(), a_key()
    erp = BusinessCentralAdapter(config_for(simulator, timeout_s=1.0))
    try:
        books.set_faults(timeout_rate=1.0, hang_s=2.0)
        with pytest.raises(TransientError):
            erp.create_sales_order(request, key)
        books.set_faults(timeout_rate=0.0)
        retried = erp.create_sales_order(request, key)
        again = erp.create_sales_order(request, a_key())
    finally:
        erp.close()

    assert books_orders(simulator, request.external_id) == [retried.id]
    assert again == retried
    assert retried.status is SalesOrderStatus.OPEN


def test_a_create_whose_answer_is_lost_in_the_call_is_found_by_its_re_read(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = order_request()
    send = adapter.wire.send

    def lose_the_create(method: str, path: str, **options: Any) -> httpx.Response:
        answer = send(method, path, **options)
        if method == "POST" and path.endswith("/salesOrders"):
            raise TransientError("business-central: POST salesOrders timed out")
        return answer

    monkeypatch.setattr(adapter.wire, "send", lose_the_create)
    order = adapter.create_sales_order(request, a_key())

    assert order.external_id == request.external_id
    assert books_orders(simulator, request.external_id) == [order.id]


def test_two_orders_sharing_an_external_document_number_are_what_business_central_allows(
    simulator: BusinessCentralSimulator, api: httpx.Client, books: ErpSandbox
) -> None:
    """The simulator, like Business Central, books a second order for a number; the adapter,
    finding both, keeps the oldest."""
    company = simulator.company("US01").id
    external_id = order_request().external_id
    body = {
        "externalDocumentNumber": external_id,
        "customerId": ACTIVE.id,
        "currencyCode": "USD",
        "shortcutDimension1Code": "NA",
        "shipToAddressLine1": "1 Market St",
        "shipToCity": "San Francisco",
        "shipToCountry": "US",
        "salesOrderLines": [
            {"lineType": "Item", "lineObjectNumber": "PC-TIE", "quantity": 1, "unitPrice": 0.1}
        ],
    }
    first = api.post(f"companies({company})/salesOrders", json=body)
    second = api.post(f"companies({company})/salesOrders", json=body)

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["externalDocumentNumber"] == second.json()["externalDocumentNumber"]
    listed = api.get(
        f"companies({company})/salesOrders",
        params={"$filter": f"externalDocumentNumber eq '{external_id}'"},
    ).json()["value"]
    assert [o["id"] for o in listed] == [first.json()["id"], second.json()["id"]]


# --- errors -------------------------------------------------------------------------------


def test_throttling_by_the_environments_concurrency_limit_is_transient_with_retry_after(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    knobs: BusinessCentralSandbox,
    receiver: Receiver,
) -> None:
    knobs.configure(concurrency_limit=1, retry_after_s=7)
    receiver.validation_delay_s = 1.5
    holding = threading.Thread(target=lambda: _subscribe(simulator, receiver, "customers"))
    holding.start()
    try:
        wait_for(lambda: receiver.validations > 0, timeout_s=5)
        with pytest.raises(TransientError, match="HTTP 429") as throttled:
            adapter.customer(ACTIVE.id)
    finally:
        holding.join()
    assert throttled.value.retry_after == 7


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_server_errors_are_transient(
    adapter: BusinessCentralAdapter, books: ErpSandbox, knobs: BusinessCentralSandbox, status: int
) -> None:
    books.set_faults(error_rate=1.0, error_status=status)
    with pytest.raises(TransientError, match=f"HTTP {status}") as failed:
        adapter.create_sales_order(order_request(), a_key())
    assert classify(failed.value) is ErrorClass.TRANSIENT


def test_a_refused_permission_is_a_transient_auth_failure(
    adapter: BusinessCentralAdapter, books: ErpSandbox, knobs: BusinessCentralSandbox
) -> None:
    books.set_faults(throttle_rate=1.0, throttle_status=403)
    with pytest.raises(BusinessCentralAuthFailed, match="HTTP 403") as refused:
        adapter.customer(ACTIVE.id)
    assert classify(refused.value) is ErrorClass.TRANSIENT


def test_a_stale_etag_is_refused_412_and_the_adapter_reads_again_and_writes(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draft = a_draft()
    created = adapter.upsert_customer(draft, a_key()).customer
    read_before = adapter._link_by_account(draft.crm_account_id)
    books.edit_customer(created.id, credit_limit=Decimal(12345))
    company = simulator.company("US01").id
    assert read_before is not None
    stale = read_before[0]["@odata.etag"]

    refused = httpx.patch(
        f"{simulator.extension_url}/companies({company})/customerLinks('{created.id}')",
        json={"displayName": "Stale Writer"},
        headers={**api.headers, "If-Match": stale},
    )
    monkeypatch.setattr(adapter, "_link_by_account", lambda _: read_before)
    renamed = adapter.upsert_customer(replace(draft, name="Fresh Writer"), a_key())

    assert refused.status_code == 412
    assert refused.json()["error"]["code"] == "Request_EntityChanged"
    assert renamed.customer.name == "Fresh Writer"
    assert renamed.customer.credit_limit == Decimal("12345.0000")


def test_writes_without_if_match_are_refused(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
) -> None:
    order = adapter.create_sales_order(order_request(), a_key())
    company = simulator.company("US01").id

    patched = api.patch(f"companies({company})/salesOrders({order.id})", json={})
    deleted = api.delete(f"companies({company})/salesOrders({order.id})")
    current = api.get(f"companies({company})/salesOrders({order.id})").json()
    stale = api.delete(
        f"companies({company})/salesOrders({order.id})", headers={"If-Match": 'W/"JzE7Jw=="'}
    )
    removed = api.delete(
        f"companies({company})/salesOrders({order.id})",
        headers={"If-Match": current["@odata.etag"]},
    )

    assert (patched.status_code, deleted.status_code) == (400, 400)
    assert stale.status_code == 412
    assert removed.status_code == 204
    assert api.get(f"companies({company})/salesOrders({order.id})").status_code == 404


def test_an_unknown_company_name_stops_the_adapter_with_its_name(
    simulator: BusinessCentralSimulator, books: ErpSandbox
) -> None:
    named = BusinessCentralAdapter(
        config_for(simulator, companies={"US01": "US01", "DE01": "DE01"})
    )
    wrong = BusinessCentralAdapter(config_for(simulator, companies={"US01": "Nowhere Inc"}))
    try:
        found = named.customer(ACTIVE.id)
        with pytest.raises(BusinessCentralUnexpected, match="Nowhere Inc") as unknown:
            wrong.customer(ACTIVE.id)
    finally:
        named.close()
        wrong.close()
    assert found is not None
    assert found.legal_entity == "US01"
    assert classify(unknown.value) is ErrorClass.UNKNOWN


def test_a_business_refusal_is_a_dialog_error_with_its_reason_first(
    simulator: BusinessCentralSimulator, api: httpx.Client, books: ErpSandbox
) -> None:
    company = simulator.company("US01").id
    refused = api.post(
        f"companies({company})/salesOrders",
        json={
            "externalDocumentNumber": "801REFUSED",
            "customerId": ACTIVE.id,
            "shipToAddressLine1": "1 Market St",
            "shipToCity": "San Francisco",
            "shipToCountry": "US",
            "salesOrderLines": [
                {"lineObjectNumber": "PC-OLD", "quantity": 1, "unitPrice": 5},
                {"lineObjectNumber": "PC-X", "quantity": 1, "unitPrice": 1},
            ],
        },
    )
    unknown_field = api.post(f"companies({company})/salesOrders", json={"colour": "red"})

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "Application_DialogException"
    assert refused.json()["error"]["message"].startswith("UNKNOWN_PRODUCT: ")
    assert refused.json()["error"]["message"].endswith("[items: PC-OLD, PC-X]")
    assert unknown_field.status_code == 400
    assert unknown_field.json()["error"]["code"] == "BadRequest"


# --- paging -------------------------------------------------------------------------------


def test_collections_page_by_next_link_and_the_adapter_follows_it(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
    knobs: BusinessCentralSandbox,
) -> None:
    extra = [
        Product(f"PC-PAGE-{n:02d}", f"Paged {n}", "PAGES", "EA", True, frozenset({"US01"}))
        for n in range(7)
    ]
    books.seed_products(extra)
    knobs.configure(page_size=2)
    company = simulator.company("US01").id

    first = api.get(
        f"companies({company})/items", params={"$filter": "itemCategoryCode eq 'PAGES'"}
    ).json()
    pages, link = [first], first.get("@odata.nextLink")
    while link:
        page = api.get(link).json()
        pages.append(page)
        link = page.get("@odata.nextLink")
    topped = api.get(
        f"companies({company})/items",
        params={"$filter": "itemCategoryCode eq 'PAGES'", "$top": "3"},
    ).json()
    found = adapter.products([p.sku for p in extra])

    assert [len(p["value"]) for p in pages] == [2, 2, 2, 1]
    assert [i["number"] for p in pages for i in p["value"]] == [p.sku for p in extra]
    assert len(topped["value"]) == 2
    assert len(api.get(topped["@odata.nextLink"]).json()["value"]) == 1
    assert found == {p.sku: p for p in extra}


def test_a_filter_on_last_modified_finds_what_changed_since(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
) -> None:
    company = simulator.company("US01").id
    customer = adapter.upsert_customer(a_draft(), a_key()).customer
    stamp = api.get(f"companies({company})/customers({customer.id})").json()["lastModifiedDateTime"]

    after = api.get(
        f"companies({company})/customers",
        params={"$filter": f"lastModifiedDateTime gt {stamp}"},
    ).json()["value"]
    books.edit_customer(customer.id, credit_limit=Decimal(1))
    since = api.get(
        f"companies({company})/customers",
        params={"$filter": f"lastModifiedDateTime ge {stamp} and id eq '{customer.id}'"},
    ).json()["value"]
    bad = api.get(f"companies({company})/customers", params={"$filter": "colour eq 'red'"})

    assert customer.id not in [c["id"] for c in after]
    assert [c["creditLimit"] for c in since] == [1]
    assert bad.status_code == 400


# --- webhooks -----------------------------------------------------------------------------


class Receiver:
    """A notification URL: answers the validation handshake (or not, as told) and each
    notification batch with the next of ``statuses`` (202 once they run out)."""

    def __init__(self) -> None:
        self.echo = True
        self.validation_delay_s = 0.0
        self.validations = 0
        self.statuses: list[int] = []
        self.batches: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if "validationToken" in query:
                    receiver.validations += 1
                    threading.Event().wait(receiver.validation_delay_s)
                    text = query["validationToken"][0] if receiver.echo else "not-the-token"
                    self._answer(200, text.encode())
                    return
                receiver.batches.append(json.loads(body))
                status = receiver.statuses.pop(0) if receiver.statuses else 202
                self._answer(status, b"")

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/bc/notifications"

    def notifications(self) -> list[dict[str, Any]]:
        return [n for batch in self.batches for n in batch["value"]]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver(simulator: BusinessCentralSimulator) -> Iterator[Receiver]:
    listening = Receiver()
    yield listening
    listening.stop()
    with httpx.Client(headers={"Authorization": f"Bearer {token(simulator)}"}) as client:
        for subscription in client.get(f"{simulator.api_url}/subscriptions").json()["value"]:
            client.delete(
                f"{simulator.api_url}/subscriptions('{subscription['subscriptionId']}')",
                headers={"If-Match": "*"},
            )


def _subscribe(
    simulator: BusinessCentralSimulator, receiver: Receiver, entity: str, legal_entity: str = "US01"
) -> httpx.Response:
    company = simulator.company(legal_entity).id
    return httpx.post(
        f"{simulator.api_url}/subscriptions",
        json={
            "notificationUrl": receiver.url,
            "resource": f"/api/v2.0/companies({company})/{entity}",
            "clientState": "revsync-secret-state",
        },
        headers={"Authorization": f"Bearer {token(simulator)}"},
        timeout=30.0,
    )


def _invoice(adapter: BusinessCentralAdapter, books: ErpSandbox) -> tuple[str, list[str]]:
    """Books an order and lets the clock invoice it: its external id and invoice ids."""
    request = order_request(line(1, "PC-TIE", "1", "0.1000"))
    adapter.create_sales_order(request, a_key())
    control = SandboxErpControl(books)
    control.invoice(request.external_id)
    return request.external_id, []


def test_a_subscription_is_made_only_after_the_handshake(
    simulator: BusinessCentralSimulator, api: httpx.Client, receiver: Receiver
) -> None:
    receiver.echo = False
    refused = _subscribe(simulator, receiver, "salesInvoices")
    receiver.echo = True
    made = _subscribe(simulator, receiver, "salesInvoices")
    unwatched = _subscribe(simulator, receiver, "salesShipments")

    assert refused.status_code == 400
    assert made.status_code == 201
    subscription = made.json()
    assert subscription["clientState"] == "revsync-secret-state"
    assert subscription["notificationUrl"] == receiver.url
    expires = datetime.fromisoformat(subscription["expirationDateTime"].replace("Z", "+00:00"))
    assert (
        timedelta(days=3) - timedelta(minutes=1) < expires - datetime.now(UTC) <= timedelta(days=3)
    )
    assert receiver.validations == 2
    assert unwatched.status_code == 400
    listed = api.get("subscriptions").json()["value"]
    assert [s["subscriptionId"] for s in listed] == [subscription["subscriptionId"]]


def test_a_subscription_expires_unless_renewed_and_a_renewal_validates_again(
    simulator: BusinessCentralSimulator,
    api: httpx.Client,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    knobs.configure(subscription_lifetime_s=2)
    kept = _subscribe(simulator, receiver, "customers").json()
    lapsed = _subscribe(simulator, receiver, "salesInvoices").json()
    path = f"subscriptions('{kept['subscriptionId']}')"

    knobs.configure(subscription_lifetime_s=60)
    receiver.echo = False
    unvalidated = api.patch(path, json={}, headers={"If-Match": kept["@odata.etag"]})
    receiver.echo = True
    stale = api.patch(path, json={}, headers={"If-Match": 'W/"JzE7Jw=="'})
    unconditional = api.patch(path, json={})
    renewed = api.patch(path, json={}, headers={"If-Match": kept["@odata.etag"]})
    wait_for(lambda: api.get(f"subscriptions('{lapsed['subscriptionId']}')").status_code == 404)

    assert unvalidated.status_code == 400
    assert (stale.status_code, unconditional.status_code) == (412, 400)
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] > kept["expirationDateTime"]
    assert renewed.json()["@odata.etag"] != kept["@odata.etag"]
    assert receiver.validations == 4
    assert [s["subscriptionId"] for s in api.get("subscriptions").json()["value"]] == [
        kept["subscriptionId"]
    ]
    assert knobs.subscriptions()[0]["subscriptionId"] == kept["subscriptionId"]


def test_changes_are_notified_without_data_and_shipments_and_payments_are_not(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    invoices = _subscribe(simulator, receiver, "salesInvoices").json()
    customers = _subscribe(simulator, receiver, "customers").json()
    customer = adapter.upsert_customer(a_draft(), a_key()).customer
    external_id, _ = _invoice(adapter, books)
    books.set_clock(ship_delay_s=0, payment_delay_s=0)
    wait_for(lambda: books.stats().payments > 0 and books.stats().shipments > 0)

    knobs.flush_notifications()

    notified = receiver.notifications()
    company = simulator.company("US01").id
    by_resource = {(n["subscriptionId"], n["changeType"]): n for n in notified}
    created = by_resource[(customers["subscriptionId"], "created")]
    assert created["resource"] == f"api/v2.0/companies({company})/customers({customer.id})"
    assert created["clientState"] == "revsync-secret-state"
    assert set(created) == {
        "subscriptionId",
        "clientState",
        "expirationDateTime",
        "resource",
        "changeType",
        "lastModifiedDateTime",
    }
    invoice_changes = [n for n in notified if n["subscriptionId"] == invoices["subscriptionId"]]
    assert {n["changeType"] for n in invoice_changes} >= {"created", "updated"}
    assert all("/salesInvoices(" in n["resource"] for n in invoice_changes)
    assert not any(
        "salesShipments" in n["resource"] or "Payments" in n["resource"] for n in notified
    )
    assert external_id


def test_a_notification_answered_5xx_is_sent_again_and_4xx_deletes_the_subscription(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    subscription = _subscribe(simulator, receiver, "customers").json()
    receiver.statuses = [503, 429, 202, 404]
    first = adapter.upsert_customer(a_draft(), a_key()).customer

    rounds = [knobs.flush_notifications() for _ in range(3)]
    adapter.upsert_customer(a_draft(), a_key())
    last = knobs.flush_notifications()

    assert [r[0]["result"] for r in rounds] == ["retrying", "retrying", "delivered"]
    assert [b["value"][0]["resource"].endswith(f"({first.id})") for b in receiver.batches[:3]] == [
        True,
        True,
        True,
    ]
    assert last[0]["result"] == "subscription_deleted"
    gone = api.get(f"subscriptions('{subscription['subscriptionId']}')")
    assert gone.status_code == 404


def test_a_batch_given_up_after_its_attempts_is_lost_to_the_subscription(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    knobs.configure(notification_attempts=2)
    _subscribe(simulator, receiver, "customers")
    receiver.statuses = [500, 500]
    adapter.upsert_customer(a_draft(), a_key())

    results = [knobs.flush_notifications()[0]["result"] for _ in range(2)]

    assert results == ["retrying", "given_up"]
    assert knobs.flush_notifications() == []
    assert knobs.subscriptions()[0]["pendingChanges"] == 0


def test_many_changes_of_one_entity_collapse_into_a_collection_notification(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    knobs.configure(collapse_threshold=2)
    _subscribe(simulator, receiver, "customers")
    made = [adapter.upsert_customer(a_draft(), a_key()).customer for _ in range(3)]

    knobs.flush_notifications()

    company = simulator.company("US01").id
    [collection] = receiver.notifications()
    assert collection["changeType"] == "collection"
    assert collection["resource"] == f"api/v2.0/companies({company})/customers"
    assert len(made) == 3


def test_a_dropped_notification_is_never_sent_and_a_duplicated_one_twice(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    api: httpx.Client,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    _subscribe(simulator, receiver, "customers")
    company = simulator.company("US01").id
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    knobs.drop_next_notifications(1)
    missed = adapter.upsert_customer(a_draft(), a_key()).customer
    knobs.flush_notifications()
    knobs.duplicate_next_notifications(1)
    doubled = adapter.upsert_customer(a_draft(), a_key()).customer
    knobs.flush_notifications()

    resources = [n["resource"] for n in receiver.notifications()]
    assert not any(r.endswith(f"({missed.id})") for r in resources)
    assert [r.endswith(f"({doubled.id})") for r in resources] == [True, True]
    polled = api.get(
        f"companies({company})/customers",
        params={"$filter": f"lastModifiedDateTime gt {since}"},
    ).json()["value"]
    assert missed.id in [c["id"] for c in polled], "the reconciliation poll finds what was missed"


def test_notifications_go_out_on_their_own_every_interval(
    simulator: BusinessCentralSimulator,
    adapter: BusinessCentralAdapter,
    books: ErpSandbox,
    receiver: Receiver,
    knobs: BusinessCentralSandbox,
) -> None:
    _subscribe(simulator, receiver, "salesOrders")
    knobs.configure(notification_interval_s=0.2)
    order = adapter.create_sales_order(order_request(), a_key())

    wait_for(lambda: len(receiver.notifications()) > 0, timeout_s=5)

    assert receiver.notifications()[0]["resource"].endswith(f"salesOrders({order.id})")
    assert receiver.notifications()[0]["changeType"] == "created"


# --- the command line ---------------------------------------------------------------------


def test_the_simulator_runs_from_the_command_line_until_sigterm(settings: Settings) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.business_central",
            "--dsn",
            settings.postgres_dsn.get_secret_value(),
            "--tenant-id",
            "0b5e7c1d-3a52-4f63-9d0a-5be1c0f7a0cc",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        serving = json.loads(process.stdout.readline())
        answer = httpx.post(
            serving["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "scope": SCOPE,
            },
        ).json()
        companies = httpx.get(
            f"{serving['api_url']}/companies",
            headers={"Authorization": f"Bearer {answer['access_token']}"},
        ).json()["value"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)

    assert serving["api_url"] == (
        f"{serving['url']}/v2.0/0b5e7c1d-3a52-4f63-9d0a-5be1c0f7a0cc/production/api/v2.0"
    )
    assert {c["name"]: c["id"] for c in companies} == serving["companies"]
    assert sorted(serving["companies"]) == ["CA01", "DE01", "GB01", "US01"]
    assert code == 0
