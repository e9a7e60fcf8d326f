"""NetSuite's records, as SuiteQL answers them, become the ERP outbox rows revsync's canonical
events are made of: each document once, each customer version once, a credit change only when
the credit moved; the account's local times read so that a watermark is never later than the
truth; and an afterSubmit post acted on only when signed and well formed."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from erp_inbound.netsuite import (
    SIGNATURE_HEADER,
    NetSuiteInbound,
    NetSuiteInboundConfig,
    NoticeInvalid,
    SignatureInvalid,
    WindowTooDense,
    _new,
    backoff_s,
    record_query,
    window_query,
)
from erp_inbound.netsuite_mapping import (
    Application,
    CreditState,
    Exposure,
    Kind,
    RowInvalid,
    ShippedLine,
    application,
    customer_changes,
    customer_version,
    earliest_instant,
    fulfillment_changes,
    invoice_changes,
    payment_changes,
    query_bound,
    shipped_line,
    since,
)
from erp_inbound.sink import Change, event_id
from erp_outbox_publisher.logic import ErpOutboxRow, ErpPayloadInvalid, canonical_event
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerStatus,
    InvoicePosted,
    PaymentMethod,
    PaymentReceived,
    ShipmentCompleteness,
    ShipmentConfirmed,
)
from revsync.errors import TransientError

pytestmark = pytest.mark.unit

ACCOUNT = "1234567_SB1"
ZONE = ZoneInfo("America/Los_Angeles")
CONFIG = NetSuiteInboundConfig(
    account_id=ACCOUNT,
    subsidiaries={"US01": "1", "DE01": "3"},
    timezone="America/Los_Angeles",
    after_submit_secret=SecretStr("shared-secret"),
)
READ_AT = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
ORDER = {
    "so_id": "SO-1",
    "so_tranid": "SO-000001",
    "so_externalid": "8015g00000AbCdEAAV",
    "so_memo": "corr-1",
    "so_location": "NA",
    "entity": "C-100001",
    "crm_account_id": "0015g00000XyZaBAAV",
}
INVOICE = {
    "id": "INV-1",
    "tranid": "INV-000001",
    "subsidiary": "1",
    "currency": "USD",
    "modified": "2026-12-07 10:00:05",
    "created": "2026-12-07 10:00:05",
    "trandate": "2026-12-07",
    "duedate": "2027-01-06",
    "total": "1080",
    "remaining": "1080",
    "subtotal": "1000",
    "taxtotal": "80",
    "terms": "NET30",
    **ORDER,
}
CUSTOMER = {
    "id": "C-100001",
    "entityid": "100001",
    "externalid": "0015g00000XyZaBAAV",
    "companyname": "Acme Corp",
    "subsidiary": "1",
    "currency": "USD",
    "creditlimit": "50000",
    "terms": "NET30",
    "creditholdoverride": "AUTO",
    "isinactive": "F",
    "modified": "2026-12-07 10:00:05",
}


def event(change: Change) -> Any:
    return canonical_event(
        ErpOutboxRow(
            id=change.id,
            aggregatetype="order",
            aggregateid=change.aggregateid,
            type=change.type,
            payload=change.payload,
            created_at=change.read_at,
        )
    )


# --- documents -------------------------------------------------------------------------------


def test_an_invoice_is_invoice_posted_keyed_by_its_sales_orders_external_id() -> None:
    (change,) = invoice_changes(INVOICE, CONFIG.account, READ_AT)

    posted = event(change)
    assert isinstance(posted, InvoicePosted)
    assert change.aggregateid == posted.crm_order_id == "8015g00000AbCdEAAV"
    assert posted.erp_order_id == "SO-1"
    assert posted.erp_invoice_id == "INV-1"
    assert posted.invoice_number == "INV-000001"
    assert posted.crm_account_id == "0015g00000XyZaBAAV"
    assert (posted.subtotal, posted.tax_total, posted.grand_total, posted.amount_due) == (
        Decimal(1000),
        Decimal(80),
        Decimal(1080),
        Decimal(1080),
    )
    assert posted.legal_entity == "US01"
    assert posted.region == "NA"
    assert posted.envelope.correlation_id == "corr-1"
    assert str(posted.due_date) == "2027-01-06"
    # 10:00:05 in Los Angeles (PST, UTC-8).
    assert posted.posted_at == datetime(2026, 12, 7, 18, 0, 5, tzinfo=UTC)


def test_an_invoices_event_id_is_its_record_and_type_only_so_a_later_edit_is_the_same_event() -> (
    None
):
    (first,) = invoice_changes(INVOICE, CONFIG.account, READ_AT)
    paid = {**INVOICE, "remaining": "0", "modified": "2026-12-07 11:00:00"}
    (again,) = invoice_changes(paid, CONFIG.account, READ_AT + timedelta(hours=1))

    assert (
        first.id
        == again.id
        == event_id("netsuite", ACCOUNT, "invoice", "INV-1", "InvoicePosted", "")
    )


def test_an_order_that_names_no_location_is_of_its_legal_entitys_region() -> None:
    config = NetSuiteInboundConfig(
        account_id=ACCOUNT,
        subsidiaries={"US01": "1"},
        timezone="America/Los_Angeles",
        regions={"US01": "NA"},
    )
    nowhere = {k: v for k, v in INVOICE.items() if k != "so_location"}
    (change,) = invoice_changes(nowhere, config.account, READ_AT)
    assert event(change).region == "NA"
    (change,) = invoice_changes(nowhere, CONFIG.account, READ_AT)
    with pytest.raises(ErpPayloadInvalid, match=r"sales_order\.region"):
        event(change)


def test_an_orders_location_is_its_region_as_the_adapter_books_it() -> None:
    config = NetSuiteInboundConfig(
        account_id=ACCOUNT,
        subsidiaries={"US01": "1"},
        timezone="America/Los_Angeles",
        locations={"EMEA": "7"},
    )
    at_seven = {**INVOICE, "so_location": "7"}
    assert event(invoice_changes(at_seven, config.account, READ_AT)[0]).region == "EMEA"
    # A location the configuration does not name is a region itself.
    assert event(invoice_changes(INVOICE, config.account, READ_AT)[0]).region == "NA"


def test_another_subsidiarys_invoice_is_not_published() -> None:
    assert invoice_changes({**INVOICE, "subsidiary": "2"}, CONFIG.account, READ_AT) == []


def test_an_invoice_without_subtotal_and_tax_total_is_all_subtotal() -> None:
    bare = {k: v for k, v in INVOICE.items() if k not in ("subtotal", "taxtotal")}
    (change,) = invoice_changes(bare, CONFIG.account, READ_AT)

    posted = event(change)
    assert (posted.subtotal, posted.tax_total) == (Decimal(1080), Decimal(0))


def test_documents_of_orders_not_placed_from_the_crm_are_not_published() -> None:
    orphan = {k: v for k, v in INVOICE.items() if k != "so_externalid"}
    assert invoice_changes(orphan, CONFIG.account, READ_AT) == []
    shipped = {**orphan, "shipstatus": "C", "id": "SH-1"}
    assert fulfillment_changes(shipped, [ShippedLine(1, "S", "1")], CONFIG.account, READ_AT) == []
    values, applied_to = applied("INV-1", "1080", "0")
    del values["so_externalid"]
    assert payment_changes(PAYMENT, [(values, applied_to)], CONFIG.account, READ_AT) == []


def test_an_invoice_of_a_customer_no_crm_account_masters_is_refused_by_the_mapping() -> None:
    unlinked = {k: v for k, v in INVOICE.items() if k != "crm_account_id"}
    (change,) = invoice_changes(unlinked, CONFIG.account, READ_AT)

    with pytest.raises(ErpPayloadInvalid, match=r"sales_order\.crm_account_id"):
        event(change)


def test_an_invoice_with_an_unreadable_amount_names_the_column() -> None:
    with pytest.raises(RowInvalid, match="total: not a decimal"):
        invoice_changes({**INVOICE, "total": "lots"}, CONFIG.account, READ_AT)


def test_a_shipped_fulfilment_is_shipment_confirmed_with_its_lines() -> None:
    row = {
        "id": "SH-1",
        "tranid": "SH-000001",
        "subsidiary": "3",
        "currency": "EUR",
        "modified": "2026-12-07 10:30:00",
        "created": "2026-12-07 10:30:00",
        "shipstatus": "C",
        "carrier": "UPS",
        "trackingnumber": "1Z999",
        "trackingurl": "https://www.ups.com/track?tracknum=1Z999",
        "partial": "F",
        "location": "WH-VENLO",
        **ORDER,
    }
    lines = [shipped_line({"id": "SH-1", "line": "1", "sku": "SKU-1", "quantity": "-2"})]
    (change,) = fulfillment_changes(row, lines, CONFIG.account, READ_AT)

    shipped = event(change)
    assert isinstance(shipped, ShipmentConfirmed)
    assert shipped.erp_shipment_id == "SH-1"
    assert shipped.completeness is ShipmentCompleteness.COMPLETE
    assert [(line.line_number, line.sku, line.quantity_shipped) for line in shipped.lines] == [
        (1, "SKU-1", Decimal(2))
    ]
    assert shipped.warehouse == "WH-VENLO"
    assert change.id == event_id(
        "netsuite", ACCOUNT, "itemFulfillment", "SH-1", "ShipmentConfirmed", ""
    )
    partial = {**row, "partial": "T"}
    assert event(fulfillment_changes(partial, lines, CONFIG.account, READ_AT)[0]).completeness is (
        ShipmentCompleteness.PARTIAL
    )


@pytest.mark.parametrize("status", ["A", "B", None])
def test_a_fulfilment_picked_or_packed_is_nothing_yet(status: str | None) -> None:
    row = {"id": "SH-1", "subsidiary": "1", "modified": "2026-12-07 10:30:00", **ORDER}
    if status is not None:
        row["shipstatus"] = status
    lines = [ShippedLine(1, "SKU-1", "2")]
    assert fulfillment_changes(row, lines, CONFIG.account, READ_AT) == []


PAYMENT = {
    "id": "PAY-1",
    "tranid": "PAY-000001",
    "subsidiary": "1",
    "currency": "USD",
    "modified": "2026-12-07 12:00:00",
    "created": "2026-12-07 12:00:00",
    "paymentmethod": "ACH",
}


def applied(invoice: str, amount: str, remaining: str) -> tuple[dict[str, str], Application]:
    values = {
        "invoice_id": invoice,
        "invoice_tranid": f"N-{invoice}",
        "applied": amount,
        "invoice_total": "1080",
        "invoice_remaining": remaining,
    }
    return {**PAYMENT, **ORDER}, application(values)


def test_a_payment_is_one_payment_received_per_invoice_it_is_applied_to() -> None:
    changes = payment_changes(
        PAYMENT,
        [applied("INV-1", "1080", "0"), applied("INV-2", "500", "580")],
        CONFIG.account,
        READ_AT,
    )

    received = [event(change) for change in changes]
    assert all(isinstance(r, PaymentReceived) for r in received)
    assert [(r.erp_invoice_id, r.amount, r.remaining_balance) for r in received] == [
        ("INV-1", Decimal(1080), Decimal(0)),
        ("INV-2", Decimal(500), Decimal(580)),
    ]
    assert received[0].payment_method is PaymentMethod.ACH
    assert len({change.id for change in changes}) == 2
    assert changes[0].id == event_id(
        "netsuite", ACCOUNT, "customerPayment", "PAY-1/INV-1", "PaymentReceived", ""
    )


def test_an_unapplied_payment_is_nothing_yet() -> None:
    assert payment_changes(PAYMENT, [], CONFIG.account, READ_AT) == []


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("Wire Transfer", PaymentMethod.WIRE),
        ("wire_transfer", PaymentMethod.WIRE),
        ("Check", PaymentMethod.CHECK),
        ("VISA", PaymentMethod.CARD),
        ("Direct Debit", PaymentMethod.DIRECT_DEBIT),
        ("Cash", PaymentMethod.OTHER),
        (None, PaymentMethod.OTHER),
    ],
)
def test_payment_methods(name: str | None, method: PaymentMethod) -> None:
    row = {**PAYMENT, "paymentmethod": name} if name is not None else {**PAYMENT}
    if name is None:
        del row["paymentmethod"]
    (change,) = payment_changes(row, [applied("INV-1", "1", "0")], CONFIG.account, READ_AT)
    assert event(change).payment_method is method


def test_an_application_without_its_amount_names_the_column() -> None:
    with pytest.raises(RowInvalid, match="applied: missing"):
        application({"invoice_id": "INV-1", "invoice_total": "1"})


def test_a_line_number_that_is_not_a_number_names_the_column() -> None:
    with pytest.raises(RowInvalid, match="line: not an integer"):
        shipped_line({"id": "SH-1", "line": "one", "sku": "S", "quantity": "1"})


# --- customers -------------------------------------------------------------------------------


def version(values: dict[str, str]) -> Any:
    customer = customer_version(values, CONFIG.account)
    assert customer is not None
    return customer


def test_a_customer_seen_first_is_customer_mastered_only() -> None:
    customer = version(CUSTOMER)
    (change,) = customer_changes(customer, None, None, CONFIG.account, READ_AT)

    mastered = event(change)
    assert isinstance(mastered, CustomerMastered)
    assert mastered.crm_account_id == change.aggregateid == "0015g00000XyZaBAAV"
    assert mastered.erp_customer_id == "C-100001"
    assert mastered.customer_number == "100001"
    assert mastered.status is CustomerStatus.ACTIVE
    assert mastered.credit_limit == Decimal(50000)
    assert mastered.legal_entity == "US01"
    assert mastered.changed_at == datetime(2026, 12, 7, 18, 0, 5, tzinfo=UTC)
    assert change.id == event_id(
        "netsuite", ACCOUNT, "customer", "C-100001", "CustomerMastered", customer.version
    )


def test_the_same_customer_version_read_again_is_nothing_new() -> None:
    customer = version(CUSTOMER)
    assert customer_changes(customer, customer.credit, None, CONFIG.account, READ_AT) == []


def test_a_credit_hold_is_customer_mastered_and_credit_status_changed() -> None:
    before = version(CUSTOMER).credit
    held = version({**CUSTOMER, "creditholdoverride": "ON", "modified": "2026-12-07 10:01:00"})
    changes = customer_changes(held, before, Exposure("12000.5"), CONFIG.account, READ_AT)

    mastered, credit = (event(change) for change in changes)
    assert isinstance(mastered, CustomerMastered)
    assert mastered.status is CustomerStatus.CREDIT_HOLD
    assert isinstance(credit, CreditStatusChanged)
    assert credit.status is CustomerStatus.CREDIT_HOLD
    assert (credit.credit_limit, credit.exposure, credit.available_credit) == (
        Decimal(50000),
        Decimal("12000.5"),
        Decimal("37999.5"),
    )
    assert changes[1].id == event_id(
        "netsuite", ACCOUNT, "customer", "C-100001", "CreditStatusChanged", held.version
    )


@pytest.mark.parametrize(
    ("edit", "status"),
    [
        ({"creditlimit": "75000"}, CustomerStatus.ACTIVE),
        ({"isinactive": "T"}, CustomerStatus.BLOCKED),
    ],
)
def test_a_credit_limit_or_block_moves_credit(edit: dict[str, str], status: CustomerStatus) -> None:
    before = version(CUSTOMER).credit
    after = version({**CUSTOMER, **edit, "modified": "2026-12-07 10:02:00"})
    changes = customer_changes(after, before, None, CONFIG.account, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered", "CreditStatusChanged"]
    assert event(changes[1]).status is status


def test_an_edit_that_leaves_credit_alone_is_customer_mastered_only() -> None:
    before = version(CUSTOMER).credit
    renamed = version({**CUSTOMER, "companyname": "Acme Inc", "modified": "2026-12-07 10:03:00"})
    changes = customer_changes(renamed, before, None, CONFIG.account, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered"]
    assert event(changes[0]).name == "Acme Inc"


def test_two_edits_in_one_second_are_two_versions_and_a_reread_is_the_same_one() -> None:
    first = version(CUSTOMER)
    same_second = version({**CUSTOMER, "creditlimit": "1000"})
    assert first.version != same_second.version
    assert version(dict(CUSTOMER)).version == first.version


def test_a_customer_no_crm_account_masters_is_not_published() -> None:
    unlinked = {k: v for k, v in CUSTOMER.items() if k != "externalid"}
    assert customer_changes(version(unlinked), None, None, CONFIG.account, READ_AT) == []


def test_another_subsidiarys_customer_is_not_read() -> None:
    assert customer_version({**CUSTOMER, "subsidiary": "4"}, CONFIG.account) is None


def test_blocks_come_from_the_custom_field() -> None:
    blocked = version({**CUSTOMER, "custentity_revsync_blocks": "order, billing"})
    (change,) = customer_changes(blocked, None, None, CONFIG.account, READ_AT)
    assert event(change).blocks == ["billing", "order"]


def test_credit_state_compares_amounts_not_their_text() -> None:
    before = CreditState("v1", "50000.0000", "active")
    after = version(CUSTOMER)
    changes = customer_changes(after, before, None, CONFIG.account, READ_AT)
    assert [change.type for change in changes] == ["CustomerMastered"]


# --- the account's clock ---------------------------------------------------------------------


def test_a_local_time_is_its_moment_in_the_accounts_zone() -> None:
    assert earliest_instant("2026-07-01 09:00:00", ZONE) == datetime(2026, 7, 1, 16, tzinfo=UTC)
    assert earliest_instant("2026-12-01 09:00:00", ZONE) == datetime(2026, 12, 1, 17, tzinfo=UTC)


def test_the_hour_a_clock_turns_back_is_read_as_its_first_pass() -> None:
    # 2026-11-01 01:30 happens twice in Los Angeles: 08:30 UTC (PDT) and 09:30 UTC (PST).
    assert earliest_instant("2026-11-01 01:30:00", ZONE) == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)


def test_an_hour_skipped_going_forward_is_read_as_the_hour_before() -> None:
    # 2026-03-08 02:30 never happens in Los Angeles; its earliest reading is 09:30 UTC.
    assert earliest_instant("2026-03-08 02:30:00", ZONE) == datetime(2026, 3, 8, 9, 30, tzinfo=UTC)


def test_a_query_bound_is_never_later_than_its_moment() -> None:
    moment = datetime(2026, 12, 7, 18, 0, 5, 999_999, tzinfo=UTC)
    bound = query_bound(moment, ZONE)
    assert bound == "2026-12-07 10:00:05"
    assert earliest_instant(bound, ZONE) <= moment
    # Across the turn back: a moment in the second pass is bounded by the first pass.
    second_pass = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    assert earliest_instant(query_bound(second_pass, ZONE), ZONE) <= second_pass
    # Going forward, the bound an overlap makes is a time that exists.
    after_jump = datetime(2026, 3, 8, 10, 0, 30, tzinfo=UTC)  # 03:00:30 PDT
    bound = query_bound(after_jump - timedelta(seconds=60), ZONE)
    assert bound == "2026-03-08 01:59:30"
    assert earliest_instant(bound, ZONE) == after_jump - timedelta(seconds=60)


def test_a_poll_reads_from_the_overlap_before_its_watermark() -> None:
    first = datetime(2020, 1, 1, tzinfo=UTC)
    assert since(None, 300, first) == first
    watermark = datetime(2026, 12, 7, 18, tzinfo=UTC)
    assert since(watermark, 300, first) == watermark - timedelta(minutes=5)


def test_the_window_query_reads_in_a_unique_order_from_its_bound() -> None:
    query = window_query(Kind.INVOICE, "2026-12-07 10:00:05", ["3", "1"])
    assert (
        "t.lastmodifieddate >= TO_TIMESTAMP('2026-12-07 10:00:05', 'YYYY-MM-DD HH24:MI:SS')"
        in query
    )
    assert "t.subsidiary IN ('1', '3')" in query
    assert query.endswith("ORDER BY t.lastmodifieddate, t.id")
    assert "t.type = 'CustInvc'" in query
    assert "t.id = 'INV-1'" in record_query(Kind.INVOICE, "INV-1")


def test_an_id_in_a_query_is_a_literal_with_its_quotes_doubled() -> None:
    assert "t.id = 'O''Brien'" in record_query(Kind.CUSTOMER, "O'Brien")


def test_a_change_is_written_unless_published_or_refused_in_the_same_version() -> None:
    assert _new(None, "v1")
    assert not _new((False, "v1"), "v2")
    assert not _new((True, "v1"), "v1")
    assert _new((True, "v1"), "v2")


def test_backoff_doubles_to_its_cap_and_honours_retry_after() -> None:
    failure = RuntimeError("down")
    assert [backoff_s(10, n, failure) for n in (1, 2, 3)] == [10, 20, 40]
    assert backoff_s(10, 30, failure) == 300
    assert backoff_s(10, 1, TransientError("throttled", retry_after=90)) == 90
    assert backoff_s(600, 5, failure) == 600  # never shorter than the interval itself


def test_a_window_too_dense_is_transient() -> None:
    assert isinstance(WindowTooDense("x"), TransientError)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"page_size": 0}, "page_size must be 1 to 1000"),
        ({"page_size": 1001}, "page_size must be 1 to 1000"),
        ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"subsidiaries": {}}, "names no legal entity"),
        ({"subsidiaries": {"US01": "1", "CA01": "1"}}, "two legal entities to one id"),
        ({"subsidiaries": {"US01": "1 OR 1=1"}}, r"subsidiaries\[US01\]"),
        ({"overlap_s": -1}, "overlap_s must be >= 0"),
        ({"poll_interval_s": 0}, "poll_interval_s must be positive"),
        ({"account_id": " "}, "account_id is empty"),
        ({"first_poll_from": datetime(2026, 1, 1)}, "first_poll_from needs its UTC offset"),
    ],
)
def test_contradictory_settings_are_refused_naming_them(
    changes: dict[str, Any], message: str
) -> None:
    settings: dict[str, Any] = {
        "account_id": ACCOUNT,
        "subsidiaries": {"US01": "1"},
        "timezone": "America/Los_Angeles",
        **changes,
    }
    with pytest.raises(ValueError, match=message):
        NetSuiteInboundConfig(**settings)


def test_the_secret_is_not_in_the_configs_repr() -> None:
    assert "shared-secret" not in repr(CONFIG)


# --- afterSubmit -----------------------------------------------------------------------------


class Unreachable:
    """A NetSuite client that must not be called: the post is refused before any read."""

    def suiteql(self, query: str, *, limit: int, offset: int) -> dict[str, Any]:
        raise AssertionError("NetSuite was read for a refused post")


def inbound(config: NetSuiteInboundConfig = CONFIG) -> NetSuiteInbound:
    return NetSuiteInbound(Unreachable(), cast(Any, None), cast(Any, None), config)


def signed(body: bytes, secret: str = "shared-secret") -> str:  # noqa: S107 - test value
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def notice(**changes: Any) -> bytes:
    values = {"recordType": "invoice", "id": "INV-1", "type": "create", "account": ACCOUNT}
    return json.dumps({**values, **changes}).encode()


def test_a_signed_notice_names_its_record() -> None:
    body = notice(recordType="itemfulfillment", id=42)
    source = inbound()
    source.verify(body, signed(body))
    assert source.notice(body) == (Kind.FULFILLMENT, "42", "create")
    # The account as SuiteScript's runtime spells it in a URL.
    assert source.notice(notice(account="1234567-sb1"))[0] is Kind.INVOICE


def test_a_deleted_record_is_nothing_to_read() -> None:
    body = notice(type="delete")
    assert inbound().after_submit(body, signed(body)) == 0


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=00", signed(b"another body"), signed(notice(), "another-secret")],
)
def test_a_post_not_signed_with_the_secret_is_refused_unread(signature: str | None) -> None:
    with pytest.raises(SignatureInvalid):
        inbound().after_submit(notice(), signature)


def test_a_bare_hex_signature_is_accepted_too() -> None:
    body = notice()
    inbound().verify(body, signed(body).removeprefix("sha256=").upper())


def test_without_a_secret_every_post_is_refused() -> None:
    config = NetSuiteInboundConfig(
        account_id=ACCOUNT, subsidiaries={"US01": "1"}, timezone="America/Los_Angeles"
    )
    body = notice()
    with pytest.raises(SignatureInvalid, match="no secret is configured"):
        inbound(config).after_submit(body, signed(body))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (notice(recordType=None), "recordType"),
        (notice(id=""), "id"),
        (notice(id="1; DROP"), "id"),
        (notice(type=True), "type"),
        (notice(account="7654321"), "account"),
        (notice(recordType="salesorder"), "recordType"),
    ],
)
def test_a_signed_post_with_a_bad_body_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(NoticeInvalid) as refused:
        inbound().after_submit(body, signed(body))
    assert refused.value.field == field
    assert "1; DROP" not in str(refused.value)


def test_the_signature_header_is_named_for_the_script() -> None:
    assert SIGNATURE_HEADER == "X-Revsync-Signature"
    assert uuid.UUID(str(event_id("netsuite", ACCOUNT, "invoice", "1", "InvoicePosted", "")))


def test_a_bound_in_the_repeated_hour_moves_back_before_it() -> None:
    # 01:30 PDT (08:30 UTC): "01:30:00" also names 01:30 PST, an hour later, which PostgreSQL
    # would take; the bound moves back an hour, where the local time names one moment.
    first_pass = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    assert query_bound(first_pass, ZONE) == "2026-11-01 00:30:00"
    # 01:30 PST (09:30 UTC): either reading of "01:30:00" is not later than it.
    second_pass = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    assert query_bound(second_pass, ZONE) == "2026-11-01 01:30:00"
    # Outside the repeated hour a bound is the moment's own local time.
    assert query_bound(datetime(2026, 11, 1, 10, 5, tzinfo=UTC), ZONE) == "2026-11-01 02:05:00"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trandate": None}, "trandate: missing"),
        ({"trandate": "12/7/2026"}, "trandate: not a YYYY-MM-DD date"),
        ({"created": "yesterday"}, "created: not a YYYY-MM-DD HH24:MI:SS time"),
        ({"total": "Infinity"}, "total: not a decimal"),
    ],
)
def test_an_invoice_with_an_unreadable_column_names_it(
    changes: dict[str, str | None], message: str
) -> None:
    row = {k: v for k, v in {**INVOICE, **changes}.items() if v is not None}
    with pytest.raises(RowInvalid, match=message):
        invoice_changes(row, CONFIG.account, READ_AT)
