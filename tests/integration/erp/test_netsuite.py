"""The NetSuite adapter on the NetSuite simulator: the whole ERP port contract, then what is
NetSuite's own: the certificate-signed token and its refusals, the token's refresh, exactly
once under lost answers and idempotency keys, the account's concurrency pool, every error
code's place in revsync's taxonomy, SuiteQL's paging, and async jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr
from sandbox.erp import ErpSandbox
from sandbox.http import Faults
from sandbox.netsuite import NetSuiteSandbox, NetSuiteSimulator
from sandbox.netsuite import Settings as NetSuiteSettings

from erp_sandbox_control import NEVER, SandboxErpControl
from port_contracts import (
    ACTIVE,
    HELD,
    PRICE_BOOK,
    PRODUCTS,
    ErpContract,
    a_draft,
    a_key,
    line,
    order_request,
)
from revsync.connectors.erp import ErpUnexpectedResponse
from revsync.connectors.netsuite import NetSuiteAdapter, NetSuiteConfig, idempotency_key
from revsync.connectors.netsuite_auth import NetSuiteAuthFailed
from revsync.errors import ErrorClass, TransientError, classify
from revsync.ports.erp import CustomerStatus, ErpRejected, SalesOrderStatus
from revsync.settings import Settings

pytestmark = pytest.mark.integration

CLIENT_ID = "revsync-integration-test"
CERTIFICATE_ID = "cert-7f3a"
SUBSIDIARIES = {"US01": "1", "CA01": "2", "DE01": "3", "GB01": "4"}
TOKEN = "/services/rest/auth/oauth2/v1/token"
RECORD = "/services/rest/record/v1"
SUITEQL = "/services/rest/query/v1/suiteql"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str
    key: Any


def key_pair(curve: ec.EllipticCurve | None = None) -> KeyPair:
    """An RSA key pair, or an EC one on ``curve``."""
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if curve is None
        else ec.generate_private_key(curve)
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, public, key)


@pytest.fixture(scope="module")
def certificate() -> KeyPair:
    return key_pair()


@pytest.fixture(scope="module")
def netsuite(settings: Settings, certificate: KeyPair) -> Iterator[NetSuiteSimulator]:
    simulator = NetSuiteSimulator(
        settings.postgres_dsn.get_secret_value(),
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
        integration=(CLIENT_ID, CERTIFICATE_ID, certificate.public_pem),
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def books(netsuite: NetSuiteSimulator) -> Iterator[ErpSandbox]:
    """The books' control API; faults and the clock calmed after every test."""
    with ErpSandbox(netsuite.url) as sandbox:
        yield sandbox
        sandbox.set_faults(**asdict(Faults()))
        sandbox.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)


@pytest.fixture
def knobs(netsuite: NetSuiteSimulator) -> Iterator[NetSuiteSandbox]:
    """NetSuite's own knobs, back to their defaults after every test."""
    with NetSuiteSandbox(netsuite.url) as sandbox:
        yield sandbox
        sandbox.set_settings(**asdict(NetSuiteSettings()))


def config(netsuite: NetSuiteSimulator, certificate: KeyPair, **changes: Any) -> NetSuiteConfig:
    return replace(
        NetSuiteConfig(
            base_url=netsuite.url,
            account_id=netsuite.account_id,
            client_id=CLIENT_ID,
            certificate_id=CERTIFICATE_ID,
            private_key=SecretStr(certificate.private_pem),
            subsidiaries=SUBSIDIARIES,
            timeout_s=5.0,
        ),
        **changes,
    )


@pytest.fixture
def erp(
    netsuite: NetSuiteSimulator, certificate: KeyPair, books: ErpSandbox, knobs: NetSuiteSandbox
) -> Iterator[NetSuiteAdapter]:
    adapter = NetSuiteAdapter(config(netsuite, certificate))
    yield adapter
    adapter.close()


@pytest.fixture
def erp_control(books: ErpSandbox) -> SandboxErpControl:
    return SandboxErpControl(books)


class TestNetSuiteAdapter(ErpContract):
    """The shared ERP port contract, on NetSuite."""


# --- helpers -------------------------------------------------------------------------


def an_assertion(
    netsuite: NetSuiteSimulator,
    key: Any,
    *,
    algorithm: str = "PS256",
    kid: str = CERTIFICATE_ID,
    lifetime_s: int = 300,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload = {
        "iss": CLIENT_ID,
        "scope": ["rest_webservices"],
        "aud": netsuite.token_url,
        "iat": now,
        "exp": now + lifetime_s,
        **claims,
    }
    return jwt.encode(payload, key, algorithm=algorithm, headers={"typ": "JWT", "kid": kid})


def grant(netsuite: NetSuiteSimulator, assertion: str, **form: str) -> httpx.Response:
    return httpx.post(
        netsuite.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            **form,
        },
    )


