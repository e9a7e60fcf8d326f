"""Business Central's changes as revsync's events on the live PostgreSQL: every document and
customer version written to revsync's outbox once, whether a notification, a repeated
notification or the reconciliation poll finds it; the poll's position safe across page
boundaries, equal timestamps, late commits and Business Central being down; the
subscriptions made, renewed before they expire and made again when gone."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg_pool import ConnectionPool
from pydantic import SecretStr
from sandbox.business_central.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SCOPE,
    BusinessCentralSimulator,
)
from sandbox.erp import ErpSandbox
from sandbox.http import Faults

from contract_fixtures import cli_for, drop_topics, governed, isolated_contracts
from erp_inbound import business_central as bc
from erp_inbound import sink
from erp_inbound.business_central_mapping import stamp
from erp_inbound.sink import InboundSink
from revsync.connectors.business_central import BusinessCentralAdapter, BusinessCentralConfig
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.errors import TransientError
from revsync.migrations import Tables, ensure
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product
from revsync.runtime.outbox import SCHEMA as OUTBOX_SCHEMA
from revsync.runtime.outbox import OutboxWriter
from revsync.security import POSTGRES_SERVICE
from revsync.settings import Settings

pytestmark = pytest.mark.integration

SECRET = SecretStr("client-state-for-tests")
OUTBOX_SERVICE = "erp_inbound_bc_tests"
RECEIVER = "https://revsync.example.com/erp/business-central/notifications"
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


# -- the database and the sink ---------------------------------------------------------------


@pytest.fixture(scope="module")
def inbound_sink(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InboundSink]:
    contracts = isolated_contracts(tmp_path_factory.mktemp("bc-inbound") / "avro")
    catalog = governed(cli_for(settings), contracts)
    registry = SchemaRegistryClient(settings.registry_config())
    serde = EventSerde(registry, catalog, SchemaRepository(contracts))
    inbound_sink = InboundSink(catalog, serde, bc.SYSTEM)
    # Its rows under a service of the tests' own: an erp_inbound relay that another test runs
    # on the shared database would otherwise publish (and delete) them before they are read.
    inbound_sink.outbox = OutboxWriter(serde, OUTBOX_SERVICE)
    yield inbound_sink
    drop_topics(settings, contracts)


@pytest.fixture(scope="module")
def pool(settings: Settings) -> Iterator[ConnectionPool[Any]]:
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as connection:
        ensure(
            connection,
            (Tables(OUTBOX_SCHEMA, writers=(POSTGRES_SERVICE,)), *sink.TABLES, *bc.TABLES),
        )
    with ConnectionPool(dsn, min_size=1, max_size=4, open=True) as opened:
        yield opened


NAMES = {event.event_type: event.__name__ for event in sink.OUTPUTS}


def events(pool: ConnectionPool[Any], keys: list[str]) -> list[tuple[str, str]]:
    """(event, aggregate id) of the inbound side's outbox rows keyed by ``keys``."""
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT type, aggregateid FROM revsync_outbox WHERE service = %s "
            "AND aggregateid = ANY(%s) ORDER BY seq",
            (OUTBOX_SERVICE, keys),
        ).fetchall()
    return [(NAMES[str(row[0])], str(row[1])) for row in rows]


def positions(pool: ConnectionPool[Any], company_id: str) -> dict[str, datetime | None]:
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT entity, position FROM revsync_bc_positions WHERE company_id = %s",
            (company_id,),
        ).fetchall()
    return {str(row[0]): row[1] for row in rows}


# -- Business Central's API, in process ------------------------------------------------------


