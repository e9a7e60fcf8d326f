"""The Salesforce adapter against the CRM simulator.

Each failure Salesforce can answer with is provoked for real over HTTP and must come out of the
adapter as the error class the runtime acts on: retry (transient), wait (dependency not ready)
or dead-letter (refused). The simulator's own behaviour (change events) is in
test_crm_simulator.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pydantic import SecretStr
from sandbox.crm import CrmSandbox, CrmSimulator
from sandbox.http import Faults, JsonServer, Request, Response

from crm_sandbox import an_invoice, an_order, calls, config
from leaks import told
from revsync.connectors.http import DEFAULT_MAX_RESPONSE_BYTES, DeadlineExceeded, ResponseTooLarge
from revsync.connectors.salesforce import (
    BATCH_LIMIT,
    CrmAuthFailed,
    CrmProtocolViolation,
    SalesforceClient,
    SalesforceConfig,
)
from revsync.errors import RETRYABLE, DependencyNotReady, ErrorClass, TransientError, classify
from revsync.ports.crm import CrmReferenceMissing, CrmRejected, RecordNotFound

# --- Sign-in ----------------------------------------------------------------------------------


def test_the_token_is_fetched_once_and_refreshed_once_when_the_session_expires(
    simulator: CrmSimulator, sandbox: CrmSandbox, crm: SalesforceClient, account: str
) -> None:
    before = calls(simulator, "oauth.token")
    assert crm.get("Account", account)["Name"] == "Acme GmbH"
    assert crm.get("Account", account, ["Name"]) == {"Name": "Acme GmbH"}
    assert calls(simulator, "oauth.token") == before + 1

    assert sandbox.expire_sessions() >= 1
    assert crm.get("Account", account)["ERP_Customer_Id__c"] == "C-10001"
    assert calls(simulator, "oauth.token") == before + 2


def test_threads_that_all_meet_an_expired_session_share_one_refresh(
    simulator: CrmSimulator, sandbox: CrmSandbox, crm: SalesforceClient, account: str
) -> None:
    crm.get("Account", account)
    sandbox.expire_sessions()
    before = calls(simulator, "oauth.token")
    failures: list[BaseException] = []

    def read() -> None:
        try:
            crm.get("Account", account)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert calls(simulator, "oauth.token") == before + 1


def test_a_session_refused_twice_is_an_auth_failure(
    simulator: CrmSimulator, crm: SalesforceClient, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Forgetful(set[str]):
        """Issues tokens it never honours."""

        def add(self, token: str) -> None:
            pass

    crm.get("Account", account)
    monkeypatch.setattr(simulator, "_tokens", Forgetful())
    with pytest.raises(CrmAuthFailed, match="freshly issued session was refused"):
        crm.get("Account", account)


def test_refused_credentials_are_an_auth_failure_that_keeps_the_secret(
    simulator: CrmSimulator, account: str
) -> None:
    secret = "wrong-secret-do-not-print"
    settings = config(simulator, client_secret=SecretStr(secret))
    with SalesforceClient(settings) as crm, pytest.raises(CrmAuthFailed) as caught:
        crm.get("Account", account)
    assert "were refused" in str(caught.value)
    assert "invalid_client" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert secret not in repr(settings)
    assert classify(caught.value) is ErrorClass.TRANSIENT


# --- Writes -----------------------------------------------------------------------------------


@pytest.fixture
def order(sandbox: CrmSandbox, account: str, product: str) -> str:
    return sandbox.create_orders([an_order(account, product)])[0]


def test_upsert_by_external_id_creates_then_updates(crm: SalesforceClient, order: str) -> None:
    key = f"INV-{uuid.uuid4().hex[:8]}"
    first = crm.upsert("Invoice__c", "ERP_Invoice_Id__c", key, an_invoice(order, 1))
    second = crm.upsert(
        "Invoice__c", "ERP_Invoice_Id__c", key, {"Status__c": "Paid", "Amount_Due__c": 0}
    )
    assert first.created
    assert not second.created
    assert first.id == second.id
    assert first.id.startswith("a0X")
    assert len(first.id) == 18
    stored = crm.get("Invoice__c", first.id)
    assert (stored["ERP_Invoice_Id__c"], stored["Status__c"]) == (key, "Paid")


def test_collections_upsert_sends_at_most_200_records_a_call_and_keeps_input_order(
    simulator: CrmSimulator, crm: SalesforceClient, order: str
) -> None:
    run = uuid.uuid4().hex[:6]
    invoices = [an_invoice(order, n, ERP_Invoice_Id__c=f"INV-{run}-{n}") for n in range(450)]
    before = calls(simulator, "api.collections.upsert")

    results = crm.upsert_many("Invoice__c", "ERP_Invoice_Id__c", invoices)

    assert (
        calls(simulator, "api.collections.upsert") == before + 3 == before + 450 // BATCH_LIMIT + 1
    )
    assert [r.external_id for r in results] == [i["ERP_Invoice_Id__c"] for i in invoices]
    assert all(r.success and r.created and r.error() is None for r in results)
    again = crm.upsert_many("Invoice__c", "ERP_Invoice_Id__c", invoices[:5])
    assert [r.id for r in again] == [r.id for r in results[:5]]
    assert not any(r.created for r in again)


def test_each_refused_record_of_a_collection_is_typed_and_names_its_field(
    crm: SalesforceClient, order: str
) -> None:
    run = uuid.uuid4().hex[:6]
    good = an_invoice(order, 1, ERP_Invoice_Id__c=f"INV-{run}-ok")
    no_total = {**an_invoice(order, 2, ERP_Invoice_Id__c=f"INV-{run}-1"), "Total__c": None}
    negative = an_invoice(order, 3, ERP_Invoice_Id__c=f"INV-{run}-2", Amount_Due__c=-1)
    unknown_order = an_invoice(
        order, 4, ERP_Invoice_Id__c=f"INV-{run}-3", Order__c="801" + "9" * 15
    )
    unknown_field = an_invoice(order, 5, ERP_Invoice_Id__c=f"INV-{run}-4", Colour__c="red")

    results = crm.upsert_many(
        "Invoice__c", "ERP_Invoice_Id__c", [good, no_total, negative, unknown_order, unknown_field]
    )

    assert [r.success for r in results] == [True, False, False, False, False]
    missing, refused, dangling, unknown = (r.error() for r in results[1:])
    assert isinstance(missing, CrmRejected)
    assert (missing.status_code, missing.fields) == ("REQUIRED_FIELD_MISSING", ("Total__c",))
    assert str(missing) == (
        f"Salesforce refused Invoice__c ERP_Invoice_Id__c=INV-{run}-1: REQUIRED_FIELD_MISSING "
        "on Total__c"
    )
    assert isinstance(refused, CrmRejected)
    assert (refused.status_code, refused.fields) == (
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        ("Amount_Due__c",),
    )
    assert isinstance(dangling, CrmReferenceMissing)
    assert dangling.fields == ("Order__c",)
    assert isinstance(dangling, DependencyNotReady)
    assert "Order__c" in str(dangling)
    assert unknown_order["Order__c"] not in str(dangling)  # Salesforce's message quotes it
    assert isinstance(unknown, CrmRejected)
    assert (unknown.status_code, unknown.fields) == ("INVALID_FIELD", ("Colour__c",))
    with pytest.raises(CrmRejected):
        results[1].raise_for_failure()


def test_status_updates_keyed_by_id_of_an_order_the_crm_lacks_are_not_ready(
    crm: SalesforceClient, order: str
) -> None:
    missing_order = "801" + "8" * 15
    results = crm.upsert_many(
        "Order",
        "Id",
        [
            {"Id": order, "Billing_Status__c": "Invoiced"},
            {"Id": missing_order, "Billing_Status__c": "Paid"},
        ],
    )
    assert results[0].success
    assert not results[0].created
    assert isinstance(results[1].error(), RecordNotFound)
    assert crm.get("Order", order, ["Billing_Status__c"])["Billing_Status__c"] == "Invoiced"


def test_single_record_refusals_and_missing_records(crm: SalesforceClient, order: str) -> None:
    with pytest.raises(CrmRejected) as too_long:
        crm.update("Order", order, {"ERP_Message__c": "x" * 256})
    assert too_long.value.status_code == "STRING_TOO_LONG"
    assert too_long.value.fields == ("ERP_Message__c",)
    assert classify(too_long.value) is ErrorClass.BUSINESS_RULE

    with pytest.raises(CrmReferenceMissing, match="Order__c"):
        crm.upsert(
            "Shipment__c",
            "ERP_Shipment_Id__c",
            "SHP-X",
            {"Order__c": "801" + "7" * 15, "Tracking_Number__c": "1Z999"},
        )
    with pytest.raises(CrmRejected, match="REQUIRED_FIELD_MISSING on Tracking_Number__c"):
        crm.upsert("Shipment__c", "ERP_Shipment_Id__c", "SHP-Y", {"Order__c": order})
    with pytest.raises(CrmRejected) as wrong_type:
        crm.update("Order", order, {"EffectiveDate": "next tuesday"})
    # Salesforce's message quotes the value; the error names the code and the field.
    assert str(wrong_type.value) == (
        f"Salesforce refused Order {order}: INVALID_TYPE_ON_FIELD_IN_RECORD on EffectiveDate"
    )
    assert "next tuesday" not in told(wrong_type.value)

    absent = "801" + "6" * 15
    with pytest.raises(RecordNotFound) as not_found:
        crm.get("Order", absent)
    assert (not_found.value.sobject, not_found.value.record_id) == ("Order", absent)
    with pytest.raises(RecordNotFound):
        crm.update("Order", absent, {"ERP_Status__c": "Accepted"})
    with pytest.raises(RecordNotFound):
        crm.related("Order", absent, "OrderItems")


def test_a_trigger_quoting_the_record_back_is_told_by_its_code_alone(
    sandbox: CrmSandbox, crm: SalesforceClient, account: str, product: str
) -> None:
    """No customer data in errors: an Apex trigger's message quotes the contact and address."""
    contact = {
        "BillingEmailAddress": "ap@acme.example",
        "BillingPhoneNumber": "+1 312 555 0100",
        "ShippingStreet": "17 Quill Lane",
    }
    [order] = sandbox.create_orders([an_order(account, product, PoNumber="PO-LOCKED", **contact)])
    sandbox.set_triggers(
        [
            {
                "sobject": "Order",
                "field": "PoNumber",
                "equals": "PO-LOCKED",
                "message": "{ShippingStreet}: locked for {BillingEmailAddress}, "
                "{BillingPhoneNumber}",
            }
        ]
    )
    with pytest.raises(CrmRejected) as refused:
        crm.update("Order", order, {"ERP_Status__c": "Accepted"})
    assert str(refused.value) == (
        f"Salesforce refused Order {order}: FIELD_CUSTOM_VALIDATION_EXCEPTION"
    )
    for quoted in contact.values():
        assert quoted not in told(refused.value)