@pytest.fixture
def api(
    netsuite: NetSuiteSimulator, certificate: KeyPair, books: ErpSandbox, knobs: NetSuiteSandbox
) -> Iterator[httpx.Client]:
    """A raw client of the account, with a token of its own."""
    token = grant(netsuite, an_assertion(netsuite, certificate.key)).json()["access_token"]
    with httpx.Client(
        base_url=netsuite.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    ) as client:
        yield client


def suiteql(api: httpx.Client, query: str, **params: int) -> httpx.Response:
    return api.post(SUITEQL, params=params, json={"q": query}, headers={"Prefer": "transient"})


def error_codes(response: httpx.Response) -> list[tuple[str, str | None]]:
    return [(d["o:errorCode"], d.get("o:errorPath")) for d in response.json()["o:errorDetails"]]


def order_body(**changes: Any) -> dict[str, Any]:
    """A salesOrder record for the contract's active customer: two sensors at list price."""
    return {
        "entity": {"id": ACTIVE.id},
        "subsidiary": {"id": "1"},
        "currency": {"id": "1"},
        "location": {"id": "NA"},
        "shippingAddress": {"addr1": "1 Market St", "city": "SF", "country": {"id": "US"}},
        "item": {
            "items": [
                {
                    "item": {"id": "PC-SENSOR"},
                    "quantity": 2,
                    "rate": 100,
                    "price": {"id": PRICE_BOOK.id},
                }
            ]
        },
        **changes,
    }


@pytest.fixture
def master_data(books: ErpSandbox) -> None:
    books.seed_customers([ACTIVE, HELD])
    books.seed_products(PRODUCTS)
    books.seed_price_books([PRICE_BOOK])


def counter(books: ErpSandbox, name: str) -> int:
    return int(httpx.get(f"{books_url(books)}/__sandbox/counters").json().get(name, 0))


def books_url(books: ErpSandbox) -> str:
    return str(books._client.base_url).rstrip("/")


# --- the token ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["PS256", "PS384", "PS512", "RS256"])
def test_a_well_signed_assertion_is_granted_a_bearer_token(
    netsuite: NetSuiteSimulator, certificate: KeyPair, algorithm: str
) -> None:
    answer = grant(netsuite, an_assertion(netsuite, certificate.key, algorithm=algorithm))

    assert answer.status_code == 200
    body = answer.json()
    assert (body["token_type"], body["expires_in"]) == ("bearer", "3600")
    record = httpx.get(
        f"{netsuite.url}{RECORD}/subsidiary/1",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert (record.status_code, record.json()["name"]) == (200, "US01")


@pytest.mark.parametrize(
    ("curve", "algorithm", "other"),
    [(ec.SECP256R1(), "ES256", "ES384"), (ec.SECP384R1(), "ES384", "ES256")],
    ids=["P-256", "P-384"],
)
def test_an_ec_certificate_and_a_comma_separated_scope_are_taken(
    netsuite: NetSuiteSimulator,
    knobs: NetSuiteSandbox,
    curve: ec.EllipticCurve,
    algorithm: str,
    other: str,
) -> None:
    ec_pair = key_pair(curve)
    kid = f"cert-{algorithm}"
    knobs.register_integration(CLIENT_ID, kid, ec_pair.public_pem)

    answer = grant(
        netsuite,
        an_assertion(
            netsuite, ec_pair.key, algorithm=algorithm, kid=kid, scope="restlets,rest_webservices"
        ),
    )
    mislabelled = grant(
        netsuite, an_assertion(netsuite, key_pair(ec.SECP521R1()).key, algorithm="ES512", kid=kid)
    )

    assert answer.status_code == 200
    assert (mislabelled.status_code, mislabelled.json()["error"]) == (401, "invalid_grant")


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("bad-signature", 401, "invalid_client"),
        ("wrong-kid", 401, "invalid_client"),
        ("unknown-client", 401, "invalid_client"),
        ("exp-over-60-minutes", 401, "invalid_grant"),
        ("expired", 401, "invalid_grant"),
        ("wrong-aud", 401, "invalid_grant"),
        ("no-scope", 400, "invalid_scope"),
        ("hs256", 401, "invalid_client"),
        ("not-a-jwt", 400, "invalid_request"),
        ("grant-type", 400, "invalid_request"),
    ],
)
def test_a_wrong_assertion_is_refused(
    netsuite: NetSuiteSimulator, certificate: KeyPair, case: str, status: int, error: str
) -> None:
    key = certificate.key
    form: dict[str, str] = {}
    if case == "bad-signature":
        assertion = an_assertion(netsuite, key_pair().key)
    elif case == "wrong-kid":
        assertion = an_assertion(netsuite, key, kid="cert-other")
    elif case == "unknown-client":
        assertion = an_assertion(netsuite, key, iss="someone-else")
    elif case == "exp-over-60-minutes":
        assertion = an_assertion(netsuite, key, lifetime_s=3601)
    elif case == "expired":
        assertion = an_assertion(
            netsuite, key, iat=int(time.time()) - 600, exp=int(time.time()) - 60
        )
    elif case == "wrong-aud":
        assertion = an_assertion(netsuite, key, aud="https://elsewhere.example/token")
    elif case == "no-scope":
        assertion = an_assertion(netsuite, key, scope=["restlets"])
    elif case == "hs256":
        assertion = jwt.encode(
            {"iss": CLIENT_ID, "aud": netsuite.token_url, "iat": 1, "exp": 2, "scope": "x"},
            "a-shared-secret-of-at-least-32-bytes!!",
            algorithm="HS256",
            headers={"kid": CERTIFICATE_ID},
        )
    elif case == "not-a-jwt":
        assertion = "not.a.jwt"
    else:
        assertion = an_assertion(netsuite, key)
        form = {"grant_type": "password"}

    answer = grant(netsuite, assertion, **form)

    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert "access_token" not in answer.json()


