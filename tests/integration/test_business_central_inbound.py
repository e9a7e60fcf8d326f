"""Business Central's changes as revsync's events on the live PostgreSQL: every document and
customer version written to revsync's outbox once, whether a notification, a repeated
notification or the reconciliation poll finds it; the poll's position safe across page
boundaries, equal timestamps, late commits and Business Central being down; the
subscriptions made, renewed before they expire and made again when gone."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from contract_fixtures import cli_for, drop_topics, governed, isolated_contracts
from erp_inbound import business_central as bc
from erp_inbound import sink
from erp_inbound.business_central_mapping import stamp
from erp_inbound.sink import InboundSink
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.errors import TransientError
from revsync.migrations import Tables, ensure
from revsync.runtime.outbox import SCHEMA as OUTBOX_SCHEMA
from revsync.security import POSTGRES_SERVICE
from revsync.settings import Settings

pytestmark = pytest.mark.integration

SECRET = SecretStr("client-state-for-tests")
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
    yield InboundSink(catalog, serde, bc.SYSTEM)
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
    """(event, aggregate id) of the erp_inbound outbox rows keyed by ``keys``."""
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT type, aggregateid FROM revsync_outbox WHERE service = 'erp_inbound' "
            "AND aggregateid = ANY(%s) ORDER BY seq",
            (keys,),
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


def test_an_unlinked_customer_and_an_order_revsync_did_not_place_write_nothing(
    api: FakeBusinessCentral, books: Books, inbound: bc.BusinessCentralInbound,
    pool: ConnectionPool[Any],
) -> None:  # fmt: skip
    customer = books.customer(T0)
    del api.links[customer["id"]]
    local = books.invoice(T0, customer)
    local["externalDocumentNumber"] = ""
    assert inbound.reconcile() == 0


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


def test_subscriptions_not_kept_while_business_central_is_down_are_kept_after(
    api: FakeBusinessCentral, pool: ConnectionPool[Any], inbound_sink: InboundSink
) -> None:
    inbound = make_inbound(api, pool, inbound_sink)
    api.down = True
    with pytest.raises(TransientError):
        inbound.keep_subscriptions()
    api.down = False
    assert inbound.keep_subscriptions() == 2