def test_an_answer_not_in_salesforces_error_format_is_told_by_its_status_alone(
    sandbox: CrmSandbox, crm: SalesforceClient, order: str
) -> None:
    """No customer data in errors: a gateway's error body quotes the record sent."""
    sandbox.set_faults(echo_rate=1)
    with pytest.raises(CrmRejected) as refused:
        crm.update("Order", order, {"ShippingStreet": "17 Quill Lane"})
    assert str(refused.value) == f"Salesforce refused Order {order}: HTTP_400"
    assert "17 Quill Lane" not in told(refused.value)


def test_a_collection_answer_of_the_wrong_shape_is_told_by_its_shape_not_its_content() -> None:
    stub = JsonServer()
    stub.route(
        "POST",
        r"/services/oauth2/token",
        lambda _: Response(body={"access_token": "token", "id": ""}),
    )
    stub.route(
        "PATCH",
        r"/services/data/v62\.0/composite/sobjects/Invoice__c/ERP_Invoice_Id__c",
        lambda request: Response(body={"received": request.body}),
    )
    stub.start()
    settings = SalesforceConfig(stub.url, "revsync", SecretStr("secret"), timeout_s=2.0)
    invoice = {"ERP_Invoice_Id__c": "INV-1", "Bill_To_Street__c": "17 Quill Lane"}
    try:
        with SalesforceClient(settings) as crm, pytest.raises(CrmRejected) as refused:
            crm.upsert_many("Invoice__c", "ERP_Invoice_Id__c", [invoice])
    finally:
        stub.stop()
    assert str(refused.value) == (
        "Salesforce refused 1 Invoice__c records: UNKNOWN_EXCEPTION: expected 1 results, got a dict"
    )
    assert "17 Quill Lane" not in told(refused.value)