def test_a_call_without_a_valid_token_is_invalid_login(netsuite: NetSuiteSimulator) -> None:
    for headers in ({}, {"Authorization": "Bearer not-issued"}):
        answer = httpx.get(f"{netsuite.url}{RECORD}/customer/{ACTIVE.id}", headers=headers)

        assert answer.status_code == 401
        assert error_codes(answer) == [("INVALID_LOGIN", None)]


def test_an_adapter_whose_certificate_is_refused_fails_transiently(
    netsuite: NetSuiteSimulator, knobs: NetSuiteSandbox
) -> None:
    adapter = NetSuiteAdapter(config(netsuite, key_pair()))  # not the registered key
    try:
        with pytest.raises(NetSuiteAuthFailed, match="invalid_client") as refused:
            adapter.customer(ACTIVE.id)
    finally:
        adapter.close()

    assert classify(refused.value) is ErrorClass.TRANSIENT


def test_the_token_is_reused_then_replaced_before_it_expires(
    netsuite: NetSuiteSimulator, certificate: KeyPair, knobs: NetSuiteSandbox, master_data: None
) -> None:
    knobs.set_settings(token_lifetime_s=3)
    adapter = NetSuiteAdapter(config(netsuite, certificate, token_refresh_margin_s=2.0))
    try:
        first = adapter.session.token()
        assert adapter.customer(ACTIVE.id) is not None
        assert adapter.session.token() == first, "reused while far from expiry"
        time.sleep(1.2)  # now within the margin, not yet expired

        assert adapter.customer(ACTIVE.id) is not None
        assert adapter.session.token() != first
    finally:
        adapter.close()


def test_invalid_login_refreshes_the_token_once(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox, master_data: None
) -> None:
    stale = erp.session.token()
    assert knobs.expire_tokens() >= 1

    assert erp.customer(ACTIVE.id) == ACTIVE
    assert erp.session.token() != stale


def test_a_token_refused_again_after_its_refresh_is_transient(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox
) -> None:
    knobs.set_settings(token_lifetime_s=0)  # every token is expired as it is issued

    with pytest.raises(NetSuiteAuthFailed, match="INVALID_LOGIN") as refused:
        erp.customer(ACTIVE.id)

    assert classify(refused.value) is ErrorClass.TRANSIENT


# --- exactly once --------------------------------------------------------------------


def test_a_create_whose_answer_is_lost_finds_the_order_it_booked(
    netsuite: NetSuiteSimulator,
    certificate: KeyPair,
    knobs: NetSuiteSandbox,
    erp_control: SandboxErpControl,
    books: ErpSandbox,
    master_data: None,
) -> None:
    adapter = NetSuiteAdapter(config(netsuite, certificate, timeout_s=1.0))
    request, key = order_request(), a_key()
    try:
        adapter.session.token()
        knobs.set_settings(lost_answers=1, lost_answer_hold_s=3.0)

        order = adapter.create_sales_order(request, key)
        again = adapter.create_sales_order(request, key)
    finally:
        adapter.close()

    assert counter(books, "netsuite.lost_answers") >= 1
    assert again == order
    assert erp_control.booked(request.external_id) == [order.id]


def test_creates_retried_through_timeouts_book_one_order(
    netsuite: NetSuiteSimulator,
    certificate: KeyPair,
    books: ErpSandbox,
    erp_control: SandboxErpControl,
    master_data: None,
) -> None:
    adapter = NetSuiteAdapter(config(netsuite, certificate, timeout_s=0.5))
    request, key = order_request(), a_key()
    failures = 0
    try:
        adapter.session.token()
        books.set_faults(timeout_rate=0.5, hang_s=1.5)
        for _ in range(40):
            try:
                order = adapter.create_sales_order(request, key)
                break
            except TransientError:
                failures += 1
        else:
            pytest.fail("no create got through 40 attempts")
    finally:
        books.set_faults(timeout_rate=0)
        adapter.close()

    assert failures > 0, "the fault lost some answers"
    assert erp_control.booked(request.external_id) == [order.id]


