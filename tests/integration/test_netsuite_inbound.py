"""NetSuite's changes as revsync's events on the live PostgreSQL, read from the NetSuite
simulator by SuiteQL: every invoice, fulfilment, payment and customer version the books make
written to revsync's outbox once, whether a poll, a repeated poll or an afterSubmit post finds
it; the watermark losing nothing and doubling nothing across page boundaries, records sharing
one second, a record committed late, a restart half way, the row cap and the clock turning
back or forward; a refused record kept apart; and NetSuite down leaving the watermark where it
was."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg_pool import ConnectionPool
from pydantic import SecretStr
from sandbox.erp import ErpSandbox
from sandbox.erp.orders import OrderBody, book
from sandbox.netsuite import NetSuiteSandbox, NetSuiteSimulator
from sandbox.netsuite.suiteql import DEFAULT_SUBSIDIARIES

from contract_fixtures import cli_for, drop_topics, governed, isolated_contracts
from erp_inbound import netsuite, sink
from erp_inbound.netsuite import (
    NetSuiteInbound,
    NetSuiteInboundConfig,
    SignatureInvalid,
)
from erp_inbound.netsuite_mapping import Kind
from erp_inbound.sink import InboundSink, event_id
from port_contracts import ACTIVE, BLOCKED, HELD, PRICE_BOOK, PRODUCTS
from revsync.connectors.erp import ErpUnexpectedResponse
from revsync.connectors.netsuite import NetSuiteAdapter, NetSuiteConfig
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    InvoicePosted,
    PaymentReceived,
    ShipmentConfirmed,
)
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.errors import TransientError
from revsync.migrations import Tables, ensure
from revsync.ports.erp import CustomerStatus
from revsync.runtime.outbox import SCHEMA as OUTBOX_SCHEMA
from revsync.security import POSTGRES_SERVICE
from revsync.settings import Settings

pytestmark = pytest.mark.integration

ACCOUNT = "1234567_SB1"
ZONE = "America/Los_Angeles"
BOOKS = "netsuite_inbound"
"""The simulator's books: a schema of their own, apart from other NetSuite tests' books."""
REVSYNC = "netsuite_inbound_revsync"
"""revsync's tables for these tests: a schema of their own, so counts are these tests'."""
NEVER = 3600.0
SECRET = "after-submit-secret-for-tests"
CLIENT_ID = "revsync-inbound-tests"
CERTIFICATE_ID = "cert-inbound-tests"
UNLINKED = replace(ACTIVE, id="C-NS-UNLINKED", crm_account_id=None, number="900009")
"""A customer no CRM account masters: its documents' events cannot be keyed."""


# -- the simulator, the client and revsync's tables -------------------------------------------


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def simulator(settings: Settings, key: ec.EllipticCurvePrivateKey) -> Iterator[NetSuiteSimulator]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    account = NetSuiteSimulator(
        settings.postgres_dsn.get_secret_value(),
        account_id=ACCOUNT,
        timezone=ZONE,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        payment_delay_s=-1,
        reset=True,
        seed=11,
        schema=BOOKS,
        integration=(CLIENT_ID, CERTIFICATE_ID, public.decode()),
    ).start()
    yield account
    account.stop()


@pytest.fixture
def control(simulator: NetSuiteSimulator) -> Iterator[ErpSandbox]:
    """The books, emptied and seeded for each test; the clock stopped and faults off after."""
    with ErpSandbox(simulator.url) as books:
        books.reset()
        books.seed_customers([ACTIVE, HELD, BLOCKED, UNLINKED])
        books.seed_products(PRODUCTS)
        books.seed_price_books([PRICE_BOOK])
        yield books
        books.set_faults(error_rate=0.0, throttle_rate=0.0)
        books.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)
    with NetSuiteSandbox(simulator.url) as account:
        account.set_settings(row_cap=100_000)


