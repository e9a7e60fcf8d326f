"""The process API with its production wiring, in process (Starlette's test client): the ERP
sandbox behind its circuit breaker over HTTP, the identity provider sandbox's access tokens,
and the stack's PostgreSQL, registry and Kafka for submitted orders (an isolated catalog).

Each endpoint answered; every refusal: no token, a spoiled one, one without the endpoint's
scope, a client over its rate limit; the correlation id and trace carried; the ERP faulted down
(the breaker opens, answers from the cache are marked stale, what was never cached is 503
with Retry-After, and the ERP back closes it); an order submitted twice reaching Kafka once.
Last, Schemathesis calls every operation with requests generated from the OpenAPI document,
and none gets a server error. Ids are this run's own: the ERP schema is shared.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator
from sandbox.harness import free_port
from sandbox.idp import IdentityProvider
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.core.result import Ok

from contract_fixtures import cli_for, drop_topics, governed, isolated_contracts
from process_api import logic
from process_api.app import ProcessApiConfig, create_app
from process_api.service import configured, server
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import OrderCreated, SourceSystem
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.deployables import Context
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from revsync.runtime import headers as h
from revsync.runtime.observability import Liveness
from revsync.runtime.relay import OutboxRelay
from revsync.runtime.served import ServerStopped
from revsync.settings import ProcessApiSettings, ServiceSettings, Settings
from runtime_support import read_topic, wait_for

NEVER = 3600.0
AUDIENCE = "revsync-process-api"
RUN = uuid.uuid4().hex[:8].upper()
SENSOR, VALVE, PUMP = f"SEN-{RUN}", f"VAL-{RUN}", f"PUM-{RUN}"
BOOK, NEW_BOOK = f"PB-{RUN}", f"PB2-{RUN}"
ACCOUNT, HELD_ACCOUNT = f"001{RUN}A", f"001{RUN}H"
QUOTING = ("cpq", "cpq-secret", ["pricing:read", "credit:read", "availability:read"])
WEBSHOP = ("webshop", "webshop-secret", ["orders:write"])
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EXAMPLES = 100
"""Generated requests per operation and mode."""


# --- the sandboxes, the contracts ------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(autouse=True)
def clients(idp: IdentityProvider) -> None:
    idp.reset()
    idp.configure(audience=AUDIENCE)
    for client_id, secret, scopes in (QUOTING, WEBSHOP):
        idp.add_client(client_id, secret, scopes=scopes)


@pytest.fixture(scope="module")
def erp(settings: Settings) -> Iterator[ErpSimulator]:
    simulator = ErpSimulator(
        settings.postgres_dsn.get_secret_value(), invoice_delay_s=NEVER, ship_delay_s=NEVER
    ).start()
    with ErpSandbox(simulator.url) as control:
        control.seed_customers(
            [
                Customer(
                    f"C-{RUN}", "Acme", ACCOUNT, "US01", CustomerStatus.ACTIVE, Decimal(5000), "USD"
                ),
                Customer(
                    f"C-{RUN}-H",
                    "Held Co",
                    HELD_ACCOUNT,
                    "US01",
                    CustomerStatus.CREDIT_HOLD,
                    Decimal(5000),
                    "USD",
                ),
            ]
        )
        control.seed_products(
            Product(sku, f"{sku} part", "VALVES", "EA", True, frozenset({"US01"}))
            for sku in (SENSOR, VALVE)
        )
        prices = {SENSOR: Decimal("120.00"), VALVE: Decimal("50.00")}
        control.seed_price_books(
            [PriceBook(book, "US01 list", "USD", "US01", prices) for book in (BOOK, NEW_BOOK)]
        )
        control.seed_stock(
            [
                StockLevel(SENSOR, "NA", Decimal(10), None),
                StockLevel(VALVE, "NA", Decimal(2), date(2027, 1, 4)),
            ]
        )
    yield simulator
    simulator.stop()


@dataclass(frozen=True)
class Contracts:
    folder: Path
    catalog: Catalog

    @property
    def created_topic(self) -> str:
        return self.catalog.topic_for(OrderCreated.schema_name).name


@pytest.fixture(scope="module")
def contracts(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contracts]:
    """A catalog of the module's own, registered and its topics made."""
    folder = isolated_contracts(tmp_path_factory.mktemp("process-api") / "avro")
    yield Contracts(folder, governed(cli_for(settings), folder))
    drop_topics(settings, folder)


Wire = Callable[..., ProcessApiConfig]
OpenApi = Callable[..., TestClient]