# --- Transient failures -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 429])
def test_the_api_limit_is_transient_and_carries_retry_after(
    simulator: CrmSimulator, crm: SalesforceClient, account: str, status: int
) -> None:
    crm.get("Account", account)
    simulator.server.faults.update(
        {"throttle_rate": 1, "throttle_status": status, "retry_after_s": 7}
    )
    with pytest.raises(TransientError) as caught:
        crm.get("Account", account)
    assert caught.value.retry_after == 7.0
    assert not isinstance(caught.value, CrmAuthFailed)


def test_unavailable_and_timed_out_calls_are_transient(
    simulator: CrmSimulator, account: str
) -> None:
    with SalesforceClient(config(simulator, timeout_s=0.5)) as crm:
        crm.get("Account", account)
        simulator.server.faults.update({"error_rate": 1})
        with pytest.raises(TransientError, match="503"):
            crm.get("Account", account)
        simulator.server.faults = Faults(timeout_rate=1, hang_s=1.5)
        with pytest.raises(TransientError, match="timed out"):
            crm.get("Account", account)


def test_an_answer_dripped_in_past_the_deadline_is_transient(
    simulator: CrmSimulator, account: str
) -> None:
    with SalesforceClient(config(simulator, timeout_s=0.5)) as crm:
        crm.get("Account", account)
        # Every read gets bytes within 0.1 s, well inside the timeout; the whole answer would
        # take four seconds.
        simulator.server.faults.update({"drip_ms": 100, "drip_bytes": 50, "pad_bytes": 2000})
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as late:
            crm.get("Account", account)
        assert time.monotonic() - started < 1.0
        simulator.server.faults = Faults()
        assert crm.get("Account", account)["Name"] == "Acme GmbH"
    assert classify(late.value) is ErrorClass.TRANSIENT
    message = str(late.value)
    assert message.startswith(
        f"salesforce: GET /services/data/v62.0/sobjects/Account/{account} timed out: the 0.5 s "
    )
    assert "Acme GmbH" not in message