def test_concurrent_creates_under_one_key_meet_idempotency_error_and_return_the_first_order(
    erp: NetSuiteAdapter,
    knobs: NetSuiteSandbox,
    books: ErpSandbox,
    erp_control: SandboxErpControl,
    master_data: None,
) -> None:
    request, key = order_request(), a_key()
    erp.session.token()
    before = counter(books, "netsuite.idempotency_errors")
    knobs.set_settings(hold_s=0.5)  # both read before either books

    with ThreadPoolExecutor(2) as pool:
        orders = list(pool.map(lambda _: erp.create_sales_order(request, key), range(2)))

    assert orders[0] == orders[1]
    assert erp_control.booked(request.external_id) == [orders[0].id]
    assert counter(books, "netsuite.idempotency_errors") == before + 1


def test_concurrent_creates_under_two_keys_meet_dup_rcrd_and_return_the_booked_order(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox, erp_control: SandboxErpControl, master_data: None
) -> None:
    request = order_request()
    erp.session.token()
    knobs.set_settings(hold_s=0.5)

    with ThreadPoolExecutor(2) as pool:
        orders = list(pool.map(lambda _: erp.create_sales_order(request, a_key()), range(2)))

    assert orders[0] == orders[1]
    assert erp_control.booked(request.external_id) == [orders[0].id]


def test_the_idempotency_key_is_a_uuid_derived_from_the_callers_key_and_operation() -> None:
    key = a_key()

    derived = idempotency_key("salesOrder.create", key)

    assert str(uuid.UUID(derived)) == derived
    assert derived == idempotency_key("salesOrder.create", key)
    assert derived != idempotency_key("salesOrder.cancel", key)
    assert derived != idempotency_key("salesOrder.create", a_key())


def test_a_repeated_write_is_an_idempotency_error_pointing_at_the_first(
    api: httpx.Client, master_data: None
) -> None:
    path, key = f"{RECORD}/salesOrder/eid:801{uuid.uuid4().hex[:15]}", str(uuid.uuid4())

    first = api.put(path, json=order_body(), headers={"X-NetSuite-Idempotency-Key": key})
    again = api.put(path, json=order_body(), headers={"X-NetSuite-Idempotency-Key": key})
    not_uuid = api.put(path, json=order_body(), headers={"X-NetSuite-Idempotency-Key": "k-1"})

    assert first.status_code == 204
    assert again.status_code == 400
    assert error_codes(again) == [("IDEMPOTENCY_ERROR", "x-netsuite-idempotency-key")]
    assert first.headers["Location"] in again.json()["o:errorDetails"][0]["detail"]
    assert (not_uuid.status_code, error_codes(not_uuid)[0][0]) == (400, "INVALID_VALUE")


# --- the concurrency pool and request limits -----------------------------------------


def test_a_full_concurrency_pool_refuses_transiently_then_takes_the_call(
    erp: NetSuiteAdapter, api: httpx.Client, knobs: NetSuiteSandbox, master_data: None
) -> None:
    erp.session.token()
    knobs.set_settings(concurrency_limit=1, hold_s=1.0)

    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(api.get, f"{RECORD}/subsidiary/1")
        time.sleep(0.3)
        with pytest.raises(TransientError, match="CONCURRENCY_LIMIT_EXCEEDED") as refused:
            erp.customer(ACTIVE.id)
        assert holding.result().status_code == 200

    assert refused.value.retry_after == 1.0
    assert classify(refused.value) is ErrorClass.TRANSIENT
    knobs.set_settings(hold_s=0)
    assert erp.customer(ACTIVE.id) == ACTIVE


def test_the_adapter_keeps_within_its_share_of_the_pool(
    netsuite: NetSuiteSimulator,
    certificate: KeyPair,
    knobs: NetSuiteSandbox,
    books: ErpSandbox,
    master_data: None,
) -> None:
    adapter = NetSuiteAdapter(config(netsuite, certificate, max_in_flight=2))
    try:
        adapter.session.token()
        before = counter(books, "netsuite.concurrency_limit_exceeded")
        knobs.set_settings(concurrency_limit=2, hold_s=0.1)

        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda _: adapter.customer(ACTIVE.id), range(8)))
    finally:
        adapter.close()

    assert found == [ACTIVE] * 8
    assert counter(books, "netsuite.concurrency_limit_exceeded") == before


def test_a_spent_request_limit_is_transient_with_back_off(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox
) -> None:
    erp.session.token()
    knobs.set_settings(request_limit_rate=1.0)

    with pytest.raises(TransientError, match="REQUEST_LIMIT_EXCEEDED") as refused:
        erp.customer(ACTIVE.id)

    assert refused.value.retry_after == 5.0