@pytest.fixture
def wire(
    settings: Settings, idp: IdentityProvider, erp: ErpSimulator, contracts: Contracts
) -> Iterator[Wire]:
    """The process API's configuration as ``revsync run process-api`` makes it; ``options``
    are its settings, ``master_data_ttl_s`` the services'."""
    with ExitStack() as resources:

        def wire(master_data_ttl_s: float = 60.0, **options: Any) -> ProcessApiConfig:
            context = Context(
                settings=settings,
                service=ServiceSettings(
                    erp_base_url=erp.url,
                    erp_api_token=SecretStr(DEFAULT_API_TOKEN),
                    http_timeout_s=5.0,
                    master_data_ttl_s=master_data_ttl_s,
                ),
                catalog=contracts.catalog,
                serde=serde(settings, contracts),
                resources=resources,
            )
            trusted = {"process_api_oidc_issuer": idp.issuer, "process_api_oidc_audience": AUDIENCE}
            own = ProcessApiSettings(**(trusted | options))
            return configured(context, own, Liveness(60), threading.Event())

        yield wire


@pytest.fixture
def open_api(wire: Wire) -> Iterator[OpenApi]:
    """The process API behind a test client, its lifespan run."""
    with ExitStack() as opened:

        def open_api(**options: Any) -> TestClient:
            return opened.enter_context(TestClient(create_app(wire(**options))))

        yield open_api


def test_a_process_api_that_cannot_start_says_so(wire: Wire) -> None:
    def registry_out() -> None:
        raise RuntimeError("the registry did not answer")

    api = server(replace(wire(), prepare=registry_out), "127.0.0.1", free_port(), threading.Event())

    with pytest.raises(ServerStopped, match="stopped serving by itself"):
        api.run()


def serde(settings: Settings, contracts: Contracts) -> EventSerde:
    registry = SchemaRegistryClient(settings.registry_config())
    return EventSerde(registry, contracts.catalog, SchemaRepository(contracts.folder))


def token(idp: IdentityProvider, client: tuple[str, str, list[str]]) -> str:
    answer = httpx.post(
        f"{idp.issuer}/token",
        data={"grant_type": "client_credentials"},
        auth=(client[0], client[1]),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    issued: str = answer.json()["access_token"]
    return issued


def bearer(idp: IdentityProvider, client: tuple[str, str, list[str]] = QUOTING) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(idp, client)}"}


def quote(*lines: tuple[str, str], book: str = BOOK) -> dict[str, Any]:
    return {
        "legal_entity": "US01",
        "region": "NA",
        "currency": "USD",
        "price_book_id": book,
        "lines": [{"sku": sku, "quantity": "2", "unit_price": price} for sku, price in lines],
    }


# --- the endpoints ---------------------------------------------------------------------------


