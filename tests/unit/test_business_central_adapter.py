"""The Business Central adapter's pure parts: the Entra session's token reuse and refresh,
the configuration's checks, how an order and a customer are written, how a refusal's message
becomes an ErpRejected, and how records read back."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr

from port_contracts import a_draft, line, order_request
from revsync.connectors import business_central as bc
from revsync.connectors.business_central_auth import (
    BusinessCentralAuthFailed,
    EntraSession,
    exact_json,
)
from revsync.errors import ErrorClass, TransientError, classify
from revsync.ports.erp import Address, CustomerStatus, ErpRejected

pytestmark = pytest.mark.unit

API_URL = "https://api.businesscentral.dynamics.com/v2.0/contoso/production/api/v2.0"
TOKEN_URL = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"


class StubHttp:
    """Answers calls in turn, recording each."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        self.calls.append((method, url, options))
        answer = self.answers.pop(0)
        answer.request = httpx.Request(method, url)
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issued(token: str, expires_in: object = 3599) -> httpx.Response:
    return httpx.Response(
        200, json={"token_type": "Bearer", "expires_in": expires_in, "access_token": token}
    )


def session(http: StubHttp, clock: Clock, margin_s: float = 300.0) -> EntraSession:
    return EntraSession(
        cast(Any, http), TOKEN_URL, "app-id", "app-secret", refresh_margin_s=margin_s, clock=clock
    )


# --- the Entra session --------------------------------------------------------------------


def test_a_token_is_asked_for_with_the_client_credentials_and_the_bc_scope() -> None:
    http, clock = StubHttp(issued("t1")), Clock()

    assert session(http, clock).token() == "t1"

    [(method, url, options)] = http.calls
    assert (method, url) == ("POST", TOKEN_URL)
    assert options["data"] == {
        "grant_type": "client_credentials",
        "client_id": "app-id",
        "client_secret": "app-secret",
        "scope": "https://api.businesscentral.dynamics.com/.default",
    }


def test_a_token_is_reused_until_a_margin_before_it_expires_then_replaced() -> None:
    http, clock = StubHttp(issued("t1"), issued("t2")), Clock()
    entra = session(http, clock)

    first = entra.token()
    clock.now += 3599 - 300 - 1
    still = entra.token()
    clock.now += 2
    replaced = entra.token()

    assert (first, still, replaced) == ("t1", "t1", "t2")
    assert len(http.calls) == 2


def test_a_short_lived_token_is_replaced_after_half_its_life() -> None:
    http, clock = StubHttp(issued("t1", 60), issued("t2", 60)), Clock()
    entra = session(http, clock)

    entra.token()
    clock.now += 29
    kept = entra.token()
    clock.now += 2

    assert (kept, entra.token()) == ("t1", "t2")


def test_a_refresh_for_a_token_another_thread_replaced_reuses_the_new_one() -> None:
    http, clock = StubHttp(issued("t1"), issued("t2")), Clock()
    entra = session(http, clock)
    entra.token()

    fresh = entra.refresh("t1")
    again = entra.refresh("t1")

    assert (fresh, again) == ("t2", "t2")
    assert len(http.calls) == 2


@pytest.mark.parametrize("expires_in", ["soon", None, True])
def test_a_token_without_a_lifetime_is_used_once(expires_in: object) -> None:
    http, clock = StubHttp(issued("t1", expires_in), issued("t2")), Clock()
    entra = session(http, clock)

    assert (entra.token(), entra.token()) == ("t1", "t2")


@pytest.mark.parametrize(
    ("status", "code", "says"),
    [
        (401, "invalid_client", "were refused"),
        (400, "unauthorized_client", "were refused"),
        (400, "invalid_scope", "were refused"),
        (400, "unsupported_grant_type", "were not accepted"),
    ],
)
def test_refused_credentials_are_a_transient_auth_failure_naming_the_code(
    status: int, code: str, says: str
) -> None:
    answer = httpx.Response(
        status, json={"error": code, "error_description": "AADSTS7000215: app-secret is wrong"}
    )
    http = StubHttp(answer)

    with pytest.raises(BusinessCentralAuthFailed) as refused:
        session(http, Clock()).token()

    assert f"{says} by Entra (HTTP {status}, {code})" in str(refused.value)
    assert "app-secret" not in str(refused.value)
    assert classify(refused.value) is ErrorClass.TRANSIENT


def test_entra_unavailable_is_transient_with_its_retry_after() -> None:
    http = StubHttp(httpx.Response(503, headers={"Retry-After": "12"}))

    with pytest.raises(TransientError) as unavailable:
        session(http, Clock()).token()

    assert unavailable.value.retry_after == 12