@dataclass
class FakeBusinessCentral:
    """The API calls the inbound side makes, over records a test puts in; ``down`` fails
    every call as a gateway would."""

    company_id: str
    scope: str = "tenant-1/production"
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: bool = False
    refusing: set[str] = field(default_factory=set)
    """Entities (or record ids) whose reads Business Central refuses with a 400."""
    lifetime: timedelta = timedelta(days=3)
    clock: datetime = T0
    calls: list[str] = field(default_factory=list)

    def put(self, entity: str, record: dict[str, Any]) -> dict[str, Any]:
        self.records.setdefault(entity, {})[record["id"]] = record
        return record

    def _available(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise TransientError(f"business-central: HTTP 503 on {call}")

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Mapping[str, Any]:
        self._available(f"GET {path}")
        params = params or {}
        if path == "subscriptions":
            return {"value": list(self.subscriptions.values())}
        match = re.fullmatch(r"companies\(([^)]+)\)/(\w+)(?:\(([^)]+)\))?", path)
        assert match is not None, path
        assert match[1] == self.company_id
        entity, record_id = match[2], match[3]
        if entity in self.refusing or record_id in self.refusing:
            raise bc.BusinessCentralRefused(f"business-central: HTTP 400 on GET {path}", 400, None)
        if entity == "companyInformation":
            return {"value": [{"currencyCode": "USD"}]}
        if entity == "paymentTerms":
            return {"value": [{"id": "terms-30", "code": "NET30"}]}
        records = self.records.get(entity, {})
        if record_id is not None:
            if record_id not in records:
                raise bc.RecordGone(f"business-central: HTTP 404 on GET {path}")
            return records[record_id]
        chosen = list(records.values())
        condition = params.get("$filter", "")
        floor = re.fullmatch(r"lastModifiedDateTime ge (\S+)", condition)
        if floor is not None:
            since = datetime.fromisoformat(floor[1].replace("Z", "+00:00"))
            chosen = [r for r in chosen if _at(r) >= since]
        chosen.sort(key=lambda r: (_at(r), r["id"]))
        if "$top" in params:
            chosen = chosen[: int(params["$top"])]
        return {"value": chosen}

    def get_link(self, url: str) -> Mapping[str, Any]:
        raise AssertionError("no server-driven paging here")

    def post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        self._available(f"POST {path}")
        assert path == "subscriptions"
        subscription = {
            **body,
            "subscriptionId": uuid.uuid4().hex,
            "expirationDateTime": stamp(self.clock + self.lifetime),
            "@odata.etag": f'W/"{uuid.uuid4().hex}"',
        }
        self.subscriptions[subscription["subscriptionId"]] = subscription
        return subscription

    def patch(self, path: str, body: Mapping[str, Any], etag: str) -> Mapping[str, Any]:
        self._available(f"PATCH {path}")
        match = re.fullmatch(r"subscriptions\('([^']+)'\)", path)
        assert match is not None
        current = self.subscriptions.get(match[1])
        if current is None:
            raise bc.RecordGone(f"business-central: HTTP 404 on PATCH {path}")
        assert etag == current["@odata.etag"]
        current.update(body)
        current["expirationDateTime"] = stamp(self.clock + self.lifetime)
        current["@odata.etag"] = f'W/"{uuid.uuid4().hex}"'
        return current

    def delete(self, path: str, etag: str) -> None:
        self._available(f"DELETE {path}")
        match = re.fullmatch(r"subscriptions\('([^']+)'\)", path)
        assert match is not None
        if self.subscriptions.pop(match[1], None) is None:
            raise bc.RecordGone(f"business-central: HTTP 404 on DELETE {path}")

    def customer_link(self, company_id: str, customer_id: str) -> Mapping[str, Any] | None:
        self._available(f"GET customerLinks({customer_id})")
        account = self.links.get(customer_id)
        return None if account is None else {"customerId": customer_id, "crmAccountId": account}


def _at(record: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["lastModifiedDateTime"]).replace("Z", "+00:00"))


@dataclass
class Books:
    """Documents of orders placed from the CRM, as Business Central keeps them."""

    api: FakeBusinessCentral
    orders: list[str] = field(default_factory=list)

    def customer(self, at: datetime, **fields: Any) -> dict[str, Any]:
        customer_id = str(uuid.uuid4())
        self.api.links[customer_id] = f"001{uuid.uuid4().hex[:15]}"
        return self.api.put(
            "customers",
            {
                "id": customer_id,
                "number": f"C{len(self.api.records.get('customers', {})) + 10001}",
                "displayName": "Acme Industrial, Inc.",
                "currencyCode": "",
                "paymentTermsId": "terms-30",
                "blocked": " ",
                "balanceDue": 0,
                "creditLimit": 50000,
                "lastModifiedDateTime": stamp(at),
                **fields,
            },
        )

    def invoice(
        self, at: datetime, customer: Mapping[str, Any], status: str = "Open"
    ) -> dict[str, Any]:
        crm_order = f"801{uuid.uuid4().hex[:15]}"
        self.orders.append(crm_order)
        return self.api.put(
            "salesInvoices",
            {
                "id": str(uuid.uuid4()),
                "number": f"PSI-{len(self.orders):05d}",
                "externalDocumentNumber": crm_order,
                "orderId": bc_no_id(),
                "orderNumber": f"SO-{len(self.orders):05d}",
                "postingDate": at.date().isoformat(),
                "dueDate": (at + timedelta(days=30)).date().isoformat(),
                "customerId": customer["id"],
                "currencyCode": "USD",
                "paymentTermsId": "terms-30",
                "shortcutDimension1Code": "NA",
                "totalAmountExcludingTax": 100,
                "totalTaxAmount": 8,
                "totalAmountIncludingTax": 108,
                "remainingAmount": 108,
                "status": status,
                "lastModifiedDateTime": stamp(at),
            },
        )

    def shipment(self, at: datetime, invoice: Mapping[str, Any]) -> dict[str, Any]:
        return self.api.put(
            "salesShipments",
            {
                "id": str(uuid.uuid4()),
                "number": f"PSS-{invoice['number']}",
                "externalDocumentNumber": invoice["externalDocumentNumber"],
                "orderNumber": invoice["orderNumber"],
                "customerId": invoice["customerId"],
                "shortcutDimension1Code": "NA",
                "shippingAgentCode": "UPS",
                "packageTrackingNo": "1Z0000000000000001",
                "lastModifiedDateTime": stamp(at),
                "salesShipmentLines": [
                    {"sequence": 10000, "lineType": "Item", "lineObjectNumber": "SEN-001",
                     "quantity": 2}
                ],
            },
        )  # fmt: skip

    def payment(self, at: datetime, invoice: dict[str, Any]) -> dict[str, Any]:
        invoice.update(status="Paid", remainingAmount=0, lastModifiedDateTime=stamp(at))
        return self.api.put(
            "customerPayments",
            {
                "id": str(uuid.uuid4()),
                "documentNumber": f"PAY-{invoice['number']}",
                "customerId": invoice["customerId"],
                "amount": 108,
                "appliesToInvoiceId": invoice["id"],
                "lastModifiedDateTime": stamp(at),
            },
        )