def test_a_quote_is_priced_line_by_line_as_order_time_validation_would(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api()

    answer = api.post(
        "/v1/pricing/validate",
        json=quote((SENSOR, "121.20"), (VALVE, "48.00"), (PUMP, "10")),
        headers=bearer(idp),
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["reason"], body["skus"]) == (False, "UNKNOWN_PRODUCT", [PUMP])
    assert body["message"] == f"not sold by US01: {PUMP}"
    sensor, valve, pump = body["lines"]
    assert (sensor["accepted"], sensor["list_price"], sensor["deviation"]) == (
        True,
        "120.0000",
        "0.01",
    )
    assert (valve["accepted"], valve["reason"], valve["list_price"], valve["tolerance"]) == (
        False,
        "PRICING_MISMATCH",
        "50.0000",
        "0.01",
    )
    assert (pump["reason"], pump["list_price"]) == ("UNKNOWN_PRODUCT", None)
    assert (body["stale"], answer.headers["content-type"]) == (False, "application/json")


def test_credit_is_approved_within_what_is_available_and_held_for_a_customer_on_hold(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api()
    cpq = bearer(idp)

    def check(amount: str, **customer: str) -> dict[str, Any]:
        asked = {"legal_entity": "US01", "currency": "USD", "amount": amount} | customer
        answer: dict[str, Any] = api.post("/v1/credit/check", json=asked, headers=cpq).json()
        return answer

    within = check("5000", account_id=ACCOUNT)
    over = check("5000.01", customer_id=f"C-{RUN}")
    held = check("1", account_id=HELD_ACCOUNT)
    prospect = check("1", account_id=f"001{RUN}P")

    assert (within["decision"], within["customer_id"], within["available_credit"]) == (
        "approved",
        f"C-{RUN}",
        "5000.0000",
    )
    assert (within["credit_limit"], within["exposure"]) == ("5000.0000", "0.0000")
    assert (over["decision"], over["reason"]) == ("held", "CREDIT_HOLD")
    assert (held["decision"], held["message"]) == ("held", f"ERP customer C-{RUN}-H is on hold")
    assert (prospect["decision"], prospect["reason"]) == ("held", "CUSTOMER_NOT_MASTERED")


def test_availability_is_answered_per_product_with_the_date_more_arrives(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    asked = {
        "region": "NA",
        "lines": [{"sku": SENSOR, "quantity": "10"}, {"sku": VALVE, "quantity": "3"}],
    }

    body = open_api().post("/v1/availability", json=asked, headers=bearer(idp)).json()

    sensor, valve = body["lines"]
    assert (sensor["available"], sensor["available_quantity"], sensor["available_on"]) == (
        True,
        "10.0000",
        None,
    )
    assert (valve["available"], valve["available_quantity"], valve["available_on"]) == (
        False,
        "2.0000",
        "2027-01-04",
    )


# --- who may call, and how often -------------------------------------------------------------


def test_a_call_without_a_bearer_token_is_401_with_a_challenge(open_api: OpenApi) -> None:
    api = open_api()

    for headers in ({}, {"Authorization": "Basic Y3BxOnNlY3JldA=="}, {"Authorization": "Bearer "}):
        answer = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="revsync-process-api"'
        assert answer.json()["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("bad_signature", "InvalidSignatureError"),
        ("unknown_key", "PyJWKClientError"),
        ("wrong_audience", "InvalidAudienceError"),
        ("wrong_issuer", "InvalidIssuerError"),
        ("expired", "ExpiredSignatureError"),
    ],
)
def test_a_token_the_provider_did_not_issue_for_this_api_is_401(
    open_api: OpenApi, idp: IdentityProvider, fault: str, why: str
) -> None:
    api = open_api()
    idp.configure(token_fault=fault)

    answer = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=bearer(idp))

    assert answer.status_code == 401
    assert answer.json() == {
        "code": "invalid_token",
        "message": f"token refused: {why}",
        "fields": [],
    }
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_while_the_identity_provider_cannot_be_reached_calls_are_503(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api(process_api_oidc_issuer=f"http://127.0.0.1:{free_port()}")

    answer = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=bearer(idp))

    assert answer.status_code == 503
    assert answer.json()["code"] == "provider_unreachable"
    assert answer.headers["retry-after"] == "5"


def test_a_token_without_the_endpoints_scope_is_403_naming_the_scope(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api()
    shop = bearer(idp, WEBSHOP)

    answers = {
        path: api.post(path, json={}, headers=shop)
        for path in ("/v1/pricing/validate", "/v1/credit/check", "/v1/availability")
    }
    quoting = api.post("/v1/orders", json={}, headers=bearer(idp) | {"Idempotency-Key": "k"})

    needed = {
        "/v1/pricing/validate": "pricing:read",
        "/v1/credit/check": "credit:read",
        "/v1/availability": "availability:read",
    }
    for path, answer in answers.items():
        assert answer.status_code == 403
        assert answer.json()["message"] == f"the token lacks scope {needed[path]}"
        assert f'scope="{needed[path]}"' in answer.headers["www-authenticate"]
    assert quoting.status_code == 403
    assert quoting.json()["code"] == "insufficient_scope"


def test_a_client_over_its_rate_limit_is_429_with_retry_after_and_others_are_not(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api(process_api_rate_per_s=0.01, process_api_burst=2)
    cpq, shop = bearer(idp), bearer(idp, WEBSHOP)
    priced = [
        api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=cpq) for _ in range(3)
    ]

    other = api.post("/v1/orders", json={}, headers=shop | {"Idempotency-Key": "k"})

    assert [answer.status_code for answer in priced] == [200, 200, 429]
    assert priced[2].json()["code"] == "rate_limited"
    assert 50 <= int(priced[2].headers["retry-after"]) <= 100, "a token every 100 s"
    assert other.status_code == 422, "another client's bucket is its own"


def test_the_correlation_id_and_the_trace_are_answered_back(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    api = open_api()
    given = {
        "X-Correlation-Id": "quote-Q-00042",
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }

    carried = api.post(
        "/v1/pricing/validate", json=quote((SENSOR, "120")), headers=bearer(idp) | given
    )
    refused = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")))

    assert carried.headers["x-correlation-id"] == "quote-Q-00042"
    version, trace_id, parent, flags = carried.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent not in ("00f067aa0ba902b7", "0" * 16)
    assert refused.status_code == 401
    assert uuid.UUID(refused.headers["x-correlation-id"])
    assert len(refused.headers["traceparent"].split("-")[1]) == 32


# --- the ERP down ----------------------------------------------------------------------------


def test_with_the_erp_down_the_breaker_opens_and_cached_answers_are_marked_stale(
    open_api: OpenApi, idp: IdentityProvider, erp: ErpSimulator
) -> None:
    api = open_api(
        master_data_ttl_s=0,  # every read asks the ERP; what it answered is the fallback
        process_api_breaker_failures=2,
        process_api_breaker_cool_down_s=1,
    )
    cpq = bearer(idp)
    fresh = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=cpq)
    assert fresh.json()["stale"] is False
    errors = erp.server.counters.get("faults.errors", 0)
    with ErpSandbox(erp.url) as control:
        control.set_faults(error_rate=1.0)
        try:
            failing = [
                api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=cpq)
                for _ in range(2)
            ]
            asked = erp.server.counters.get("faults.errors", 0)
            while_open = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=cpq)
            never_cached = api.post(
                "/v1/pricing/validate", json=quote((SENSOR, "120"), book=NEW_BOOK), headers=cpq
            )
            assert erp.server.counters.get("faults.errors", 0) == asked, "open: the ERP not asked"
        finally:
            control.set_faults(error_rate=0.0)

    assert asked > errors
    for answer in (*failing, while_open):
        assert answer.status_code == 200
        body = answer.json()
        assert (body["stale"], body["accepted"]) == (True, True)
        assert body["age_s"] >= 0
    assert never_cached.status_code == 503
    assert never_cached.json()["code"] == "erp_unavailable"
    assert int(never_cached.headers["retry-after"]) >= 1
    metrics = api.get("/metrics").text
    assert 'revsync_call_breaker_open{system="erp"} 1.0' in metrics

    def fresh_again() -> bool:
        answer = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=cpq)
        return answer.status_code == 200 and answer.json()["stale"] is False

    wait_for(fresh_again, timeout_s=20)
    assert 'revsync_call_breaker_open{system="erp"} 0.0' in api.get("/metrics").text