# --- configuration ------------------------------------------------------------------------


def config(**changes: Any) -> bc.BusinessCentralConfig:
    base = bc.BusinessCentralConfig(
        api_url=API_URL,
        token_url=TOKEN_URL,
        tenant_id="contoso",
        client_id="app-id",
        client_secret=SecretStr("s3cret"),
        companies={"US01": "CRONUS US", "DE01": "0b5e7c1d-3a52-4f63-9d0a-5be1c0f7a001"},
    )
    return replace(base, **changes)


def test_the_environment_root_is_the_api_root_without_api_v2() -> None:
    assert config().environment_url == (
        "https://api.businesscentral.dynamics.com/v2.0/contoso/production"
    )
    assert "s3cret" not in repr(config())


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"api_url": "https://api.businesscentral.dynamics.com/v2.0/contoso"}, "api_url"),
        ({"companies": {}}, "companies"),
        ({"inventory_entity": "GB01"}, "inventory_entity"),
        ({"client_secret": SecretStr("")}, "client_secret"),
    ],
)
def test_a_contradictory_configuration_is_refused_naming_the_setting(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        config(**changes)


# --- what is written ------------------------------------------------------------------------


def test_an_order_is_one_deep_insert_with_its_lines_and_tax_as_a_rate() -> None:
    request = order_request(
        line(1, "PC-SENSOR", "2", "100.0000", discount="10", tax="15.2000"),
        line(2, "PC-TIE", "3", "0.1000", tax="0.0300"),
        line(3, "PC-SAMPLE", "1", "0"),
    )

    body = bc._order_body(request)

    assert body["externalDocumentNumber"] == request.external_id
    assert body["shortcutDimension1Code"] == "NA"
    assert body["requestedDeliveryDate"] == "2026-12-24"
    assert (body["shipToAddressLine1"], body["shipToCountry"]) == ("1 Market St", "US")
    assert [
        (item["sequence"], item["lineObjectNumber"], item["taxPercent"])
        for item in body["salesOrderLines"]
    ] == [
        (10000, "PC-SENSOR", Decimal("8.000000")),
        (20000, "PC-TIE", Decimal("10.000000")),
        (30000, "PC-SAMPLE", Decimal(0)),
    ]
    written = json.loads(exact_json(body))
    assert written["salesOrderLines"][0]["unitPrice"] == 100.0
    assert b'"unitPrice": 100.0000' in exact_json(body), "amounts go as exact JSON numbers"


def test_a_customer_is_written_with_its_crm_owned_fields_blanks_for_none() -> None:
    draft = a_draft(tax_id=None, duns=None, billing_address=None)
    with_address = a_draft(billing_address=Address("1 Road", "Leeds", None, "LS1", "GB"))

    assert bc._link_body(draft) == {
        "displayName": draft.name,
        "countryCode": "US",
        "currencyCode": "USD",
        "taxRegistrationNumber": "",
        "dunsNumber": "",
        "billingAddressLine1": "",
        "billingCity": "",
        "billingState": "",
        "billingPostalCode": "",
        "billingCountryCode": "",
    }
    written = bc._link_body(with_address)
    assert (written["billingAddressLine1"], written["billingState"]) == ("1 Road", "")


def test_a_request_hash_is_the_operation_and_the_request_whatever_their_order() -> None:
    assert bc.request_hash("op", {"a": 1, "b": date(2026, 1, 1)}) == bc.request_hash(
        "op", {"b": date(2026, 1, 1), "a": 1}
    )
    assert bc.request_hash("op", {"a": 1}) != bc.request_hash("other", {"a": 1})


def test_odata_literals_and_keys_are_quoted() -> None:
    assert bc._text("O'Brien") == "'O''Brien'"
    guid = "0b5e7c1d-3a52-4f63-9d0a-5be1c0f7a001"
    assert bc._key(guid) == guid
    assert bc._key("C-1/2") == "%27C-1%2F2%27"


# --- refusals -----------------------------------------------------------------------------


def refusal(message: str, code: str = "Application_DialogException") -> httpx.Response:
    answer = httpx.Response(400, json={"error": {"code": code, "message": message}})
    answer.request = httpx.Request("POST", f"{API_URL}/companies(x)/salesOrders")
    return answer


@pytest.mark.parametrize(
    ("message", "code", "skus", "field"),
    [
        ("CREDIT_HOLD: customer C-1 is on credit hold", "CREDIT_HOLD", (), None),
        (
            "UNKNOWN_PRODUCT: unknown or inactive products [items: PC-OLD, PC-X]",
            "UNKNOWN_PRODUCT",
            ("PC-OLD", "PC-X"),
            None,
        ),
        (
            "INVALID_CUSTOMER: expected an ISO 4217 code [field: currencyCode]",
            "INVALID_CUSTOMER",
            (),
            "currency",
        ),
        (
            "INVALID_CUSTOMER: expected a street [field: billingAddressLine1]",
            "INVALID_CUSTOMER",
            (),
            "billing_address.street",
        ),
    ],
)
def test_a_refusal_of_the_validation_extension_is_erp_rejected(
    message: str, code: str, skus: tuple[str, ...], field: str | None
) -> None:
    with pytest.raises(ErpRejected) as rejected:
        bc.BusinessCentralAdapter._raise_for_refusal(refusal(message), "INVALID_ORDER")

    assert (rejected.value.code, rejected.value.skus, rejected.value.field) == (code, skus, field)
    assert classify(rejected.value) is ErrorClass.BUSINESS_RULE


def test_a_bad_request_naming_a_field_is_rejected_for_that_field() -> None:
    with pytest.raises(ErpRejected) as rejected:
        bc.BusinessCentralAdapter._raise_for_refusal(
            refusal("The value of shipToCountry is not valid.", "BadRequest"), "INVALID_ORDER"
        )

    assert (rejected.value.code, rejected.value.field) == ("INVALID_ORDER", "ship_to.country_code")


def test_any_other_bad_request_is_unexpected_without_its_message() -> None:
    with pytest.raises(bc.BusinessCentralUnexpected) as unexpected:
        bc.BusinessCentralAdapter._raise_for_refusal(
            refusal("Could not find a property named 'Acme Ltd'.", "BadRequest"), "INVALID_ORDER"
        )

    assert "BadRequest" in str(unexpected.value)
    assert "Acme" not in str(unexpected.value)
    assert classify(unexpected.value) is ErrorClass.UNKNOWN


# --- what is read -------------------------------------------------------------------------


LINK = {
    "@odata.etag": 'W/"JzE7Jw=="',
    "id": "c-1",
    "customerNumber": "10000",
    "crmAccountId": "",
    "displayName": "Acme Ltd",
    "countryCode": "GB",
    "currencyCode": "GBP",
    "taxRegistrationNumber": "",
    "dunsNumber": "150483782",
    "billingAddressLine1": "17 Quill Lane",
    "billingCity": "Leeds",
    "billingState": "",
    "billingPostalCode": "LS1 4AP",
    "billingCountryCode": "GB",
    "creditStatus": "Credit Hold",
    "blocks": "delivery,billing",
    "paymentTermsCode": "NET30",
    "creditLimit": Decimal("40000"),
    "exposure": 12,
}


def test_a_customer_link_reads_as_a_customer_of_its_companys_legal_entity() -> None:
    customer = bc._customer(dict(LINK), "GB01")

    assert (customer.id, customer.number, customer.legal_entity) == ("c-1", "10000", "GB01")
    assert (customer.crm_account_id, customer.tax_id, customer.duns) == (None, None, "150483782")
    assert customer.status is CustomerStatus.CREDIT_HOLD
    assert str(customer.credit_limit) == "40000.0000"
    assert customer.blocks == ("delivery", "billing")
    assert customer.billing_address == Address("17 Quill Lane", "Leeds", None, "LS1 4AP", "GB")
    assert bc._customer({**LINK, "billingAddressLine1": "", "billingCity": "",
                         "billingCountryCode": ""}, "GB01").billing_address is None  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"creditStatus": "Frozen"}, "ValueError"),
        ({"creditLimit": 1.5}, "TypeError"),
        ({"displayName": None, "id": None, "creditLimit": None}, "TypeError"),
    ],
)
def test_a_malformed_record_is_unexpected_without_its_values(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(bc.BusinessCentralUnexpected) as malformed:
        bc._customer({**LINK, **changes}, "GB01")

    assert "Acme" not in str(malformed.value)
    assert "Frozen" not in str(malformed.value)
    assert "customerLinks" in str(malformed.value)
    assert named in str(malformed.value)


def test_an_item_in_every_company_is_sold_by_every_legal_entity() -> None:
    item = {
        "number": "PC-1",
        "displayName": "Sensor",
        "itemCategoryCode": "SENSORS",
        "baseUnitOfMeasureCode": "EA",
        "blocked": False,
    }
    everywhere = {"US01", "DE01"}

    assert bc._product(item, {"US01", "DE01"}, everywhere).legal_entities == frozenset()
    assert bc._product(item, {"US01"}, everywhere).legal_entities == frozenset({"US01"})
    assert not bc._product({**item, "blocked": True}, {"US01"}, everywhere).active