def bc_no_id() -> str:
    return "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def api() -> FakeBusinessCentral:
    return FakeBusinessCentral(company_id=str(uuid.uuid4()))


@pytest.fixture
def books(api: FakeBusinessCentral) -> Books:
    return Books(api)


def make_inbound(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink, **config: Any
) -> bc.BusinessCentralInbound:
    settings: dict[str, Any] = {
        "companies": {"US01": api.company_id},
        "notification_url": RECEIVER,
        "client_state": SECRET,
        "page_size": 3,
        **config,
    }
    return bc.BusinessCentralInbound(
        api, pool, inbound_sink, bc.BusinessCentralInboundConfig(**settings),
        clock=lambda: api.clock,
    )  # fmt: skip


@pytest.fixture
def inbound(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> bc.BusinessCentralInbound:
    return make_inbound(api, pool, inbound_sink)


# -- the poll -------------------------------------------------------------------------------


def test_the_poll_writes_every_document_once_and_a_re_poll_nothing(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    first = books.invoice(T0 + timedelta(seconds=1), customer)
    second = books.invoice(T0 + timedelta(seconds=2), customer)
    books.shipment(T0 + timedelta(seconds=3), first)
    books.payment(T0 + timedelta(seconds=4), first)
    books.invoice(T0 + timedelta(seconds=5), customer, status="Draft")
    written = inbound.reconcile()
    assert sorted(events(pool, books.orders)) == sorted(
        [
            ("InvoicePosted", first["externalDocumentNumber"]),
            ("InvoicePosted", second["externalDocumentNumber"]),
            ("ShipmentConfirmed", first["externalDocumentNumber"]),
            ("PaymentReceived", first["externalDocumentNumber"]),
        ]
    )
    assert written == 4 + 1  # and the customer
    assert events(pool, [api.links[customer["id"]]]) == [
        ("CustomerMastered", api.links[customer["id"]])
    ]
    assert inbound.reconcile() == 0
    assert len(events(pool, books.orders)) == 4
    assert positions(pool, api.company_id)["salesInvoices"] == T0 + timedelta(seconds=5)


def test_records_sharing_a_timestamp_across_pages_are_each_written_once(
    books: Books, inbound: bc.BusinessCentralInbound, pool: ConnectionPool[Any]
) -> None:
    customer = books.customer(T0)
    same = T0 + timedelta(seconds=1)
    invoices = [books.invoice(same, customer) for _ in range(7)]  # pages of 3
    invoices.append(books.invoice(same + timedelta(milliseconds=1), customer))
    assert inbound.reconcile() == 8 + 1
    assert sorted(events(pool, books.orders)) == sorted(
        ("InvoicePosted", invoice["externalDocumentNumber"]) for invoice in invoices
    )
    late = books.invoice(same, customer)  # committed after the poll passed its timestamp
    assert inbound.reconcile() == 1
    assert ("InvoicePosted", late["externalDocumentNumber"]) in events(pool, books.orders)
    assert len(events(pool, books.orders)) == 9


def test_a_change_committed_after_a_later_one_was_read_is_found_in_the_overlap(
    books: Books, inbound: bc.BusinessCentralInbound, pool: ConnectionPool[Any]
) -> None:
    customer = books.customer(T0)
    books.invoice(T0 + timedelta(seconds=10), customer)
    inbound.reconcile()
    straggler = books.invoice(T0 + timedelta(seconds=10) - bc.OVERLAP / 2, customer)
    assert inbound.reconcile() == 1
    assert ("InvoicePosted", straggler["externalDocumentNumber"]) in events(pool, books.orders)


def test_business_central_down_leaves_the_positions_where_they_were(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    books.invoice(T0 + timedelta(seconds=1), customer)
    inbound.reconcile()
    before = positions(pool, api.company_id)
    later = books.invoice(T0 + timedelta(seconds=2), customer)
    books.shipment(T0 + timedelta(seconds=3), later)
    api.down = True
    with pytest.raises(TransientError):
        inbound.reconcile()
    assert positions(pool, api.company_id) == before
    assert len(events(pool, books.orders)) == 1
    api.down = False
    assert inbound.reconcile() == 2
    assert len(events(pool, books.orders)) == 3


def test_a_customers_credit_change_is_written_once_with_its_version(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    account = api.links[customer["id"]]
    inbound.reconcile()
    customer.update(displayName="Acme", lastModifiedDateTime=stamp(T0 + timedelta(seconds=1)))
    inbound.reconcile()
    customer.update(creditLimit=1000, lastModifiedDateTime=stamp(T0 + timedelta(seconds=2)))
    inbound.reconcile()
    inbound.reconcile()
    assert events(pool, [account]) == [
        ("CustomerMastered", account),
        ("CustomerMastered", account),
        ("CustomerMastered", account),
        ("CreditStatusChanged", account),
    ]


def test_what_happened_before_revsync_was_connected_is_not_published(
    api: FakeBusinessCentral, books: Books, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    earlier = T0 - timedelta(hours=1)
    customer = books.customer(earlier)
    account = api.links[customer["id"]]
    old = books.invoice(earlier, customer)
    inbound = make_inbound(api, pool, inbound_sink)
    assert inbound.reconcile() == 0
    assert events(pool, [*books.orders, account]) == []
    customer.update(creditLimit=10, lastModifiedDateTime=stamp(T0 + timedelta(seconds=1)))
    new = books.invoice(T0 + timedelta(seconds=1), customer)
    inbound.reconcile()
    assert events(pool, [*books.orders, account]) == [
        ("InvoicePosted", new["externalDocumentNumber"]),
        ("CustomerMastered", account),
        ("CreditStatusChanged", account),  # its credit fields were learnt from the first poll
    ]
    assert old["externalDocumentNumber"] not in {key for _, key in events(pool, books.orders)}


def test_a_first_poll_from_a_given_time_publishes_from_then(
    api: FakeBusinessCentral, books: Books, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    customer = books.customer(T0 - timedelta(days=2))
    old = books.invoice(T0 - timedelta(days=1), customer)
    inbound = make_inbound(api, pool, inbound_sink, first_poll_from=T0 - timedelta(days=1))
    inbound.reconcile()
    assert events(pool, books.orders) == [("InvoicePosted", old["externalDocumentNumber"])]
    assert events(pool, [api.links[customer["id"]]]) == []


def test_two_replicas_polling_and_working_notifications_at_once_write_each_event_once(
    api: FakeBusinessCentral, books: Books, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    replicas = [make_inbound(api, pool, inbound_sink) for _ in range(2)]
    customer = books.customer(T0)
    invoices = [books.invoice(T0 + timedelta(milliseconds=n), customer) for n in range(20)]
    for invoice in invoices:
        for replica in replicas:  # each notification reaches both replicas
            replica.notified(notification(api.company_id, "salesInvoices", invoice["id"]))

    failures: list[BaseException] = []

    def work(replica: bc.BusinessCentralInbound) -> None:
        try:
            replica.process()
            replica.reconcile()
        except BaseException as failure:  # reported by the test
            failures.append(failure)

    threads = [threading.Thread(target=work, args=(replica,)) for replica in replicas * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    for replica in replicas:
        replica.reconcile()
        replica.process()
    assert sorted(events(pool, books.orders)) == sorted(
        ("InvoicePosted", invoice["externalDocumentNumber"]) for invoice in invoices
    )


def test_an_unlinked_customer_and_an_order_revsync_did_not_place_write_nothing(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    del api.links[customer["id"]]
    local = books.invoice(T0, customer)
    local["externalDocumentNumber"] = ""
    assert inbound.reconcile() == 0


def test_an_entity_that_fails_does_not_stop_the_others(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    invoice = books.invoice(T0 + timedelta(seconds=1), customer)
    books.shipment(T0 + timedelta(seconds=2), invoice)
    api.refusing.add("salesInvoices")
    with pytest.raises(bc.BusinessCentralRefused):
        inbound.reconcile()
    assert events(pool, books.orders) == [("ShipmentConfirmed", invoice["externalDocumentNumber"])]
    assert positions(pool, api.company_id)["salesInvoices"] is None
    api.refusing.clear()
    inbound.reconcile()
    assert sorted(events(pool, books.orders)) == [
        ("InvoicePosted", invoice["externalDocumentNumber"]),
        ("ShipmentConfirmed", invoice["externalDocumentNumber"]),
    ]


# -- notifications --------------------------------------------------------------------------


def notification(company_id: str, entity: str, record_id: str | None, change: str = "updated",
                 state: str = SECRET.get_secret_value()) -> bytes:  # fmt: skip
    resource = f"api/v2.0/companies({company_id})/{entity}" + (
        f"({record_id})" if record_id else ""
    )
    value = {"subscriptionId": "s", "clientState": state, "resource": resource,
             "changeType": change, "lastModifiedDateTime": stamp(T0)}  # fmt: skip
    return json.dumps({"value": [value]}).encode()


def test_a_notified_record_is_written_once_however_often_notified_or_polled(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    invoice = books.invoice(T0 + timedelta(seconds=1), customer)
    for _ in range(3):
        assert inbound.notified(notification(api.company_id, "salesInvoices", invoice["id"])) == 202
    assert inbound.process() == 1
    assert inbound.notified(notification(api.company_id, "salesInvoices", invoice["id"])) == 202
    assert inbound.process() == 0
    inbound.reconcile()
    assert events(pool, books.orders) == [("InvoicePosted", invoice["externalDocumentNumber"])]


def test_a_collection_notification_reads_the_collection_from_the_position(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    invoices = [books.invoice(T0 + timedelta(seconds=n), customer) for n in range(1, 5)]
    assert (
        inbound.notified(notification(api.company_id, "salesInvoices", None, "collection")) == 202
    )
    assert inbound.process() == 4
    assert len(events(pool, books.orders)) == len(invoices)
    with pool.connection() as connection:
        left = connection.execute(
            "SELECT count(*) FROM revsync_bc_notifications WHERE company_id = %s",
            (api.company_id,),
        ).fetchone()
    assert left == (0,)


def test_a_notification_waits_while_business_central_is_down(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    invoice = books.invoice(T0, customer)
    inbound.notified(notification(api.company_id, "salesInvoices", invoice["id"]))
    api.down = True
    with pytest.raises(TransientError):
        inbound.process()
    api.down = False
    assert inbound.process() == 1


def test_a_notified_record_business_central_refuses_to_read_is_left_to_the_poll(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    refused = books.invoice(T0, customer)
    fine = books.invoice(T0, customer)
    api.refusing.add(refused["id"])
    for invoice in (refused, fine):
        inbound.notified(notification(api.company_id, "salesInvoices", invoice["id"]))
    assert inbound.process() == 1
    assert inbound.process() == 0  # not stuck behind the one refused
    assert events(pool, books.orders) == [("InvoicePosted", fine["externalDocumentNumber"])]


def test_notifications_queued_for_a_company_no_longer_read_do_not_stop_the_others(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    with pool.connection() as connection:
        connection.execute(
            "INSERT INTO revsync_bc_notifications (company_id, entity, record_id, change_type) "
            "VALUES (%s, 'salesInvoices', 'x', 'created'), (%s, 'customers', NULL, "
            "'collection')",
            (str(uuid.uuid4()), str(uuid.uuid4())),
        )
    invoice = books.invoice(T0, books.customer(T0))
    inbound.notified(notification(api.company_id, "salesInvoices", invoice["id"]))
    assert inbound.process() == 1
    assert events(pool, books.orders) == [("InvoicePosted", invoice["externalDocumentNumber"])]


def test_a_notification_of_a_record_deleted_since_is_dropped(
    api: FakeBusinessCentral, inbound: bc.BusinessCentralInbound
) -> None:
    inbound.notified(notification(api.company_id, "salesInvoices", str(uuid.uuid4())))
    assert inbound.process() == 0
    assert inbound.process() == 0


# -- subscriptions --------------------------------------------------------------------------


def test_subscriptions_are_made_renewed_inside_their_window_and_made_again_when_gone(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    inbound = make_inbound(api, pool, inbound_sink, renew_before_s=3600.0)
    assert inbound.keep_subscriptions() == 2
    made = {s["resource"]: s for s in api.subscriptions.values()}
    assert set(made) == {
        f"/api/v2.0/companies({api.company_id})/customers",
        f"/api/v2.0/companies({api.company_id})/salesInvoices",
    }
    assert all(s["clientState"] == SECRET.get_secret_value() for s in made.values())
    assert inbound.keep_subscriptions() == 0  # three days left: nothing to do
    api.clock += timedelta(days=3) - timedelta(minutes=59)
    assert inbound.keep_subscriptions() == 2
    assert {s["subscriptionId"] for s in api.subscriptions.values()} == {
        s["subscriptionId"] for s in made.values()
    }
    assert all(
        datetime.fromisoformat(s["expirationDateTime"].replace("Z", "+00:00"))
        > api.clock + timedelta(days=2)
        for s in api.subscriptions.values()
    )
    gone = next(iter(api.subscriptions))
    del api.subscriptions[gone]
    assert inbound.keep_subscriptions() == 1
    assert len(api.subscriptions) == 2
    with pool.connection() as connection:
        kept = connection.execute(
            "SELECT entity, subscription_id FROM revsync_bc_subscriptions WHERE company_id = %s",
            (api.company_id,),
        ).fetchall()
    assert {row[1] for row in kept} == set(api.subscriptions)


def test_subscriptions_to_what_revsync_does_not_read_and_second_ones_are_deleted(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    inbound = make_inbound(api, pool, inbound_sink)
    inbound.keep_subscriptions()
    customers = f"/api/v2.0/companies({api.company_id})/customers"
    first = next(k for k, s in api.subscriptions.items() if s["resource"] == customers)
    taken_out = api.post(
        "subscriptions",
        {"notificationUrl": RECEIVER, "resource": "/api/v2.0/companies(gone)/customers"},
    )
    api.clock += timedelta(hours=1)  # a second one, expiring after the first: the one kept
    second = api.post("subscriptions", {"notificationUrl": RECEIVER, "resource": customers})
    someone_elses = api.post(
        "subscriptions",
        {"notificationUrl": "https://elsewhere/", "resource": "/api/v2.0/companies(x)/customers"},
    )
    assert inbound.keep_subscriptions() == 0
    assert taken_out["subscriptionId"] not in api.subscriptions
    assert first not in api.subscriptions
    assert second["subscriptionId"] in api.subscriptions
    assert someone_elses["subscriptionId"] in api.subscriptions
    assert sorted(s["resource"] for s in api.subscriptions.values()) == sorted(
        [customers, f"/api/v2.0/companies({api.company_id})/salesInvoices",
         "/api/v2.0/companies(x)/customers"]
    )  # fmt: skip


def test_subscriptions_not_kept_while_business_central_is_down_are_kept_after(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    inbound = make_inbound(api, pool, inbound_sink)
    api.down = True
    with pytest.raises(TransientError):
        inbound.keep_subscriptions()
    api.down = False
    assert inbound.keep_subscriptions() == 2


# -- against Business Central's simulator ----------------------------------------------------

NEVER = 3600.0
PRODUCT = Product("BCI-SENSOR", "Pressure sensor", "SENSORS", "EA", True, frozenset())
PRICES = PriceBook("PB-BCI-US", "US standard", "USD", "US01", {PRODUCT.sku: Decimal("100")})


@pytest.fixture(scope="module")
def simulator(settings: Settings) -> Iterator[BusinessCentralSimulator]:
    """Business Central over books of its own schema, for a tenant of its own (its company ids
    are this run's), its clock stopped and its notifications sent every 0.2 s."""
    business_central = BusinessCentralSimulator(
        settings.postgres_dsn.get_secret_value(),
        tenant_id=str(uuid.uuid4()),
        schema="bc_inbound_tests",
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        payment_delay_s=-1,
        notification_interval_s=0.2,
    ).start()
    with ErpSandbox(business_central.url) as control:
        control.seed_products([PRODUCT])
        control.seed_price_books([PRICES])
    yield business_central
    business_central.stop()


@pytest.fixture
def control(simulator: BusinessCentralSimulator) -> Iterator[ErpSandbox]:
    with ErpSandbox(simulator.url) as sandbox:
        yield sandbox
        sandbox.set_faults(**asdict(Faults()))
        sandbox.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)
    simulator.settings.update(
        {"drop_next_notifications": 0, "duplicate_next_notifications": 0,
         "subscription_lifetime_s": 3 * 24 * 3600.0, "collapse_threshold": 100}
    )  # fmt: skip
    for subscription in simulator.subscriptions.current():
        simulator.subscriptions.remove(subscription.id)


class TokenSession:
    """Client credentials against the simulator's Entra ID token endpoint."""

    def __init__(self, simulator: BusinessCentralSimulator) -> None:
        self._simulator = simulator
        self._token: str | None = None

    def token(self) -> str:
        return self._token or self.refresh(None)

    def refresh(self, stale: str | None) -> str:
        answer = httpx.post(
            self._simulator.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "scope": SCOPE,
            },
            timeout=5,
        )
        answer.raise_for_status()
        self._token = str(answer.json()["access_token"])
        return self._token


class Receiver:
    """revsync's notification receiver on a free port: the handshake and notifications
    handed to the inbound side, every answer recorded."""

    def __init__(self) -> None:
        self.inbound: bc.BusinessCentralInbound | None = None
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                inbound = receiver.inbound
                assert inbound is not None
                query = parse_qs(urlsplit(self.path).query)
                if "validationToken" in query:
                    text = inbound.validation(query["validationToken"][0]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                status = inbound.notified(self.rfile.read(length))
                receiver.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}" + (
            "/erp/business-central/notifications"
        )
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Live:
    """The inbound side against the simulator, its receiver serving, its loop running when
    started."""

    simulator: BusinessCentralSimulator
    inbound: bc.BusinessCentralInbound
    receiver: Receiver
    pool: ConnectionPool[Any]
    company_id: str
    orders: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.inbound.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            assert not self.thread.is_alive()

    def order(self, customer_id: str) -> str:
        """Books a sales order for ``customer_id`` through the API, as revsync's order sync
        does; returns its CRM order id."""
        crm_order = f"801{uuid.uuid4().hex[:15]}"
        lines = [
            {"lineType": "Item", "lineObjectNumber": PRODUCT.sku, "quantity": 2,
             "unitPrice": 100, "taxPercent": 8}
        ]  # fmt: skip
        http = httpx.post(
            f"{self.simulator.api_url}/companies({self.company_id})/salesOrders",
            json={
                "externalDocumentNumber": crm_order,
                "customerId": customer_id,
                "currencyCode": "USD",
                "shortcutDimension1Code": "NA",
                "shipToAddressLine1": "1 Main St",
                "shipToCity": "Chicago",
                "shipToCountry": "US",
                "salesOrderLines": lines,
            },
            headers={"Authorization": f"Bearer {TokenSession(self.simulator).token()}"},
            timeout=10,
        )
        assert http.status_code == 201, http.text
        self.orders.append(crm_order)
        return crm_order

    def events(self) -> list[tuple[str, str]]:
        return events(self.pool, self.orders)


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def customer(control: ErpSandbox) -> Customer:
    seeded = Customer(
        f"C-BCI-{uuid.uuid4().hex[:8]}",
        "Acme Industrial",
        f"001{uuid.uuid4().hex[:15]}",
        "US01",
        CustomerStatus.ACTIVE,
        Decimal("1000000"),
        "USD",
        payment_terms="NET30",
    )
    control.seed_customers([seeded])
    return seeded


@pytest.fixture
def open_live(
    simulator: BusinessCentralSimulator, control: ErpSandbox, pool: ConnectionPool[Any],
    inbound_sink: InboundSink,
) -> Iterator[Callable[..., Live]]:  # fmt: skip
    """Opens the inbound side for US01 only, its configuration changed by the keywords given;
    its receiver serves at once, its loop runs once started."""
    opened: list[tuple[Live, BusinessCentralAdapter]] = []
    company_id = simulator.company("US01").id
    with pool.connection() as connection:
        for table in ("revsync_bc_positions", "revsync_bc_worked", "revsync_bc_subscriptions",
                      "revsync_bc_notifications", "revsync_bc_customer_credit"):  # fmt: skip
            connection.execute(
                sql.SQL("DELETE FROM {} WHERE company_id = %s").format(sql.Identifier(table)),
                (company_id,),
            )

    def open_(**overrides: Any) -> Live:
        receiver = Receiver()
        erp_config = BusinessCentralConfig(
            api_url=simulator.api_url,
            token_url=simulator.token_url,
            tenant_id=simulator.tenant_id,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
            companies={"US01": company_id},
            timeout_s=5.0,
        )
        adapter = BusinessCentralAdapter(erp_config)
        config = bc.BusinessCentralInboundConfig(
            **{
                "companies": {"US01": company_id},
                "notification_url": receiver.url,
                "client_state": SECRET,
                "reconcile_interval_s": NEVER,
                "page_size": 2,
                **overrides,
            }
        )
        inbound = bc.BusinessCentralInbound(
            bc.BusinessCentralHttpApi(adapter.wire, erp_config), pool, inbound_sink, config
        )
        receiver.inbound = inbound
        running = Live(simulator, inbound, receiver, pool, company_id)
        opened.append((running, adapter))
        return running

    yield open_
    for running, adapter in opened:
        running.close()
        running.receiver.close()
        adapter.close()


def subscribed(simulator: BusinessCentralSimulator, url: str) -> dict[str, dict[str, Any]]:
    """The simulator's live subscriptions to ``url``, by resource."""
    return {
        s.resource: {"id": s.id, "expires_at": s.expires_at}
        for s in simulator.subscriptions.current()
        if s.notification_url == url
    }


def test_documents_the_books_make_on_their_clock_are_events_once_each(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    """Invoices by notification and poll, shipments and payments by the poll, with notifications
    duplicated on the way: one event each."""
    live = open_live(reconcile_interval_s=1.0)
    live.simulator.settings.update({"duplicate_next_notifications": 10})
    live.start()
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    orders = [live.order(customer.id) for _ in range(3)]
    control.set_clock(invoice_delay_s=0.1, ship_delay_s=0.3, payment_delay_s=0.3)
    expected = sorted(
        (event, order)
        for order in orders
        for event in ("InvoicePosted", "ShipmentConfirmed", "PaymentReceived")
    )
    wait_until(lambda: sorted(set(live.events())) == expected)
    time.sleep(2.5)  # two more polls, and whatever notifications were still coming
    assert sorted(live.events()) == expected
    delivered = [
        notification["resource"]
        for delivery in live.simulator.notifier.deliveries
        if delivery.get("result") == "delivered"
        for notification in delivery["value"]
    ]
    assert len(delivered) > len(set(delivered)), "no notification came twice"


def renewed() -> float:
    return (
        REGISTRY.get_sample_value(
            "revsync_erp_inbound_bc_subscriptions_total", {"action": "renewed"}
        )
        or 0.0
    )


def test_a_subscription_renewed_before_expiry_outlives_its_first_expiry(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    """Subscriptions that last 6 s, renewed 3 s before: the same subscriptions are still
    there, and notifying, well past their first expiry."""
    renewals = renewed()
    live = open_live(renew_before_s=3.0)
    live.simulator.settings.update({"subscription_lifetime_s": 6.0})
    live.start()
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    first = subscribed(live.simulator, live.receiver.url)
    first_expiry = max(s["expires_at"] for s in first.values())
    wait_until(lambda: datetime.now(UTC) > first_expiry + timedelta(seconds=4), timeout_s=15)
    now = subscribed(live.simulator, live.receiver.url)
    assert {s["id"] for s in now.values()} == {s["id"] for s in first.values()}
    assert all(s["expires_at"] > first_expiry for s in now.values())
    assert renewed() - renewals >= 2
    order = live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1)
    wait_until(lambda: live.events() == [("InvoicePosted", order)])  # no poll: a notification
    with live.pool.connection() as connection:
        kept = connection.execute(
            "SELECT subscription_id, expiration FROM revsync_bc_subscriptions "
            "WHERE company_id = %s",
            (live.company_id,),
        ).fetchall()
    assert {row[0] for row in kept} == {s["id"] for s in first.values()}
    assert all(row[1] > first_expiry for row in kept)


def test_a_missed_notification_is_recovered_by_the_reconciliation_poll(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live()
    live.start()
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    time.sleep(0.5)  # the first poll, made on start, is over
    live.simulator.settings.update({"drop_next_notifications": 1})
    order = live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1)
    wait_until(lambda: live.simulator.settings.drop_next_notifications == 0)
    time.sleep(1.0)  # five more notification rounds: the invoice's is not coming
    assert live.events() == []
    assert live.inbound.reconcile() >= 1
    assert live.events() == [("InvoicePosted", order)]
    assert live.inbound.reconcile() == 0


def test_webhooks_bring_invoices_and_the_poll_shipments_and_payments(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live()
    live.start()
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    order = live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1, ship_delay_s=0.1, payment_delay_s=0.1)
    wait_until(lambda: control.stats().payments >= 1 and control.stats().shipments >= 1)
    wait_until(lambda: live.events() == [("InvoicePosted", order)])
    time.sleep(1.0)
    assert live.events() == [("InvoicePosted", order)]
    live.inbound.reconcile()
    assert sorted(live.events()) == sorted(
        [("InvoicePosted", order), ("ShipmentConfirmed", order), ("PaymentReceived", order)]
    )


def test_a_notification_without_the_client_state_is_refused_and_its_subscription_ends(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live()
    resource = f"api/v2.0/companies({live.company_id})/customers({customer.id})"
    forged = {"subscriptionId": "x", "clientState": "guess", "changeType": "updated",
              "resource": resource}  # fmt: skip
    answer = httpx.post(live.receiver.url, json={"value": [forged]}, timeout=5)
    assert answer.status_code == 401
    with live.pool.connection() as connection:
        queued = connection.execute(
            "SELECT count(*) FROM revsync_bc_notifications WHERE company_id = %s",
            (live.company_id,),
        ).fetchone()
    assert queued == (0,)
    # A subscription made with another secret (an older one, say): its first notification is
    # refused, so Business Central deletes it.
    token = TokenSession(live.simulator).token()
    stale = httpx.post(
        f"{live.simulator.api_url}/subscriptions",
        json={"notificationUrl": live.receiver.url, "clientState": "an older secret",
              "resource": f"/api/v2.0/companies({live.company_id})/customers"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )  # fmt: skip
    assert stale.status_code == 201, stale.text
    control.edit_customer(customer.id, credit_limit=Decimal("5000"))
    wait_until(lambda: not subscribed(live.simulator, live.receiver.url))
    assert 401 in live.receiver.answers
    assert live.inbound.keep_subscriptions() == 2  # made again, with revsync's secret


def test_business_central_down_leaves_the_positions_and_the_loop_waits_it_out(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live()
    live.inbound.reconcile()
    before = positions(live.pool, live.company_id)
    order = live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1, ship_delay_s=0.1)
    wait_until(lambda: control.stats().shipments >= 1)
    control.set_faults(error_rate=1.0)
    with pytest.raises(TransientError):
        live.inbound.reconcile()
    assert positions(live.pool, live.company_id) == before
    live.start()
    time.sleep(2.0)
    assert live.thread is not None
    assert live.thread.is_alive()
    assert live.events() == []
    control.set_faults(error_rate=0.0)
    wait_until(lambda: sorted(live.events()) == [("InvoicePosted", order),
                                                ("ShipmentConfirmed", order)])  # fmt: skip
    assert positions(live.pool, live.company_id)["salesShipments"] is not None


def test_a_customers_credit_change_in_business_central_is_its_two_events_once(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    """The customer was there before revsync: its first poll only learns its credit fields,
    so its first credit change is reported as one."""
    live = open_live()
    live.start()
    account = customer.crm_account_id
    assert account is not None
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    wait_until(lambda: credit_known(live, customer.id))
    assert events(live.pool, [account]) == []
    control.edit_customer(customer.id, credit_limit=Decimal("2500"))
    expected = [("CustomerMastered", account), ("CreditStatusChanged", account)]
    wait_until(lambda: events(live.pool, [account]) == expected)
    control.edit_customer(customer.id, payment_terms="NET45")  # no credit field
    expected.append(("CustomerMastered", account))
    wait_until(lambda: events(live.pool, [account]) == expected)
    live.inbound.reconcile()
    time.sleep(0.5)
    assert events(live.pool, [account]) == expected


def credit_known(live: Live, customer_id: str) -> bool:
    with live.pool.connection() as connection:
        row = connection.execute(
            "SELECT 1 FROM revsync_bc_customer_credit WHERE company_id = %s AND customer_id = %s",
            (live.company_id, customer_id),
        ).fetchone()
    return row is not None


def test_an_expired_token_is_replaced_and_the_call_made_again(
    open_live: Callable[..., Live], simulator: BusinessCentralSimulator, customer: Customer
) -> None:
    live = open_live()
    live.inbound.reconcile()
    answer = httpx.post(f"{simulator.url}/__sandbox/business-central/tokens/expire", timeout=5)
    assert answer.status_code == 200
    assert answer.json()["expired"] >= 1
    order = live.order(customer.id)
    ErpSandbox(simulator.url).set_clock(invoice_delay_s=0.1)
    wait_until(lambda: live.inbound.reconcile() >= 0 and bool(live.events()))
    assert live.events() == [("InvoicePosted", order)]


@pytest.mark.parametrize("fault", [{"throttle_rate": 1.0}, {"error_rate": 1.0}])
def test_throttled_or_unavailable_the_poll_keeps_its_positions(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer,
    fault: dict[str, float],
) -> None:  # fmt: skip
    live = open_live()
    live.inbound.reconcile()
    before = positions(live.pool, live.company_id)
    live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1)
    wait_until(lambda: control.stats().invoices >= 1)
    control.set_faults(**fault)
    with pytest.raises(TransientError):
        live.inbound.reconcile()
    assert positions(live.pool, live.company_id) == before
    assert live.events() == []


def test_a_subscription_whose_handshake_fails_is_refused_and_reported(
    open_live: Callable[..., Live],
) -> None:
    live = open_live()
    live.receiver.close()  # nobody answers the validation token
    with pytest.raises(bc.BusinessCentralRefused) as refused:
        live.inbound.keep_subscriptions()
    assert refused.value.status == 400
    assert not subscribed(live.simulator, live.receiver.url)


def test_a_receiver_business_central_cannot_reach_does_not_stop_the_poll(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live(reconcile_interval_s=0.5)
    live.receiver.close()  # every subscription's handshake fails
    live.start()
    order = live.order(customer.id)
    control.set_clock(invoice_delay_s=0.1)
    wait_until(lambda: live.events() == [("InvoicePosted", order)])
    assert not subscribed(live.simulator, live.receiver.url)


def test_a_collection_notification_brings_every_change_it_collapsed(
    open_live: Callable[..., Live], control: ErpSandbox, customer: Customer
) -> None:
    live = open_live()
    live.simulator.settings.update({"collapse_threshold": 1})
    live.start()
    wait_until(lambda: len(subscribed(live.simulator, live.receiver.url)) == 2)
    time.sleep(0.5)  # the first poll, made on start, is over
    orders = [live.order(customer.id) for _ in range(3)]
    control.set_clock(invoice_delay_s=0.1)
    wait_until(lambda: sorted(live.events()) == sorted(("InvoicePosted", o) for o in orders))
    collapsed = [
        notification
        for delivery in live.simulator.notifier.deliveries
        if delivery.get("result") == "delivered"
        for notification in delivery["value"]
        if notification["changeType"] == "collection"
    ]
    assert collapsed, "the invoices came one by one"