@pytest.fixture(scope="module")
def client(
    simulator: NetSuiteSimulator, key: ec.EllipticCurvePrivateKey
) -> Iterator[NetSuiteAdapter]:
    """The ERP adapter, whose SuiteQL the poller reads through."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    adapter = NetSuiteAdapter(
        NetSuiteConfig(
            base_url=simulator.url,
            account_id=ACCOUNT,
            client_id=CLIENT_ID,
            certificate_id=CERTIFICATE_ID,
            private_key=SecretStr(pem),
            subsidiaries=DEFAULT_SUBSIDIARIES,
            algorithm="ES256",
        )
    )
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def inbound_sink(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InboundSink]:
    contracts = isolated_contracts(tmp_path_factory.mktemp("netsuite-inbound") / "avro")
    catalog = governed(cli_for(settings), contracts)
    registry = SchemaRegistryClient(settings.registry_config())
    serde = EventSerde(registry, catalog, SchemaRepository(contracts))
    yield InboundSink(catalog, serde, netsuite.SOURCE)
    drop_topics(settings, contracts)


@pytest.fixture(scope="module")
def serde(inbound_sink: InboundSink) -> EventSerde:
    return inbound_sink.outbox.serde


@pytest.fixture(scope="module")
def revsync_pool(settings: Settings) -> Iterator[ConnectionPool[Any]]:
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(REVSYNC))
        )
    options = f"-c search_path={REVSYNC}"
    with psycopg.connect(dsn, options=options) as connection:
        ensure(
            connection,
            (Tables(OUTBOX_SCHEMA, writers=(POSTGRES_SERVICE,)), *sink.TABLES, *netsuite.TABLES),
        )
    with ConnectionPool(dsn, min_size=1, max_size=4, kwargs={"options": options}) as opened:
        yield opened


@pytest.fixture
def pool(revsync_pool: ConnectionPool[Any]) -> ConnectionPool[Any]:
    with revsync_pool.connection() as connection:
        connection.execute(
            "TRUNCATE revsync_outbox, revsync_erp_inbound_refusals, revsync_netsuite_watermarks, "
            "revsync_netsuite_published, revsync_netsuite_customer_credit"
        )
    return revsync_pool


def config(**changes: Any) -> NetSuiteInboundConfig:
    settings: dict[str, Any] = {
        "account_id": ACCOUNT,
        "subsidiaries": {"US01": "1", "CA01": "2", "DE01": "3", "GB01": "4"},
        "timezone": ZONE,
        "page_size": 1000,
        "overlap_s": 60.0,
        "poll_interval_s": 0.05,
        "after_submit_secret": SecretStr(SECRET),
        **changes,
    }
    return NetSuiteInboundConfig(**settings)


@pytest.fixture
def make_inbound(
    client: NetSuiteAdapter,
    pool: ConnectionPool[Any],
    inbound_sink: InboundSink,
    control: ErpSandbox,
) -> Callable[..., NetSuiteInbound]:
    def make(source: Any = client, **changes: Any) -> NetSuiteInbound:
        return NetSuiteInbound(source, pool, inbound_sink, config(**changes))

    return make


# -- the books --------------------------------------------------------------------------------


NO_DISCOUNT = {"discount_amount": "0", "tax_amount": "0"}


def order_body(customer_id: str = ACTIVE.id) -> OrderBody:
    return OrderBody.model_validate(
        {
            "external_id": f"801{uuid.uuid4().hex[:15]}",
            "customer_id": customer_id,
            "currency": "USD",
            "price_book_id": PRICE_BOOK.id,
            "legal_entity": "US01",
            "region": "NA",
            "po_number": "PO-1",
            "requested_delivery_date": date(2026, 12, 24).isoformat(),
            "ship_to": {
                "street": "1 Market St",
                "city": "San Francisco",
                "state_province": "CA",
                "postal_code": "94105",
                "country_code": "US",
            },
            "lines": [
                {
                    "line_number": 1,
                    "sku": "PC-SENSOR",
                    "quantity": "2",
                    "unit_price": "100",
                    **NO_DISCOUNT,
                },
                {
                    "line_number": 2,
                    "sku": "PC-TIE",
                    "quantity": "10",
                    "unit_price": "0.1",
                    **NO_DISCOUNT,
                },
            ],
            "correlation_id": f"corr-{uuid.uuid4()}",
        }
    )


def place(simulator: NetSuiteSimulator, count: int, customer_id: str = ACTIVE.id) -> list[str]:
    """``count`` orders booked in the books; their CRM order ids."""
    ids = []
    with simulator.books.pool.connection() as connection:
        for _ in range(count):
            body = order_body(customer_id)
            with connection.transaction():
                book(connection, body)
            ids.append(body.external_id)
    return ids


def books_count(simulator: NetSuiteSimulator, table: str) -> int:
    with simulator.books.pool.connection() as connection:
        row = connection.execute(
            sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))
        ).fetchone()
    assert row is not None
    return int(row["n"])


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def invoiced(simulator: NetSuiteSimulator, control: ErpSandbox, count: int) -> list[str]:
    """``count`` orders invoiced (not shipped); their CRM order ids."""
    already = books_count(simulator, "invoices")
    ids = place(simulator, count)
    control.set_clock(invoice_delay_s=0)
    wait_for(lambda: books_count(simulator, "invoices") == already + count)
    control.set_clock(invoice_delay_s=NEVER)
    return ids


def books_sql(simulator: NetSuiteSimulator, statement: str, *params: Any) -> list[Any]:
    with simulator.books.pool.connection() as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def invoice_ids(simulator: NetSuiteSimulator) -> list[str]:
    return [row["id"] for row in books_sql(simulator, "SELECT id FROM invoices ORDER BY id")]


def restamp(simulator: NetSuiteSimulator, stamps: Mapping[str, datetime]) -> None:
    """Sets invoices' posting times (their last-modified time) as a test needs them."""
    for invoice_id, at in stamps.items():
        books_sql(simulator, "UPDATE invoices SET posted_at = %s WHERE id = %s", at, invoice_id)