# --- every error code in revsync's taxonomy -----------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (403, "INSUFFICIENT_PERMISSION", NetSuiteAuthFailed),
        (429, "CONCURRENCY_LIMIT_EXCEEDED", TransientError),
        (429, "REQUEST_LIMIT_EXCEEDED", TransientError),
        (400, "RCRD_HAS_BEEN_CHANGED", TransientError),
        (400, "UNEXPECTED_ERROR", TransientError),
        (500, "UNEXPECTED_ERROR", TransientError),
        (503, "SERVICE_UNAVAILABLE", TransientError),
        (400, "INVALID_PARAMETER", ErpUnexpectedResponse),
        (400, "SOMETHING_NEW", ErpUnexpectedResponse),
    ],
)
def test_an_error_code_on_a_read_is_classified(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox, status: int, code: str, kind: type[Exception]
) -> None:
    erp.session.token()
    knobs.set_settings(forced_error_code=code, forced_error_status=status)

    with pytest.raises(kind, match=code) as failed:
        erp.customer(ACTIVE.id)

    expected = ErrorClass.UNKNOWN if kind is ErpUnexpectedResponse else ErrorClass.TRANSIENT
    assert classify(failed.value) is expected


def test_nonexistent_id_is_none_or_a_missing_order(erp: NetSuiteAdapter) -> None:
    assert erp.customer("C-NS-NOBODY") is None
    assert erp.credit("C-NS-NOBODY") is None
    assert erp.customer_by_account("001NSNOBODY") is None


@pytest.mark.parametrize(
    ("code", "path", "field", "skus"),
    [
        ("INVALID_VALUE", "shippingAddress", "ship_to", ()),
        ("INVALID_FIELD", "item.items[0].quantity", None, ("PC-SENSOR",)),
        ("USER_ERROR", "memo", "correlation_id", ()),
        ("INVALID_VALUE", "item.items[0].price", "lines.0.price_book_id", ()),
    ],
)
def test_a_validation_error_on_an_order_is_a_permanent_refusal_naming_the_field(
    erp: NetSuiteAdapter,
    knobs: NetSuiteSandbox,
    erp_control: SandboxErpControl,
    master_data: None,
    code: str,
    path: str,
    field: str | None,
    skus: tuple[str, ...],
) -> None:
    request = order_request()
    knobs.set_settings(forced_error_code=code, forced_error_path=path, forced_error_method="PUT")

    with pytest.raises(ErpRejected) as refused:
        erp.create_sales_order(request, a_key())

    assert (refused.value.code, refused.value.field, refused.value.skus) == (
        "INVALID_ORDER",
        field,
        skus,
    )
    assert classify(refused.value) is ErrorClass.BUSINESS_RULE
    assert erp_control.booked(request.external_id) == []


def test_a_duplicate_that_cannot_be_read_yet_is_transient(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox, master_data: None
) -> None:
    knobs.set_settings(forced_error_code="DUP_RCRD", forced_error_method="PUT")

    with pytest.raises(TransientError, match="DUP_RCRD"):
        erp.create_sales_order(order_request(), a_key())


def test_a_customer_duplicate_that_cannot_be_read_yet_is_transient(
    erp: NetSuiteAdapter, knobs: NetSuiteSandbox
) -> None:
    knobs.set_settings(forced_error_code="UNIQUE_CUST_ID_REQD", forced_error_method="POST")

    with pytest.raises(TransientError, match="cannot be read"):
        erp.upsert_customer(a_draft(), a_key())


def test_a_business_refusal_of_a_cancel_names_the_code(
    erp: NetSuiteAdapter, erp_control: SandboxErpControl, master_data: None
) -> None:
    request = order_request()
    erp.create_sales_order(request, a_key())
    erp_control.invoice(request.external_id)

    with pytest.raises(ErpRejected) as refused:
        erp.cancel_sales_order(request.external_id, "too late", a_key())

    assert (refused.value.code, refused.value.field) == ("ORDER_NOT_CANCELLABLE", "orderStatus")


def test_the_records_show_an_order_as_netsuite_does(
    erp: NetSuiteAdapter, api: httpx.Client, master_data: None
) -> None:
    request = order_request(line(1, "PC-SENSOR", "2", "100", discount="10", tax="15.2"))
    order = erp.create_sales_order(request, a_key())

    record = api.get(
        f"{RECORD}/salesOrder/eid:{request.external_id}", params={"expandSubResources": "true"}
    ).json()
    linked = api.get(f"{RECORD}/salesOrder/{order.id}").json()

    assert (record["id"], record["tranId"], record["externalId"]) == (
        order.id,
        order.number,
        request.external_id,
    )
    assert (record["orderStatus"]["id"], record["total"], record["memo"]) == (
        "B",
        205.2,
        request.correlation_id,
    )
    assert record["item"]["items"][0]["item"]["id"] == "PC-SENSOR"
    assert "items" not in linked["item"], "sublists are links unless expanded"