@pytest.mark.parametrize(
    ("chunked", "found"),
    [(False, "declares"), (True, "passed")],
    ids=["by-content-length", "by-streamed-bytes"],
)
def test_an_answer_larger_than_the_cap_is_transient_and_not_kept(
    simulator: CrmSimulator, crm: SalesforceClient, account: str, chunked: bool, found: str
) -> None:
    crm.get("Account", account)
    simulator.server.faults.update({"pad_bytes": DEFAULT_MAX_RESPONSE_BYTES, "chunked": chunked})
    with pytest.raises(ResponseTooLarge) as too_large:
        crm.get("Account", account)
    assert classify(too_large.value) is ErrorClass.TRANSIENT
    message = str(too_large.value)
    assert message.startswith(
        f"salesforce: GET /services/data/v62.0/sobjects/Account/{account}: the answer "
        f"(HTTP 200) {found} "
    )
    assert f"the {DEFAULT_MAX_RESPONSE_BYTES}-byte cap" in message
    assert "Acme GmbH" not in message
    simulator.server.faults = Faults()
    assert crm.get("Account", account)["Name"] == "Acme GmbH"


def test_the_size_cap_is_the_adapters_own_and_bounds_sign_in_too(
    simulator: CrmSimulator, account: str
) -> None:
    with (
        SalesforceClient(config(simulator, max_response_bytes=64)) as crm,
        pytest.raises(ResponseTooLarge) as too_large,
    ):
        crm.get("Account", account)
    assert str(too_large.value).startswith("salesforce: POST /services/oauth2/token: ")
    assert "the 64-byte cap" in str(too_large.value)


def test_a_dropped_connection_is_transient() -> None:
    dead = SalesforceConfig("http://127.0.0.1:9", "id", SecretStr("secret"), timeout_s=1)
    with SalesforceClient(dead) as crm, pytest.raises(TransientError, match="failed"):
        crm.get("Account", "001000000000001AAA")


# --- Reads ------------------------------------------------------------------------------------


def test_decimals_round_trip_digit_for_digit(crm: SalesforceClient, order: str) -> None:
    exact = Decimal("1234567.8901")
    beyond_float = Decimal("12345678901234567.8901")
    created = crm.upsert(
        "Invoice__c",
        "ERP_Invoice_Id__c",
        f"INV-{uuid.uuid4().hex[:8]}",
        an_invoice(order, 9, Total__c=exact, Subtotal__c=beyond_float),
    )
    stored = crm.get("Invoice__c", created.id)
    assert stored["Total__c"] == exact
    assert isinstance(stored["Total__c"], Decimal)
    assert stored["Subtotal__c"] == beyond_float
    items = crm.related("Order", order, "OrderItems")
    assert [(i["OrderItemNumber"], i["TotalPrice"]) for i in items] == [
        ("0000000001", Decimal("58.47"))
    ]
    assert crm.get("Order", order)["TotalAmount"] == Decimal("58.47")