# -- revsync's outbox -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    type: str
    aggregateid: str
    payload: bytes
    topic: str


def outbox(pool: ConnectionPool[Any]) -> list[Row]:
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT id, type, aggregateid, payload, topic FROM revsync_outbox "
            "WHERE service = 'erp_inbound' ORDER BY seq"
        ).fetchall()
    return [Row(*row) for row in rows]


def of_type(pool: ConnectionPool[Any], event_type: type[Any]) -> list[Row]:
    return [row for row in outbox(pool) if row.type == event_type.event_type]


def watermarks(pool: ConnectionPool[Any]) -> dict[str, datetime]:
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT kind, watermark FROM revsync_netsuite_watermarks WHERE account = %s",
            (ACCOUNT,),
        ).fetchall()
    return {str(row[0]): row[1] for row in rows}


def refusals(pool: ConnectionPool[Any]) -> list[tuple[str, str, str]]:
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT type, aggregateid, reason FROM revsync_erp_inbound_refusals WHERE source = %s",
            (netsuite.SOURCE,),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def signed(body: dict[str, Any]) -> tuple[bytes, str]:
    raw = json.dumps(body).encode()
    return raw, "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()


FAILURES = "revsync_erp_inbound_netsuite_poll_failures_total"


def counter(kind: Kind, via: str) -> float:
    labels = {"kind": kind.value, "via": via}
    return REGISTRY.get_sample_value("revsync_erp_inbound_netsuite_events_total", labels) or 0.0


def watermark_gauge(kind: Kind) -> float | None:
    return REGISTRY.get_sample_value(
        "revsync_erp_inbound_netsuite_watermark_timestamp_seconds", {"kind": kind.value}
    )


def assert_each_once(rows: list[Row]) -> None:
    ids = [row.id for row in rows]
    assert len(ids) == len(set(ids))


# -- documents made on the books' clock --------------------------------------------------------


def test_documents_the_books_make_on_their_clock_are_each_one_event(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
    serde: EventSerde,
) -> None:
    orders = place(simulator, 3)
    control.set_clock(invoice_delay_s=0, ship_delay_s=0, payment_delay_s=0)
    wait_for(lambda: books_count(simulator, "payments") == 3)
    inbound = make_inbound()
    counted = {kind: counter(kind, "poll") for kind in Kind}

    written = inbound.poll()

    assert {kind: counter(kind, "poll") - counted[kind] for kind in Kind} == {
        Kind.INVOICE: 3,
        Kind.FULFILLMENT: 3,
        Kind.PAYMENT: 3,
        Kind.CUSTOMER: 3,
    }
    assert watermark_gauge(Kind.INVOICE) == watermarks(pool)["invoice"].timestamp()
    for event_type in (InvoicePosted, ShipmentConfirmed, PaymentReceived):
        assert sorted(row.aggregateid for row in of_type(pool, event_type)) == sorted(orders)
    # The customers the CRM masters (ACTIVE, HELD, BLOCKED), each as its first version.
    mastered = of_type(pool, CustomerMastered)
    assert sorted(row.aggregateid for row in mastered) == ["001A", "001B", "001C"]
    assert of_type(pool, CreditStatusChanged) == []
    assert written == len(outbox(pool)) == 3 * 3 + 3
    assert_each_once(outbox(pool))

    # What the books say is what the event says.
    (posted_row, *_) = of_type(pool, InvoicePosted)
    posted = serde.deserialize(posted_row.topic, posted_row.payload)
    assert isinstance(posted, InvoicePosted)
    order = control.sales_orders(posted.crm_order_id)[0]
    assert posted.grand_total == Decimal(order["grand_total"])
    assert posted.crm_account_id == "001A"
    assert posted.legal_entity == "US01"
    assert posted.region == "NA"
    assert posted.envelope.correlation_id == order["correlation_id"]
    assert posted.envelope.event_id == event_id(
        "netsuite", ACCOUNT, "invoice", posted.erp_invoice_id, "InvoicePosted", ""
    )

    # Polling again: nothing new, though the invoices were modified by their payments.
    assert inbound.poll() == 0
    assert len(outbox(pool)) == written