# --- SuiteQL ------------------------------------------------------------------------


@pytest.fixture
def many_items(books: ErpSandbox) -> str:
    """25 items of one new product line, SKUs ``<tag>-00`` to ``<tag>-24``."""
    tag = f"PG{uuid.uuid4().hex[:6].upper()}"
    books.seed_products(
        [replace(PRODUCTS[1], sku=f"{tag}-{n:02d}", product_line=tag) for n in range(25)]
    )
    return tag


def test_suiteql_pages_by_limit_and_offset(api: httpx.Client, many_items: str) -> None:
    query = f"SELECT itemid, class FROM item WHERE class = '{many_items}' ORDER BY itemid"  # noqa: S608 - test data

    pages = [suiteql(api, query, limit=10, offset=offset).json() for offset in (0, 10, 20)]

    assert [p["count"] for p in pages] == [10, 10, 5]
    assert [p["hasMore"] for p in pages] == [True, True, False]
    assert {p["totalResults"] for p in pages} == {25}
    assert [i["itemid"] for p in pages for i in p["items"]] == [
        f"{many_items}-{n:02d}" for n in range(25)
    ]
    assert [link["rel"] for link in pages[0]["links"]] == ["self", "next"]
    assert "offset=10" in pages[0]["links"][1]["href"]
    assert all(item["links"] == [] for p in pages for item in p["items"])


def test_suiteql_refuses_a_page_over_1000_rows_or_past_the_row_cap(
    api: httpx.Client, knobs: NetSuiteSandbox, many_items: str
) -> None:
    query = "SELECT id FROM item ORDER BY id"

    too_large = suiteql(api, query, limit=1001)
    knobs.set_settings(row_cap=20)
    within = suiteql(api, query, limit=10, offset=10)
    beyond = suiteql(api, query, limit=10, offset=11)

    assert (too_large.status_code, error_codes(too_large)[0]) == (
        400,
        ("INVALID_PARAMETER", "limit"),
    )
    assert within.status_code == 200
    assert (beyond.status_code, error_codes(beyond)[0]) == (400, ("INVALID_PARAMETER", "offset"))


def test_suiteql_shuffles_ties_of_an_order_that_is_not_unique(
    api: httpx.Client, many_items: str
) -> None:
    query = f"SELECT itemid FROM item WHERE class = '{many_items}' ORDER BY class"  # noqa: S608 - test data

    orders = {
        tuple(i["itemid"] for i in suiteql(api, query, limit=25).json()["items"]) for _ in range(5)
    }
    paged = [
        i["itemid"]
        for offset in (0, 10, 20)
        for i in suiteql(api, query, limit=10, offset=offset).json()["items"]
    ]

    assert len(orders) > 1, "ties come back in another order from call to call"
    assert all(sorted(order) == [f"{many_items}-{n:02d}" for n in range(25)] for order in orders)
    assert len(paged) == 25
    unique = f"SELECT itemid FROM item WHERE class = '{many_items}' ORDER BY class, id"  # noqa: S608 - test data
    assert (
        len({tuple(i["itemid"] for i in suiteql(api, unique).json()["items"]) for _ in range(3)})
        == 1
    )


def test_suiteql_answers_strings_lower_cased_without_nulls(
    api: httpx.Client, master_data: None
) -> None:
    answer = suiteql(
        api,
        'SELECT id AS "ID", creditlimit, isinactive, vatregnumber, billcity '  # noqa: S608 - test data
        f"FROM customer WHERE id = '{ACTIVE.id}'",
    ).json()

    assert answer["items"] == [
        {
            "links": [],
            "id": ACTIVE.id,
            "creditlimit": "10000",
            "isinactive": "F",
            "vatregnumber": "US-PC-0001",
        }
    ]