def test_an_erp_answer_the_api_does_not_understand_is_502_and_opens_no_breaker(
    open_api: OpenApi, idp: IdentityProvider, erp: ErpSimulator
) -> None:
    api = open_api(master_data_ttl_s=0, process_api_breaker_failures=1)
    with ErpSandbox(erp.url) as control:
        control.set_faults(error_rate=1.0, error_status=400)
        try:
            answer = api.post(
                "/v1/pricing/validate", json=quote((SENSOR, "120")), headers=bearer(idp)
            )
        finally:
            control.set_faults(error_rate=0.0, error_status=503)

    assert answer.status_code == 502
    assert answer.json()["code"] == "bad_gateway"
    assert "400" in answer.json()["message"]
    after = api.post("/v1/pricing/validate", json=quote((SENSOR, "120")), headers=bearer(idp))
    assert (after.status_code, after.json()["stale"]) == (200, False)


# --- order submission ------------------------------------------------------------------------


def submission(order_number: str, **changes: Any) -> dict[str, Any]:
    address = {"street": "1 Harbour Road", "city": "Chicago", "country_code": "US"}
    return {
        "channel": "webshop",
        "order_number": order_number,
        "account_id": ACCOUNT,
        "price_book_id": BOOK,
        "currency": "USD",
        "legal_entity": "US01",
        "region": "NA",
        "billing_address": address,
        "shipping_address": address,
        "lines": [
            {
                "sku": SENSOR,
                "product_name": "Pressure sensor",
                "product_line": "SENSORS",
                "quantity": "2",
                "unit_price": "120",
                "tax_amount": "19.20",
            }
        ],
    } | changes