def test_a_customers_credit_change_is_written_once_and_a_change_of_terms_is_no_credit_change(
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
    serde: EventSerde,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbound = make_inbound()
    inbound.poll()
    before = len(outbox(pool))
    asked_while_writing = watch_queries_while_writing(inbound, monkeypatch)

    time.sleep(1.1)  # a second later: NetSuite's times are read to the second
    control.edit_customer(ACTIVE.id, credit_limit=Decimal(25000), status=CustomerStatus.CREDIT_HOLD)
    assert inbound.poll() == 2
    assert asked_while_writing == [], "the exposure is read before the page's transaction"
    (credit_row,) = of_type(pool, CreditStatusChanged)
    credit = serde.deserialize(credit_row.topic, credit_row.payload)
    assert isinstance(credit, CreditStatusChanged)
    assert credit.crm_account_id == "001A"
    assert credit.credit_limit == Decimal(25000)
    assert credit.status.value == "CREDIT_HOLD"
    assert credit.exposure == Decimal(0)

    time.sleep(1.1)
    control.edit_customer(ACTIVE.id, payment_terms="NET60")
    assert inbound.poll() == 1
    assert inbound.poll() == 0
    assert [row.type for row in outbox(pool)[before:]] == [
        CustomerMastered.event_type,
        CreditStatusChanged.event_type,
        CustomerMastered.event_type,
    ]
    assert len(of_type(pool, CreditStatusChanged)) == 1


def watch_queries_while_writing(
    inbound: NetSuiteInbound, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The SuiteQL queries ``inbound`` makes from now on while a page's transaction is open."""
    writing = threading.Event()
    asked: list[str] = []
    write, suiteql = inbound.write, inbound.client.suiteql

    def watched_write(read: netsuite.Read, advance_to: datetime | None) -> int:
        writing.set()
        try:
            return write(read, advance_to)
        finally:
            writing.clear()

    def watched_suiteql(query: str, limit: int, offset: int) -> Mapping[str, Any]:
        if writing.is_set():
            asked.append(query)
        return suiteql(query, limit=limit, offset=offset)

    monkeypatch.setattr(inbound, "write", watched_write)
    monkeypatch.setattr(inbound.client, "suiteql", watched_suiteql)
    return asked


def ledger(pool: ConnectionPool[Any], kind: str) -> list[tuple[str, str]]:
    with pool.connection() as connection:
        return [
            (str(row[0]), str(row[1]))
            for row in connection.execute(
                "SELECT record_id, modified FROM revsync_netsuite_published WHERE kind = %s "
                "ORDER BY record_id, modified",
                (kind,),
            )
        ]


def test_a_customers_superseded_versions_are_forgotten_a_day_on_its_latest_and_documents_kept(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 1)
    inbound = make_inbound()
    inbound.poll()
    time.sleep(1.1)
    control.edit_customer(ACTIVE.id, payment_terms="NET60")
    inbound.poll()
    versions = [row for row in ledger(pool, "customer") if row[0] == ACTIVE.id]
    assert len(versions) == 2
    invoices = ledger(pool, "invoice")
    assert invoices

    with pool.connection() as connection:  # everything published two days ago
        connection.execute(
            "UPDATE revsync_netsuite_published SET published_at = published_at - interval "
            "'2 days' WHERE kind = 'invoice' OR (kind = 'customer' AND modified = %s)",
            (versions[0][1],),
        )
    assert inbound.forget_versions() == 1
    assert [row for row in ledger(pool, "customer") if row[0] == ACTIVE.id] == versions[1:]
    assert ledger(pool, "invoice") == invoices
    written = len(outbox(pool))
    assert inbound.poll() == 0, "the latest version, read again in the overlap, writes nothing"
    assert len(outbox(pool)) == written


# -- the watermark -----------------------------------------------------------------------------


def test_no_change_lost_or_doubled_across_page_boundaries_and_equal_timestamps(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    orders = invoiced(simulator, control, 23)
    ids = invoice_ids(simulator)
    # Ten share one second, nine the next, four more each a second of their own: pages of
    # four straddle both crowded seconds and a page lies wholly inside each.
    base = datetime(2026, 12, 7, 18, 0, 0, 250_000, tzinfo=UTC)
    stamps = {invoice_id: base for invoice_id in ids[:10]}
    stamps |= {invoice_id: base + timedelta(seconds=1) for invoice_id in ids[10:19]}
    stamps |= {invoice_id: base + timedelta(seconds=2 + n) for n, invoice_id in enumerate(ids[19:])}
    restamp(simulator, stamps)
    inbound = make_inbound(page_size=4)

    inbound.poll_kind(Kind.INVOICE)

    posted = of_type(pool, InvoicePosted)
    assert sorted(row.aggregateid for row in posted) == sorted(orders)
    assert_each_once(posted)
    assert watermarks(pool)[Kind.INVOICE.value] == (base + timedelta(seconds=5)).replace(
        microsecond=0
    )
    assert inbound.poll_kind(Kind.INVOICE) == 0
    assert len(of_type(pool, InvoicePosted)) == 23


def test_a_window_never_pages_near_the_row_cap(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 12)
    base = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    restamp(
        simulator, {i: base + timedelta(seconds=n) for n, i in enumerate(invoice_ids(simulator))}
    )
    with NetSuiteSandbox(simulator.url) as account:
        account.set_settings(row_cap=6)  # three pages of three would pass it at offset 6

    assert make_inbound(page_size=3, row_cap=6).poll_kind(Kind.INVOICE) == 12
    assert_each_once(of_type(pool, InvoicePosted))


def test_more_records_in_one_second_than_the_cap_stop_the_poll_without_skipping(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 8)
    base = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    restamp(simulator, {i: base for i in invoice_ids(simulator)})
    with NetSuiteSandbox(simulator.url) as account:
        account.set_settings(row_cap=6)

    with pytest.raises(netsuite.WindowTooDense):
        make_inbound(page_size=3, row_cap=6).poll_kind(Kind.INVOICE)
    # What it read is written, and the watermark is at that second, not past it.
    assert len(of_type(pool, InvoicePosted)) == 6
    assert watermarks(pool)[Kind.INVOICE.value] == base


def test_a_record_committed_late_with_an_earlier_time_is_found_in_the_overlap(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    first = invoiced(simulator, control, 2)
    base = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    restamp(
        simulator, {i: base + timedelta(seconds=n) for n, i in enumerate(invoice_ids(simulator))}
    )
    inbound = make_inbound(overlap_s=60.0)
    assert inbound.poll_kind(Kind.INVOICE) == 2
    watermark = watermarks(pool)[Kind.INVOICE.value]

    # An invoice whose transaction stamped it 30 s before the watermark and committed after
    # the poll; and one stamped before the overlap, which no poll reads again.
    known = set(invoice_ids(simulator))
    late = invoiced(simulator, control, 2)
    new = [i for i in invoice_ids(simulator) if i not in known]
    restamp(
        simulator,
        {new[0]: watermark - timedelta(seconds=30), new[1]: watermark - timedelta(seconds=90)},
    )
    late_order = books_sql(
        simulator, "SELECT o.external_id FROM invoices i JOIN sales_orders o "
        "ON o.id = i.sales_order_id WHERE i.id = %s", new[0],
    )[0]["external_id"]  # fmt: skip

    assert inbound.poll_kind(Kind.INVOICE) == 1
    assert sorted(row.aggregateid for row in of_type(pool, InvoicePosted)) == sorted(
        [*first, late_order]
    )
    assert late_order in late
    assert watermarks(pool)[Kind.INVOICE.value] == watermark


class Interrupted:
    """A NetSuite client that fails on its ``fail_at``-th call, as a crash mid-poll would."""

    def __init__(self, client: NetSuiteAdapter, fail_at: int) -> None:
        self.client = client
        self.fail_at = fail_at
        self.calls = 0

    def suiteql(self, query: str, *, limit: int, offset: int) -> Mapping[str, Any]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise TransientError("netsuite: HTTP 503 on POST /services/rest/query/v1/suiteql")
        return self.client.suiteql(query, limit=limit, offset=offset)


def test_a_restart_half_way_loses_nothing_and_doubles_nothing(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    client: NetSuiteAdapter,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    orders = invoiced(simulator, control, 10)
    base = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    ids = invoice_ids(simulator)
    restamp(simulator, {i: base + timedelta(seconds=n // 3) for n, i in enumerate(ids)})

    # Each page is its window's query and its orders' query: the third call is page 2's.
    with pytest.raises(TransientError):
        make_inbound(Interrupted(client, fail_at=3), page_size=3).poll_kind(Kind.INVOICE)
    half = of_type(pool, InvoicePosted)
    assert len(half) == 3
    assert watermarks(pool)[Kind.INVOICE.value] == base

    assert make_inbound(page_size=3).poll_kind(Kind.INVOICE) == 7
    posted = of_type(pool, InvoicePosted)
    assert sorted(row.aggregateid for row in posted) == sorted(orders)
    assert_each_once(posted)


@pytest.mark.parametrize(
    "moments",
    [
        # The clock turns back at 2026-11-01 02:00 PDT: 01:00-02:00 happens twice.
        [
            datetime(2026, 11, 1, 8, 30, tzinfo=UTC),  # 01:30 PDT
            datetime(2026, 11, 1, 8, 50, tzinfo=UTC),  # 01:50 PDT
            datetime(2026, 11, 1, 9, 10, tzinfo=UTC),  # 01:10 PST
            datetime(2026, 11, 1, 9, 10, tzinfo=UTC),  # 01:10 PST
            datetime(2026, 11, 1, 9, 40, tzinfo=UTC),  # 01:40 PST
            datetime(2026, 11, 1, 10, 5, tzinfo=UTC),  # 02:05 PST
        ],
        # It jumps forward at 2026-03-08 02:00 PST to 03:00 PDT.
        [
            datetime(2026, 3, 8, 9, 59, 30, tzinfo=UTC),  # 01:59:30 PST
            datetime(2026, 3, 8, 9, 59, 59, tzinfo=UTC),  # 01:59:59 PST
            datetime(2026, 3, 8, 10, 0, 0, tzinfo=UTC),  # 03:00:00 PDT
            datetime(2026, 3, 8, 10, 0, 30, tzinfo=UTC),  # 03:00:30 PDT
        ],
    ],
    ids=["clock-turns-back", "clock-jumps-forward"],
)
def test_the_accounts_clock_changing_loses_nothing_and_doubles_nothing(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
    moments: list[datetime],
) -> None:
    orders = invoiced(simulator, control, len(moments))
    ids = invoice_ids(simulator)
    restamp(simulator, dict(zip(ids, moments, strict=True)))
    inbound = make_inbound(page_size=2, overlap_s=30.0)

    assert inbound.poll_kind(Kind.INVOICE) == len(moments)
    assert inbound.poll_kind(Kind.INVOICE) == 0
    posted = of_type(pool, InvoicePosted)
    assert sorted(row.aggregateid for row in posted) == sorted(orders)
    assert_each_once(posted)
    # Never later than the last change: the watermark reads a repeated hour as its first pass.
    watermark = watermarks(pool)[Kind.INVOICE.value]
    assert watermark <= max(moments)
    assert watermark >= max(moments) - timedelta(hours=1)


# -- afterSubmit -------------------------------------------------------------------------------


def test_an_after_submit_post_writes_its_records_events_once_and_the_poll_then_nothing(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    (order,) = invoiced(simulator, control, 1)
    (invoice_id,) = invoice_ids(simulator)
    inbound = make_inbound()
    body, signature = signed(
        {"recordType": "invoice", "id": invoice_id, "type": "create", "account": ACCOUNT}
    )

    posted = counter(Kind.INVOICE, "after_submit")
    assert inbound.after_submit(body, signature) == 1
    assert inbound.after_submit(body, signature) == 0
    assert counter(Kind.INVOICE, "after_submit") - posted == 1
    assert [row.aggregateid for row in of_type(pool, InvoicePosted)] == [order]
    # The watermark has not moved: the poll reads the invoice, and writes it no second time.
    assert Kind.INVOICE.value not in watermarks(pool)
    inbound.poll()
    assert [row.aggregateid for row in of_type(pool, InvoicePosted)] == [order]

    time.sleep(1.1)
    control.edit_customer(ACTIVE.id, credit_limit=Decimal(30000))
    customer, signature = signed(
        {"recordType": "customer", "id": ACTIVE.id, "type": "edit", "account": ACCOUNT}
    )
    assert inbound.after_submit(customer, signature) == 2
    assert inbound.after_submit(customer, signature) == 0
    assert inbound.poll() == 0

    with pytest.raises(SignatureInvalid):
        inbound.after_submit(customer, "sha256=" + "0" * 64)


def test_an_after_submit_post_for_a_record_gone_writes_nothing(
    make_inbound: Callable[..., NetSuiteInbound], pool: ConnectionPool[Any]
) -> None:
    body, signature = signed(
        {"recordType": "invoice", "id": "INV-gone", "type": "edit", "account": ACCOUNT}
    )
    assert make_inbound().after_submit(body, signature) == 0
    assert outbox(pool) == []


# -- refusals and outages ----------------------------------------------------------------------


def test_a_refused_record_is_kept_apart_and_the_others_are_written(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    place(simulator, 1, customer_id=UNLINKED.id)
    orders = place(simulator, 2)
    control.set_clock(invoice_delay_s=0)
    wait_for(lambda: books_count(simulator, "invoices") == 3)
    inbound = make_inbound()

    inbound.poll_kind(Kind.INVOICE)
    inbound.poll_kind(Kind.INVOICE)

    assert sorted(row.aggregateid for row in of_type(pool, InvoicePosted)) == sorted(orders)
    ((event_type, _, reason),) = refusals(pool)
    assert event_type == "InvoicePosted"
    assert "sales_order.crm_account_id" in reason


def test_netsuite_down_leaves_the_watermark_where_it_was(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    first = invoiced(simulator, control, 2)
    inbound = make_inbound()
    inbound.poll()
    before = watermarks(pool)
    assert set(before) == {kind.value for kind in Kind} - {
        Kind.FULFILLMENT.value,
        Kind.PAYMENT.value,
    }

    time.sleep(1.1)
    later = invoiced(simulator, control, 2)
    control.set_faults(error_rate=1.0)
    failed = REGISTRY.get_sample_value(FAILURES, {"kind": "invoice"}) or 0.0
    with pytest.raises(TransientError):
        inbound.poll()
    assert watermarks(pool) == before
    assert REGISTRY.get_sample_value(FAILURES, {"kind": "invoice"}) == failed + 1

    # The loop outlives the outage, and once NetSuite is back, reads on from the watermark.
    stop = threading.Event()
    loop = threading.Thread(target=inbound.run, args=(stop,), daemon=True)
    loop.start()
    try:
        time.sleep(0.3)
        assert loop.is_alive()
        control.set_faults(error_rate=0.0)
        wait_for(lambda: len(of_type(pool, InvoicePosted)) == 4)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    assert sorted(row.aggregateid for row in of_type(pool, InvoicePosted)) == sorted(first + later)
    assert watermarks(pool)[Kind.INVOICE.value] > before[Kind.INVOICE.value]


class Corrupting:
    """A NetSuite client whose window answers carry an unreadable total for one invoice."""

    def __init__(self, client: NetSuiteAdapter, invoice_id: str) -> None:
        self.client = client
        self.invoice_id = invoice_id

    def suiteql(self, query: str, *, limit: int, offset: int) -> Mapping[str, Any]:
        answer = dict(self.client.suiteql(query, limit=limit, offset=offset))
        answer["items"] = [
            {**item, "total": "n/a"} if item.get("id") == self.invoice_id else item
            for item in answer["items"]
        ]
        return answer


def test_a_record_that_cannot_be_read_is_kept_apart_once_and_the_others_are_written(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    client: NetSuiteAdapter,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 3)
    broken, *_ = invoice_ids(simulator)
    inbound = make_inbound(Corrupting(client, broken))

    assert inbound.poll_kind(Kind.INVOICE) == 2
    assert inbound.poll_kind(Kind.INVOICE) == 0
    ((event_type, _, reason),) = refusals(pool)
    assert event_type == "InvoicePosted"
    assert reason == f"netsuite invoice {broken}: total: not a decimal"
    assert len(of_type(pool, InvoicePosted)) == 2

    # Once NetSuite answers it readably and it is modified again, it is written.
    time.sleep(1.1)
    books_sql(simulator, "UPDATE invoices SET posted_at = now() WHERE id = %s", broken)
    assert make_inbound().poll_kind(Kind.INVOICE) == 1
    assert_each_once(of_type(pool, InvoicePosted))
    assert len(of_type(pool, InvoicePosted)) == 3


def test_an_expired_token_is_replaced_and_a_refused_query_is_named(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    client: NetSuiteAdapter,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 1)
    inbound = make_inbound()
    inbound.poll_kind(Kind.CUSTOMER)
    with NetSuiteSandbox(simulator.url) as account:
        assert account.expire_tokens() >= 1

    assert inbound.poll_kind(Kind.INVOICE) == 1

    with pytest.raises(ErpUnexpectedResponse, match="HTTP 400 on POST"):
        client.suiteql("SELECT t.nosuchcolumn FROM transaction t", limit=1, offset=0)


def test_after_submit_posts_of_a_fulfilment_and_a_payment_each_write_their_event_once(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    (order,) = place(simulator, 1)
    control.set_clock(invoice_delay_s=0, ship_delay_s=0, payment_delay_s=0)
    wait_for(lambda: books_count(simulator, "payments") == 1)
    ((shipment_id,),) = [
        tuple(r.values()) for r in books_sql(simulator, "SELECT id FROM shipments")
    ]
    ((payment_id,),) = [tuple(r.values()) for r in books_sql(simulator, "SELECT id FROM payments")]
    inbound = make_inbound()

    for record_type, record_id in (
        ("itemfulfillment", shipment_id),
        ("customerpayment", payment_id),
    ):
        body, signature = signed(
            {"recordType": record_type, "id": record_id, "type": "create", "account": ACCOUNT}
        )
        assert inbound.after_submit(body, signature) == 1
        assert inbound.after_submit(body, signature) == 0

    inbound.poll()
    assert [row.aggregateid for row in of_type(pool, ShipmentConfirmed)] == [order]
    assert [row.aggregateid for row in of_type(pool, PaymentReceived)] == [order]


class Moving:
    """A NetSuite client that, once its first window page is answered, has the books modify
    one record of that page again: it moves to the end of the window while the poll pages."""

    def __init__(self, client: NetSuiteAdapter, simulator: NetSuiteSimulator, moved: str) -> None:
        self.client = client
        self.simulator = simulator
        self.moved = moved
        self.windows = 0

    def suiteql(self, query: str, *, limit: int, offset: int) -> Mapping[str, Any]:
        answer = self.client.suiteql(query, limit=limit, offset=offset)
        if "lastmodifieddate >=" in query:
            self.windows += 1
            if self.windows == 1:
                later = datetime(2026, 12, 7, 18, 10, tzinfo=UTC)
                books_sql(
                    self.simulator,
                    "UPDATE invoices SET posted_at = %s WHERE id = %s",
                    later,
                    self.moved,
                )
        return answer


def test_a_record_modified_again_while_the_poll_pages_shifts_nothing_past_it(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    client: NetSuiteAdapter,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    orders = invoiced(simulator, control, 9)
    base = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    ids = invoice_ids(simulator)
    restamp(simulator, {i: base + timedelta(seconds=n) for n, i in enumerate(ids)})
    # The second of the first page leaves it: paging on by offset would now skip the fourth.
    moving = Moving(client, simulator, moved=ids[1])

    assert make_inbound(moving, page_size=3).poll_kind(Kind.INVOICE) == 9
    posted = of_type(pool, InvoicePosted)
    assert sorted(row.aggregateid for row in posted) == sorted(orders)
    assert_each_once(posted)


def test_an_invoice_paid_after_it_was_published_is_not_published_again(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
    serde: EventSerde,
) -> None:
    (order,) = invoiced(simulator, control, 1)
    inbound = make_inbound()
    inbound.poll()
    (posted_row,) = of_type(pool, InvoicePosted)

    time.sleep(1.1)
    control.set_clock(payment_delay_s=0)
    wait_for(lambda: books_count(simulator, "payments") == 1)
    inbound.poll()

    assert of_type(pool, InvoicePosted) == [posted_row]
    (paid_row,) = of_type(pool, PaymentReceived)
    paid = serde.deserialize(paid_row.topic, paid_row.payload)
    assert isinstance(paid, PaymentReceived)
    assert paid.crm_order_id == order
    assert paid.remaining_balance == Decimal(0)
    posted = serde.deserialize(posted_row.topic, posted_row.payload)
    assert isinstance(posted, InvoicePosted)
    assert paid.amount == posted.grand_total


def test_netsuite_throttling_is_waited_out_as_long_as_it_asks(
    simulator: NetSuiteSimulator,
    control: ErpSandbox,
    make_inbound: Callable[..., NetSuiteInbound],
    pool: ConnectionPool[Any],
) -> None:
    invoiced(simulator, control, 1)
    inbound = make_inbound()
    control.set_faults(throttle_rate=1.0, retry_after_s=7)

    with pytest.raises(TransientError) as throttled:
        inbound.poll()
    assert throttled.value.retry_after == 7
    assert netsuite.backoff_s(0.05, 1, throttled.value) == 7
    assert watermarks(pool) == {}
    assert outbox(pool) == []