def test_suiteql_dates_are_the_accounts_local_time(api: httpx.Client, erp: NetSuiteAdapter) -> None:
    customer = erp.upsert_customer(a_draft(), a_key()).customer
    modified = api.get(f"{RECORD}/customer/{customer.id}").json()["lastModifiedDate"]
    local = (
        datetime.fromisoformat(modified)
        .astimezone(ZoneInfo("America/Los_Angeles"))
        .replace(tzinfo=None)
    )
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    query = (
        "SELECT lastmodifieddate, TO_CHAR(lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS modified "  # noqa: S608 - test data
        f"FROM customer WHERE id = '{customer.id}' "
        f"AND lastmodifieddate >= TO_TIMESTAMP('{text}', 'YYYY-MM-DD HH24:MI:SS')"
    )
    later = (local + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")

    [item] = suiteql(api, query).json()["items"]
    after = suiteql(api, query.replace(text, later)).json()["items"]

    assert item["modified"] == text
    assert item["lastmodifieddate"] == f"{local.month}/{local.day}/{local.year}"
    assert after == []


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM customer",
        "SELECT 1; DELETE FROM customer",
        "WITH gone AS (DELETE FROM netsuite.customers RETURNING id) SELECT id FROM gone",
        "SELECT nextval('netsuite.customer_numbers')",
        "SELECT nosuchcolumn FROM customer",
    ],
    ids=["delete", "two-statements", "with-delete", "write-in-select", "unknown-column"],
)
def test_suiteql_runs_one_read_only_select(api: httpx.Client, query: str) -> None:
    answer = suiteql(api, query)

    assert answer.status_code == 400
    assert error_codes(answer) == [("INVALID_PARAMETER", "q")]


def test_suiteql_shows_the_order_to_cash_documents(
    erp: NetSuiteAdapter,
    api: httpx.Client,
    books: ErpSandbox,
    erp_control: SandboxErpControl,
    master_data: None,
) -> None:
    request = order_request()
    order = erp.create_sales_order(request, a_key())
    erp_control.invoice(request.external_id)

    documents = suiteql(
        api,
        "SELECT t.id, t.type, t.status, t.foreigntotal, t.foreignamountremaining, "  # noqa: S608 - test data
        "l.createdfrom, l.item FROM transaction t JOIN transactionline l ON l.transaction = t.id "
        f"WHERE t.id = '{order.id}' OR l.createdfrom = '{order.id}' ORDER BY t.type, t.id",
    ).json()["items"]

    assert [(d["type"], d["status"], d["item"]) for d in documents] == [
        ("CustInvc", "A", "PC-SENSOR"),
        ("SalesOrd", "G", "PC-SENSOR"),
    ]
    invoice = documents[0]
    assert (invoice["createdfrom"], invoice["foreigntotal"], invoice["foreignamountremaining"]) == (
        order.id,
        "205.2",
        "205.2",
    )


# --- async jobs ---------------------------------------------------------------------