def test_an_order_submitted_twice_enters_the_pipeline_once(
    open_api: OpenApi, idp: IdentityProvider, settings: Settings, contracts: Contracts
) -> None:
    api = open_api()
    shop = bearer(idp, WEBSHOP)
    number, key = f"WS-{RUN}", f"key-{RUN}"
    traced = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "X-Correlation-Id": f"ws-{RUN}"}
    relay = OutboxRelay(
        dsn=settings.postgres_dsn.get_secret_value(), kafka_config=settings.kafka_config()
    )
    publishing = threading.Thread(target=relay.run, daemon=True)
    publishing.start()
    try:
        first = api.post(
            "/v1/orders", json=submission(number), headers=shop | traced | {"Idempotency-Key": key}
        )
        again = api.post(
            "/v1/orders", json=submission(number), headers=shop | {"Idempotency-Key": key}
        )
        other_key = api.post(
            "/v1/orders", json=submission(number), headers=shop | {"Idempotency-Key": key + "-2"}
        )
        reused = api.post(
            "/v1/orders",
            json=submission(number, purchase_order_number="PO-1"),
            headers=shop | {"Idempotency-Key": key},
        )
        changed = api.post(
            "/v1/orders",
            json=submission(number, purchase_order_number="PO-1"),
            headers=shop | {"Idempotency-Key": key + "-3"},
        )
        sentinel = api.post(
            "/v1/orders",
            json=submission(f"{number}-S"),
            headers=shop | {"Idempotency-Key": key + "-S"},
        )
        records = read_topic(settings, contracts.created_topic, expect=2)
    finally:
        relay.stop()
        publishing.join(30)

    assert first.status_code == 202, first.text
    answer = first.json()
    assert (answer["order_id"], answer["status"]) == (f"webshop:{number}", "submitted")
    assert answer["correlation_id"] == f"ws-{RUN}"
    assert "idempotent-replayed" not in first.headers
    for repeat in (again, other_key):
        assert (repeat.status_code, repeat.json()) == (202, answer)
        assert repeat.headers["idempotent-replayed"] == "true"
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert (changed.status_code, changed.json()["code"]) == (409, "order_submitted_before")
    assert sentinel.status_code == 202
    decode = serde(settings, contracts).deserialize
    events = [decode(contracts.created_topic, record.value()) for record in records]
    mine = [
        e for e in events if isinstance(e, OrderCreated) and e.crm_order_id == f"webshop:{number}"
    ]
    assert len(mine) == 1
    [event] = mine
    assert str(event.envelope.event_id) == answer["event_id"]
    assert (event.envelope.source_system, event.envelope.correlation_id) == (
        SourceSystem.REVSYNC,
        f"ws-{RUN}",
    )
    assert (event.crm_account_id, event.erp_customer_id, event.grand_total) == (
        ACCOUNT,
        None,
        Decimal("259.2000"),
    )
    [record] = [r for r in records if r.key() == f"webshop:{number}".encode()]
    carried = h.get(record.headers() or [], h.TRACEPARENT)
    assert carried is not None
    assert carried.split("-")[1] == TRACE_ID
    assert h.get(record.headers() or [], "ce_source") == "/revsync/process_api"


def test_an_order_that_does_not_add_up_is_refused_naming_the_field(
    open_api: OpenApi, idp: IdentityProvider
) -> None:
    line = submission("x")["lines"][0] | {"discount_amount": "240.01"}

    answer = open_api().post(
        "/v1/orders",
        json=submission(f"WS-{RUN}-BAD", lines=[line]),
        headers=bearer(idp, WEBSHOP) | {"Idempotency-Key": f"bad-{RUN}"},
    )

    assert answer.status_code == 422
    assert answer.json()["fields"] == [
        {"field": "lines.0", "problem": "not a valid value (value_error)"}
    ]


# --- generated from the OpenAPI document -----------------------------------------------------


@pytest.fixture
def authorizations(idp: IdentityProvider) -> dict[str, str]:
    """An access token for each operation's path, with its scope."""
    tokens = {client[0]: bearer(idp, client)["Authorization"] for client in (QUOTING, WEBSHOP)}
    granted = {scope: client[0] for client in (QUOTING, WEBSHOP) for scope in client[2]}
    return {what.split()[1]: tokens[granted[scope]] for scope, what in logic.SCOPES.items()}


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_no_request_generated_from_the_openapi_document_gets_a_server_error(
    open_api: OpenApi, authorizations: dict[str, str], mode: GenerationMode
) -> None:
    """Requests that fit each operation's schema (positive) and requests that break it
    (negative), every one with a token of the operation's scope."""
    api = open_api()
    document = api.get("/v1/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == set(authorizations)
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert {operation.path for operation in operations} == set(authorizations)
    for operation in operations:
        answered_without_a_server_error(operation, mode, authorizations[operation.path])


def answered_without_a_server_error(
    operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode, authorization: str
) -> None:
    @given(case=operation.as_strategy(mode))
    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
    )
    def answered(case: Case[Any]) -> None:
        answer = case.call(headers={"Authorization": authorization})
        assert answer.status_code < 500, f"{case.method} {case.path}: {answer.text}"

    answered()