def test_query_follows_next_records_url_page_by_page(
    simulator: CrmSimulator, sandbox: CrmSandbox, crm: SalesforceClient
) -> None:
    family = f"Family-{uuid.uuid4().hex[:6]}"
    codes = [f"P-{n:03d}" for n in range(120)]
    sandbox.insert("Product2", [{"Name": c, "ProductCode": c, "Family": family} for c in codes])
    sandbox.set_query_page_size(50)
    before = calls(simulator, "api.query.more")

    # SOQL with values the test made itself, not SQL built from input.
    in_family = f"FROM Product2 WHERE Family = '{family}'"
    rows = crm.query(f"SELECT Id, ProductCode {in_family} ORDER BY ProductCode")

    assert [row["ProductCode"] for row in rows] == codes
    assert calls(simulator, "api.query.more") == before + 2
    picked = crm.query(
        f"select ProductCode {in_family} and ProductCode in ('P-001', 'P-007', 'P-404') "
        "order by ProductCode desc limit 5"
    )
    assert picked == [{"ProductCode": "P-007"}, {"ProductCode": "P-001"}]
    with pytest.raises(CrmRejected, match="MALFORMED_QUERY"):
        crm.query("SELECT FROM WHERE")
    with pytest.raises(CrmRejected, match="INVALID_FIELD"):
        crm.query("SELECT Colour__c FROM Product2")


class Elsewhere:
    """A host that is not the org, answering every GET with a harmless last page and keeping
    what reached it."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.server = JsonServer()
        self.server.route("GET", r"/.*", self._record)

    def _record(self, request: Request) -> Response:
        self.seen.append(request)
        return Response(body={"totalSize": 1, "done": True, "records": [{"ProductCode": "X"}]})


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Elsewhere]:
    host = Elsewhere()
    host.server.start()
    yield host
    host.server.stop()


@pytest.mark.parametrize(
    "link",
    [
        "{url}/services/data/v62.0/query/01g000000000009-2",
        "//{host}/services/data/v62.0/query/01g000000000009-2",
        "/services/apexrest/Harvest",
        "/services/data/v62.0/sobjects/User",
        "/services/data/v62.0/query/../../../oauth2/token",
        "/services/data/v62.0/query/%2e%2e/%2e%2e/sobjects/Account",
    ],
    ids=["other-host", "scheme-relative", "outside-data", "outside-query", "dots", "escaped-dots"],
)
def test_a_next_page_link_that_leaves_the_instance_api_is_refused_and_gets_no_token(
    simulator: CrmSimulator,
    sandbox: CrmSandbox,
    crm: SalesforceClient,
    elsewhere: Elsewhere,
    link: str,
) -> None:
    family = f"Family-{uuid.uuid4().hex[:6]}"
    codes = ["L-1", "L-2", "L-3"]
    sandbox.insert("Product2", [{"Name": c, "ProductCode": c, "Family": family} for c in codes])
    sandbox.set_query_page_size(2)
    hostile = link.format(url=elsewhere.server.url, host=elsewhere.server.url.split("//")[1])
    sandbox.set_next_records_url(hostile)
    before = dict(simulator.server.counters)

    # SOQL with values the test made itself, not SQL built from input.
    in_family = f"FROM Product2 WHERE Family = '{family}'"
    with pytest.raises(CrmProtocolViolation) as refused:
        crm.query(f"SELECT ProductCode {in_family}")

    assert elsewhere.seen == []
    api_calls = {
        name: count - before.get(name, 0)
        for name, count in simulator.server.counters.items()
        if name.startswith("api.") and count != before.get(name, 0)
    }
    assert api_calls == {"api.query": 1}
    assert classify(refused.value) is ErrorClass.UNKNOWN
    assert classify(refused.value) not in RETRYABLE
    assert str(refused.value) == (
        "salesforce: a page of GET /services/data/v62.0/query is not the last, yet its "
        "nextRecordsUrl names a next page outside /services/data/v62.0/query/; not followed"
    )