def wait_for_job(api: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(location).json()
        if job["completed"]:
            return job
        time.sleep(0.05)
    pytest.fail("the job did not complete")


def test_an_async_write_is_a_job_whose_result_is_the_synchronous_answer(
    api: httpx.Client, erp: NetSuiteAdapter, master_data: None
) -> None:
    external_id, key = f"801{uuid.uuid4().hex[:15]}", str(uuid.uuid4())
    headers = {"Prefer": "respond-async", "X-NetSuite-Idempotency-Key": key}

    accepted = api.put(f"{RECORD}/salesOrder/eid:{external_id}", json=order_body(), headers=headers)
    repeated = api.put(f"{RECORD}/salesOrder/eid:{external_id}", json=order_body(), headers=headers)
    job = wait_for_job(api, accepted.headers["Location"])
    [task] = api.get(f"{accepted.headers['Location']}/task").json()["items"]
    result = api.get(f"{accepted.headers['Location']}/task/{task['id']}/result")

    assert accepted.status_code == 202
    assert "/services/rest/async/v1/job/" in accepted.headers["Location"]
    assert error_codes(repeated) == [("IDEMPOTENCY_ERROR", "x-netsuite-idempotency-key")]
    assert job["id"] in repeated.json()["o:errorDetails"][0]["detail"]
    assert (job["progress"], result.status_code) == ("succeeded", 204)
    booked = erp.create_sales_order(order_request(external_id=external_id), a_key())
    assert result.headers["Location"].endswith(f"/salesOrder/{booked.id}")


def test_a_refused_async_write_fails_its_job_and_leaves_its_key_unused(
    api: httpx.Client, knobs: NetSuiteSandbox, master_data: None
) -> None:
    external_id, key = f"801{uuid.uuid4().hex[:15]}", str(uuid.uuid4())
    headers = {"Prefer": "respond-async", "X-NetSuite-Idempotency-Key": key}
    path = f"{RECORD}/salesOrder/eid:{external_id}"

    refused = api.put(path, json=order_body(entity={"id": HELD.id}), headers=headers)
    pending = api.get(refused.headers["Location"]).json()
    job = wait_for_job(api, refused.headers["Location"])
    [task] = api.get(f"{refused.headers['Location']}/task").json()["items"]
    result = api.get(f"{refused.headers['Location']}/task/{task['id']}/result")
    retried = api.put(path, json=order_body(), headers=headers)

    assert (pending["completed"], pending["progress"]) == (False, "pending")
    assert (job["progress"], result.status_code) == ("failed", 400)
    assert error_codes(result) == [("CREDIT_HOLD", "entity")]
    assert retried.status_code == 202


def test_a_customer_is_a_netsuite_customer_record(
    erp: NetSuiteAdapter, api: httpx.Client, erp_control: SandboxErpControl
) -> None:
    draft = a_draft()
    customer = erp.upsert_customer(draft, a_key()).customer
    erp_control.edit_customer(customer.id, status=CustomerStatus.CREDIT_HOLD)

    record = api.get(
        f"{RECORD}/customer/eid:{draft.crm_account_id}", params={"expandSubResources": "true"}
    ).json()

    assert (record["id"], record["entityId"], record["companyName"]) == (
        customer.id,
        customer.number,
        draft.name,
    )
    assert (record["subsidiary"]["id"], record["currency"]["id"]) == ("1", "1")
    assert record["creditHoldOverride"]["id"] == "ON"
    assert record["vatRegNumber"] == draft.tax_id
    [address] = record["addressBook"]["items"]
    assert address["defaultBilling"] is True
    assert address["addressBookAddress"]["addr1"] == "1 Harbour Road"
    assert erp.customer(customer.id) == replace(customer, status=CustomerStatus.CREDIT_HOLD)


def test_the_simulator_runs_as_a_process_until_sigterm(settings: Settings) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.netsuite",
            "--dsn",
            settings.postgres_dsn.get_secret_value(),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        answer = httpx.get(f"{url}{RECORD}/customer/x")
        assert error_codes(answer) == [("INVALID_LOGIN", None)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()


def test_invoices_fulfilments_and_payments_are_records_and_suiteql_rows(
    erp: NetSuiteAdapter, api: httpx.Client, books: ErpSandbox, master_data: None
) -> None:
    request = order_request()
    order = erp.create_sales_order(request, a_key())
    books.set_clock(invoice_delay_s=0, ship_delay_s=0, payment_delay_s=0)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = suiteql(
                api,
                "SELECT DISTINCT t.id, t.type FROM transaction t "  # noqa: S608 - test data
                "JOIN transactionline l ON l.transaction = t.id "
                f"WHERE l.createdfrom = '{order.id}' OR l.createdfrom IN "
                f"(SELECT i.id FROM transaction i JOIN transactionline il "
                f"ON il.transaction = i.id WHERE il.createdfrom = '{order.id}') ORDER BY t.id",
            ).json()["items"]
            documents = {row["type"]: row["id"] for row in rows}
            if len(documents) == 3:
                break
            time.sleep(0.1)
    finally:
        books.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)

    assert set(documents) == {"CustInvc", "ItemShip", "CustPymt"}
    invoice = api.get(f"{RECORD}/invoice/{documents['CustInvc']}").json()
    fulfilment = api.get(f"{RECORD}/itemFulfillment/{documents['ItemShip']}").json()
    payment = api.get(f"{RECORD}/customerPayment/{documents['CustPymt']}").json()
    shipped = suiteql(
        api,
        "SELECT status, shipcarrier, trackingnumberlist, location FROM transaction "  # noqa: S608 - test data
        f"WHERE id = '{documents['ItemShip']}'",
    ).json()["items"][0]
    assert (invoice["createdFrom"]["id"], invoice["total"], invoice["amountRemaining"]) == (
        order.id,
        205.2,
        0.0,
    )
    assert invoice["status"]["id"] == "B", "paid in full"
    assert (fulfilment["createdFrom"]["id"], fulfilment["shipStatus"]["id"]) == (order.id, "C")
    [package] = fulfilment["package"]["items"]
    assert package["packageTrackingNumber"] == shipped["trackingnumberlist"]
    assert shipped["shipcarrier"] == fulfilment["shipCarrier"]["refName"]
    assert shipped["status"] == "C"
    assert payment["apply"]["items"][0]["doc"]["id"] == documents["CustInvc"]
    assert payment["payment"] == 205.2
    assert erp.create_sales_order(request, a_key()).status is SalesOrderStatus.SHIPPED
    for kind in ("invoice", "itemFulfillment", "customerPayment"):
        missing = api.get(f"{RECORD}/{kind}/NOPE")
        assert (missing.status_code, error_codes(missing)[0][0]) == (404, "NONEXISTENT_ID")


def test_master_data_records(api: httpx.Client, master_data: None) -> None:
    item = api.get(f"{RECORD}/inventoryItem/PC-SENSOR").json()
    level = api.get(f"{RECORD}/priceLevel/{PRICE_BOOK.id}").json()
    currency = api.get(f"{RECORD}/currency/4").json()

    assert (item["itemId"], item["class"]["refName"], item["isInactive"]) == (
        "PC-SENSOR",
        "SENSORS",
        False,
    )
    assert item["subsidiary"]["items"] == [{"id": "1", "refName": "US01"}]
    assert (level["name"], level["custrecord_revsync_currency"]["id"]) == ("US standard", "1")
    assert (currency["symbol"], api.get(f"{RECORD}/currency/99").status_code) == ("EUR", 404)
