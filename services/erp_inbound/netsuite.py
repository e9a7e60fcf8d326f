"""NetSuite's invoices, item fulfilments, customer payments and customer changes as revsync's
canonical events, read by SuiteQL on each record's last-modified time behind a durable
watermark, and, where the account deploys revsync's User Event script, as soon as a record is
saved (``afterSubmit`` posts which record changed; revsync reads it and writes its events).

NetSuite has no change feed: a poll asks for every record modified since the watermark, to
the second, in the account's time zone. What makes that lose nothing and double nothing:

- Each poll reads from ``overlap_s`` before the watermark, for a record whose last-modified
  time was set before a slower transaction committed it; what it reads again is known.
- Rows come ``ORDER BY lastmodifieddate, id`` (a unique order: paging by offset is stable
  only on one), a page at a time; after each page the window narrows to start at that page's
  last second (offset back to 0), so offsets stay small, far from the 100,000-row cap, and a
  record modified again while a poll pages moves out of the window's way instead of shifting
  one that was not read yet behind the offset. Only a page all of one second moves by offset.
- A page's events and the watermark's advance are written in one transaction: a crash between
  pages loses nothing and the next poll reads on from the last page written.
- Event ids are derived from the record and its version (:func:`erp_inbound.sink.event_id`),
  and every event published is kept in ``revsync_netsuite_published``: a row read again (the
  overlap, the last second of a page, an afterSubmit post and a poll both reading a record)
  writes nothing, and an invoice modified later (paid) is not published again. A customer's
  versions are dropped a day after a later one was published; its latest stays.
- Local times become UTC as the earliest moment they can name (the hour a clock turns back is
  read as its first pass): a watermark is never later than the truth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from erp_inbound.netsuite_mapping import (
    Account,
    Application,
    CreditState,
    CustomerVersion,
    Exposure,
    Kind,
    RowInvalid,
    ShippedLine,
    application,
    credit_moved,
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
from erp_inbound.sink import Change, InboundSink, event_id
from revsync.connectors.netsuite import literal
from revsync.errors import ErrorClass, RevsyncError, TransientError, described
from revsync.migrations import Tables
from revsync.security import POSTGRES_SERVICE

log = logging.getLogger(__name__)

EVENTS = Counter(
    "revsync_erp_inbound_netsuite_events_total",
    "NetSuite changes written as events, by record kind and by what found them: the poll or "
    "an afterSubmit post.",
    ["kind", "via"],
)
POLL_FAILURES = Counter(
    "revsync_erp_inbound_netsuite_poll_failures_total",
    "Polls of a record kind that failed (NetSuite or the database away, throttling); its "
    "watermark stays where its last written page left it.",
    ["kind"],
)
WATERMARK = Gauge(
    "revsync_erp_inbound_netsuite_watermark_timestamp_seconds",
    "The last-modified time the poll has read up to, by record kind.",
    ["kind"],
)

SOURCE = "netsuite"
QUERY_PATH = "/services/rest/query/v1/suiteql"
MAX_PAGE_SIZE = 1000
"""The most rows SuiteQL answers in one page."""
ROW_CAP = 100_000
"""How far into a query's rows NetSuite pages: ``offset + limit`` beyond it is refused."""
SIGNATURE_PREFIX = "sha256="
SIGNATURE_HEADER = "X-Revsync-Signature"
"""The header the afterSubmit script signs its body in: ``sha256=`` and the hex HMAC-SHA256
of the body's bytes under the shared secret."""
MAX_BACKOFF_S = 300.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
"""What revsync puts into a query as a record's internal id (NetSuite's are integers; the
simulator's are words): anything else is refused before it reaches a query."""

SCHEMA = """
-- How far revsync has read each kind of NetSuite record: the earliest moment the last page's
-- last last-modified time can name. A poll reads from overlap_s before it.
CREATE TABLE IF NOT EXISTS revsync_netsuite_watermarks (
    account     text        NOT NULL,
    kind        text        NOT NULL,
    watermark   timestamptz NOT NULL,
    advanced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, kind)
);
-- Every event revsync made of a NetSuite record (or refused, with the version it refused), so
-- a record read again writes nothing: the overlap, a page's last second, an afterSubmit post.
CREATE TABLE IF NOT EXISTS revsync_netsuite_published (
    event_id     uuid        PRIMARY KEY,
    account      text        NOT NULL,
    kind         text        NOT NULL,
    record_id    text        NOT NULL,
    modified     text        NOT NULL,
    refused      boolean     NOT NULL DEFAULT false,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS revsync_netsuite_published_by_record
    ON revsync_netsuite_published (account, kind, record_id);
-- Customer versions, forgotten once superseded (a document's row is kept: it is made once).
CREATE INDEX IF NOT EXISTS revsync_netsuite_published_versions
    ON revsync_netsuite_published (account, published_at) WHERE kind = 'customer';
-- The credit revsync last published of each customer: CreditStatusChanged is made only when
-- a new version's credit limit or hold differs from it.
CREATE TABLE IF NOT EXISTS revsync_netsuite_customer_credit (
    account      text           NOT NULL,
    customer_id  text           NOT NULL,
    version      text           NOT NULL,
    changed_at   timestamptz    NOT NULL,
    credit_limit numeric(18, 4) NOT NULL,
    status       text           NOT NULL,
    PRIMARY KEY (account, customer_id)
);
"""
TABLES = (Tables(SCHEMA, writers=(POSTGRES_SERVICE,)),)


class SuiteQL(Protocol):
    """What the poller needs of a NetSuite client (the ERP adapter,
    :class:`revsync.connectors.netsuite.NetSuiteAdapter`): one page of a SuiteQL query, as
    NetSuite answers it (``items``, ``hasMore``, ``totalResults``...), failures already in
    revsync's taxonomy (throttling and outages as :class:`TransientError`)."""

    def suiteql(self, query: str, *, limit: int, offset: int) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class NetSuiteInboundConfig:
    """One NetSuite account's inbound settings."""

    account_id: str
    """The account (``1234567`` or ``1234567_SB1``): part of every event id."""
    subsidiaries: Mapping[str, str]
    """Subsidiary internal id by legal entity (``{"US01": "1"}``): only these entities'
    records are published."""
    timezone: str
    """The account's time zone (``America/Los_Angeles``): the zone SuiteQL's ``TO_CHAR`` and
    ``TO_TIMESTAMP`` speak."""
    page_size: int = MAX_PAGE_SIZE
    """Rows per SuiteQL page, at most 1000."""
    overlap_s: float = 300.0
    """How far before the watermark each poll reads again: longer than any transaction of
    the account takes to commit after setting a record's last-modified time."""
    poll_interval_s: float = 30.0
    after_submit_secret: SecretStr | None = None
    """The secret the afterSubmit script signs with; None refuses every post."""
    first_poll_from: datetime = EPOCH
    """Where the first poll of a kind reads from, before it has a watermark."""
    row_cap: int = ROW_CAP
    """How far into a query's rows NetSuite pages (``offset + limit``): 100,000."""
    locations: Mapping[str, str] = field(default_factory=dict)
    """Location internal id by sales region (``{"NA": "7"}``), as the adapter books orders
    with: an order's location is its region (a location not named is a region itself)."""
    regions: Mapping[str, str] = field(default_factory=dict)
    """Sales region by legal entity (``{"US01": "NA"}``), for a sales order that names no
    location."""

    def __post_init__(self) -> None:
        if not self.account_id.strip():
            raise ValueError("netsuite inbound: account_id is empty")
        if not self.subsidiaries:
            raise ValueError("netsuite inbound: subsidiaries names no legal entity")
        for entity, subsidiary in self.subsidiaries.items():
            if not ID.fullmatch(subsidiary):
                raise ValueError(
                    f"netsuite inbound: subsidiaries[{entity}] is not a subsidiary internal id"
                )
        if len(set(self.subsidiaries.values())) != len(self.subsidiaries):
            raise ValueError("netsuite inbound: subsidiaries maps two legal entities to one id")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"netsuite inbound: timezone {self.timezone!r} is not an IANA time zone"
            ) from None
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(
                f"netsuite inbound: page_size must be 1 to {MAX_PAGE_SIZE}, got {self.page_size}"
            )
        if self.overlap_s < 0:
            raise ValueError(f"netsuite inbound: overlap_s must be >= 0, got {self.overlap_s}")
        if self.poll_interval_s <= 0:
            raise ValueError(
                f"netsuite inbound: poll_interval_s must be positive, got {self.poll_interval_s}"
            )
        if self.row_cap < self.page_size:
            raise ValueError(
                f"netsuite inbound: row_cap {self.row_cap} is below page_size {self.page_size}"
            )
        if self.first_poll_from.tzinfo is None:
            raise ValueError("netsuite inbound: first_poll_from needs its UTC offset")

    @property
    def account(self) -> Account:
        return Account(
            account_id=self.account_id,
            entities={subsidiary: entity for entity, subsidiary in self.subsidiaries.items()},
            zone=ZoneInfo(self.timezone),
            regions=dict(self.regions),
            locations={location: region for region, location in self.locations.items()},
        )


class AfterSubmitRefused(RevsyncError):
    """An afterSubmit post revsync does not act on."""

    error_class = ErrorClass.VALIDATION


class SignatureInvalid(AfterSubmitRefused):
    """The post is not signed with the shared secret (or no secret is configured): its body
    is not read."""


class NoticeInvalid(AfterSubmitRefused):
    """A signed post whose body is not ``{recordType, id, type, account}`` of a record revsync
    reads in the configured account; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"netsuite afterSubmit: {field}: {reason}")
        self.field = field


SUPERSEDED_KEPT = timedelta(days=1)
"""How long the ledger keeps a customer version after a later one of the customer was
published (NetSuite answers only a record's current version, so a superseded one is read
again only by a poll or post that was already under way)."""


class WindowTooDense(TransientError):
    """More records share one second than NetSuite pages through (100,000): the poll cannot
    move past that second. Nothing is skipped; the poll stops there and tries again."""


# --- the queries ------------------------------------------------------------------------------

MODIFIED = "TO_CHAR({t}.lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS modified"
CREATED = "TO_CHAR({t}.createddate, 'YYYY-MM-DD HH24:MI:SS') AS created"
SINCE = "{t}.lastmodifieddate >= TO_TIMESTAMP({bound}, 'YYYY-MM-DD HH24:MI:SS')"
DOCUMENT_COLUMNS = (
    "t.id, t.tranid, t.entity, t.subsidiary, cur.symbol AS currency, "
    f"{MODIFIED.format(t='t')}, {CREATED.format(t='t')}"
)
HEADERS = {
    Kind.INVOICE: (
        f"SELECT {DOCUMENT_COLUMNS}, "  # noqa: S608 - fixed text
        "TO_CHAR(t.trandate, 'YYYY-MM-DD') AS trandate, "
        "TO_CHAR(t.duedate, 'YYYY-MM-DD') AS duedate, t.foreigntotal AS total, "
        "t.foreignamountremaining AS remaining, t.subtotal, t.taxtotal, "
        "BUILTIN.DF(t.terms) AS terms "
        "FROM transaction t LEFT JOIN currency cur ON cur.id = t.currency "
        "WHERE t.type = 'CustInvc' AND {where}"
    ),
    Kind.FULFILLMENT: (
        f"SELECT {DOCUMENT_COLUMNS}, t.status AS shipstatus, "  # noqa: S608 - fixed text
        "BUILTIN.DF(t.shipcarrier) AS carrier, t.trackingnumberlist AS trackingnumber, "
        "t.custbody_revsync_tracking_url AS trackingurl, "
        "CASE WHEN t.custbody_revsync_completeness = 'partial' THEN 'T' ELSE 'F' END "
        "AS partial, "
        "BUILTIN.DF(t.location) AS location "
        "FROM transaction t LEFT JOIN currency cur ON cur.id = t.currency "
        "WHERE t.type = 'ItemShip' AND {where}"
    ),
    Kind.PAYMENT: (
        f"SELECT {DOCUMENT_COLUMNS}, t.foreigntotal AS total, "  # noqa: S608 - fixed text
        "BUILTIN.DF(t.paymentmethod) AS paymentmethod "
        "FROM transaction t LEFT JOIN currency cur ON cur.id = t.currency "
        "WHERE t.type = 'CustPymt' AND {where}"
    ),
    Kind.CUSTOMER: (
        "SELECT t.id, t.entityid, t.externalid, t.companyname, t.subsidiary, "  # noqa: S608
        "cur.symbol AS currency, t.creditlimit, BUILTIN.DF(t.terms) AS terms, "
        "t.creditholdoverride, t.isinactive, t.vatregnumber, t.custentity_revsync_duns, "
        "t.custentity_revsync_blocks, "
        f"{MODIFIED.format(t='t')} "
        "FROM customer t LEFT JOIN currency cur ON cur.id = t.currency WHERE {where}"
    ),
}
"""Each kind's records, one row per record; ``{where}`` is the window or the record."""
ORDER = " ORDER BY t.lastmodifieddate, t.id"
SALES_ORDERS = (
    "SELECT DISTINCT tl.transaction AS id, so.id AS so_id, so.tranid AS so_tranid, "
    "so.externalid AS so_externalid, so.memo AS so_memo, so.location AS so_location, "
    "c.externalid AS crm_account_id "
    "FROM transactionline tl JOIN transaction so ON so.id = tl.createdfrom "
    "LEFT JOIN customer c ON c.id = so.entity "
    "WHERE so.type = 'SalesOrd' AND tl.transaction IN ({ids}) ORDER BY tl.transaction"
)
"""The sales order each document was created from: its external id is the CRM order id."""
FULFILLED_LINES = (
    "SELECT tl.transaction AS id, tl.linesequencenumber AS line, i.itemid AS sku, "
    "tl.quantity FROM transactionline tl JOIN item i ON i.id = tl.item "
    "WHERE tl.transaction IN ({ids}) ORDER BY tl.transaction, tl.linesequencenumber"
)
APPLICATIONS = (
    "SELECT DISTINCT tl.transaction AS id, inv.id AS invoice_id, inv.tranid AS invoice_tranid, "
    "ABS(tl.netamount) AS applied, inv.foreigntotal AS invoice_total, "
    "inv.foreignamountremaining AS invoice_remaining, so.id AS so_id, so.tranid AS so_tranid, "
    "so.externalid AS so_externalid, so.memo AS so_memo, "
    "so.location AS so_location, c.externalid AS crm_account_id "
    "FROM transactionline tl JOIN transaction inv ON inv.id = tl.createdfrom "
    "LEFT JOIN transactionline il ON il.transaction = inv.id "
    "LEFT JOIN transaction so ON so.id = il.createdfrom AND so.type = 'SalesOrd' "
    "LEFT JOIN customer c ON c.id = so.entity "
    "WHERE inv.type = 'CustInvc' AND so.id IS NOT NULL AND tl.transaction IN ({ids}) "
    "ORDER BY tl.transaction, inv.id"
)
"""Each invoice a payment is applied to, with the amount applied and that invoice's order."""
EXPOSURES = (
    "SELECT t.entity AS id, SUM(CASE WHEN t.type = 'SalesOrd' THEN t.foreigntotal "
    "ELSE t.foreignamountremaining END) AS exposure FROM transaction t "
    "WHERE t.entity IN ({ids}) AND ((t.type = 'SalesOrd' AND t.status = 'B') "
    "OR (t.type = 'CustInvc' AND t.status = 'A')) GROUP BY t.entity ORDER BY t.entity"
)
"""A customer's exposure: its sales orders pending fulfilment and its open invoices."""


def id_list(ids: Iterable[str]) -> str:
    return ", ".join(literal(value) for value in ids)


def window_query(kind: Kind, bound: str, subsidiaries: Iterable[str]) -> str:
    """The records of ``kind`` of the subsidiaries modified at or after local time ``bound``,
    in a unique order."""
    window = SINCE.format(t="t", bound=literal(bound))
    where = f"{window} AND t.subsidiary IN ({id_list(sorted(subsidiaries))})"
    return HEADERS[kind].format(where=where) + ORDER


def record_query(kind: Kind, record_id: str) -> str:
    """The one record of ``kind`` with internal id ``record_id``."""
    return HEADERS[kind].format(where=f"t.id = {literal(record_id)}") + ORDER


# --- reading ----------------------------------------------------------------------------------


@dataclass
class Read:
    """One page of one kind's records, with what their events need from other tables."""

    kind: Kind
    rows: list[dict[str, str]]
    orders: dict[str, dict[str, str]] = field(default_factory=dict)
    lines: dict[str, list[ShippedLine]] = field(default_factory=dict)
    applications: dict[str, list[tuple[dict[str, str], Application]]] = field(default_factory=dict)
    broken: dict[str, RowInvalid] = field(default_factory=dict)
    """Rows whose detail could not be read, by record id."""
    exposures: dict[str, Exposure] = field(default_factory=dict)
    """Of customers whose credit moved since what was published of them: their exposure."""


@dataclass(frozen=True)
class Made:
    """A change made of one row, with the row's version (its last-modified text)."""

    change: Change
    record_id: str
    modified: str


class NetSuiteInbound:
    """Reads one NetSuite account's changes into revsync's outbox (through ``sink``),
    with its watermarks in revsync's database (``pool``)."""

    def __init__(
        self,
        client: SuiteQL,
        pool: ConnectionPool[Any],
        sink: InboundSink,
        config: NetSuiteInboundConfig,
    ) -> None:
        self.client = client
        self.pool = pool
        self.sink = sink
        self.config = config
        self.account = config.account

    # --- polling ------------------------------------------------------------------------------

    def poll(self) -> int:
        """One pass over every kind (invoices, fulfilments, payments, customers): the events
        written. A kind that fails does not stop the others; the first failure is raised
        after them, each failed kind's watermark where its last written page left it."""
        written = 0
        failure: Exception | None = None
        for kind in Kind:
            try:
                written += self.poll_kind(kind)
            except Exception as error:  # raised after the other kinds
                POLL_FAILURES.labels(kind.value).inc()
                log.warning("netsuite %s: polling failed: %s", kind, described(error))
                failure = failure or error
        if failure is not None:
            raise failure
        self.forget_versions()
        return written

    def forget_versions(self) -> int:
        """Drops from the ledger the customer versions superseded more than
        :data:`SUPERSEDED_KEPT` ago: how many went. Each customer's latest version stays, so
        a poll reading it again within its overlap writes nothing; a document's row stays
        too, as each is published once whatever changes later."""
        with self.pool.connection() as connection:
            deleted: int = connection.execute(
                "DELETE FROM revsync_netsuite_published old WHERE account = %s "
                "AND kind = 'customer' AND published_at < now() - %s AND EXISTS ("
                "SELECT 1 FROM revsync_netsuite_published later WHERE later.account = "
                "old.account AND later.kind = old.kind AND later.record_id = old.record_id "
                "AND later.published_at > old.published_at)",
                (self.config.account_id, SUPERSEDED_KEPT),
            ).rowcount
        return deleted

    def poll_kind(self, kind: Kind) -> int:
        """Every record of ``kind`` modified since the watermark (less the overlap), a page
        at a time, each page's events and the watermark's advance in one transaction."""
        zone = self.account.zone
        page_size = self.config.page_size
        start = since(self.watermark(kind), self.config.overlap_s, self.config.first_poll_from)
        bound = earliest_instant(query_bound(start, zone), zone)
        offset = 0
        written = 0
        while True:
            if offset + page_size > self.config.row_cap:
                raise WindowTooDense(
                    f"netsuite {kind}: more than {self.config.row_cap} records modified in "
                    f"the second from {query_bound(bound, zone)}"
                )
            query = window_query(kind, query_bound(bound, zone), self.account.entities)
            answer = self.client.suiteql(query, limit=page_size, offset=offset)
            rows = _items(answer)
            if not rows:
                return written
            last = earliest_instant(_modified(kind, rows[-1]), zone)
            unread = self.unpublished(kind, rows)
            written += self.write(self.details(kind, unread), advance_to=last)
            if len(rows) < page_size or not answer.get("hasMore", True):
                return written
            if last > bound:
                bound, offset = last, 0
            else:
                offset += len(rows)

    def unpublished(self, kind: Kind, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        """The rows not published in this very version: what a poll reads again (the
        overlap, a page's last second) needs no lines, orders or applications read again."""
        with self.pool.connection() as connection:
            published = set(
                connection.execute(
                    "SELECT record_id, modified FROM revsync_netsuite_published "
                    "WHERE account = %s AND kind = %s AND NOT refused AND record_id = ANY(%s)",
                    (self.config.account_id, kind.value, [row.get("id") for row in rows]),
                ).fetchall()
            )
        return [row for row in rows if (row.get("id"), row.get("modified")) not in published]

    def watermark(self, kind: Kind) -> datetime | None:
        with self.pool.connection() as connection:
            row = connection.execute(
                "SELECT watermark FROM revsync_netsuite_watermarks "
                "WHERE account = %s AND kind = %s",
                (self.config.account_id, kind.value),
            ).fetchone()
        return None if row is None else row[0]

    # --- afterSubmit ---------------------------------------------------------------------------

    def after_submit(self, body: bytes, signature: str | None) -> int:
        """A post of revsync's afterSubmit script: checks its signature, reads the record it
        names and writes that record's events (none for a deleted record, or one already
        published). The watermark does not move: the poll still reads the record, as a
        no-op."""
        self.verify(body, signature)
        kind, record_id, event = self.notice(body)
        if event == "delete":
            return 0
        answer = self.client.suiteql(record_query(kind, record_id), limit=1, offset=0)
        rows = _items(answer)
        if not rows:
            return 0
        return self.write(self.details(kind, rows), advance_to=None)

    def verify(self, body: bytes, signature: str | None) -> None:
        secret = self.config.after_submit_secret
        if secret is None:
            raise SignatureInvalid("netsuite afterSubmit: no secret is configured; posts refused")
        if signature is None:
            raise SignatureInvalid(f"netsuite afterSubmit: no {SIGNATURE_HEADER} header")
        given = signature.strip()
        if given.lower().startswith(SIGNATURE_PREFIX):
            given = given[len(SIGNATURE_PREFIX) :]
        expected = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            raise SignatureInvalid("netsuite afterSubmit: the signature does not match the body")

    def notice(self, body: bytes) -> tuple[Kind, str, str]:
        """The record kind, its internal id and the event (``create``, ``edit``...)."""
        try:
            notice = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise NoticeInvalid("body", "not JSON") from None
        if not isinstance(notice, dict):
            raise NoticeInvalid("body", "not a JSON object")
        values = {}
        for name in ("recordType", "id", "type", "account"):
            value = notice.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or not value:
                raise NoticeInvalid(name, "missing or not text")
            values[name] = value
        if values["account"].replace("-", "_").upper() != self.config.account_id.upper():
            raise NoticeInvalid("account", "not the configured account")
        kind = Kind.of_record_type(values["recordType"])
        if kind is None:
            raise NoticeInvalid("recordType", f"not one of {', '.join(Kind)}")
        if not ID.fullmatch(values["id"]):
            raise NoticeInvalid("id", "not an internal id")
        return kind, values["id"], values["type"].lower()

    # --- one page -----------------------------------------------------------------------------

    def details(self, kind: Kind, rows: list[dict[str, str]]) -> Read:
        """What the rows' events need beyond their own columns: the sales orders documents
        were created from, a fulfilment's lines, a payment's applications, the exposure of a
        customer whose credit moved. All read before the page's transaction, which then
        holds no lock while NetSuite answers."""
        read = Read(kind, rows)
        ids = [row["id"] for row in rows if "id" in row]
        if kind is Kind.CUSTOMER:
            customers = self.versions(rows)
            if customers:
                with self.pool.connection() as connection, connection.cursor() as cursor:
                    before = self.credit(cursor, list(customers))
                read.exposures = self.exposures(_moved(customers, before))
            return read
        if not ids:
            return read
        if kind in (Kind.INVOICE, Kind.FULFILLMENT):
            for row in self.query_all(SALES_ORDERS.format(ids=id_list(ids))):
                read.orders[row["id"]] = row
        if kind is Kind.FULFILLMENT:
            for row in self.query_all(FULFILLED_LINES.format(ids=id_list(ids))):
                try:
                    read.lines.setdefault(row["id"], []).append(shipped_line(row))
                except RowInvalid as error:
                    read.broken[row["id"]] = error
        if kind is Kind.PAYMENT:
            for row in self.query_all(APPLICATIONS.format(ids=id_list(ids))):
                try:
                    read.applications.setdefault(row["id"], []).append((row, application(row)))
                except RowInvalid as error:
                    read.broken[row["id"]] = error
        return read

    def query_all(self, query: str) -> list[dict[str, str]]:
        """Every row of a detail query (a page's records' lines, orders or applications), in
        pages of the configured size."""
        rows: list[dict[str, str]] = []
        limit = self.config.page_size
        while True:
            if len(rows) + limit > self.config.row_cap:
                raise WindowTooDense(
                    f"netsuite: a page's details pass {self.config.row_cap} rows; lower page_size"
                )
            answer = self.client.suiteql(query, limit=limit, offset=len(rows))
            items = _items(answer)
            rows.extend(items)
            if len(items) < limit or not answer.get("hasMore", True):
                return rows

    def write(self, read: Read, advance_to: datetime | None) -> int:
        """The events of one page's records not published yet, and the watermark's advance,
        in one transaction; a kind's pages are written one at a time (a transaction lock per
        account and kind), so a poll and an afterSubmit post never both publish a record."""
        read_at = datetime.now(UTC)
        account = self.config.account_id
        with self.pool.connection() as connection, connection.transaction():
            cursor = connection.cursor()
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"revsync.netsuite.{account}.{read.kind.value}",),
            )
            made, refused, versions = self.changes(cursor, read, read_at)
            known = self.known(cursor, [m.change.id for m in made + [r for r, _ in refused]])
            fresh = [m for m in made if _new(known.get(m.change.id), m.modified)]
            refused = [(m, why) for m, why in refused if _new(known.get(m.change.id), m.modified)]
            written = self.sink.write(cursor, [m.change for m in fresh])
            sink_refused = {change.id for change, _ in written.refused}
            for item, reason in refused:
                self.refuse(cursor, item, reason)
            self.record(
                cursor,
                read.kind,
                [(m, m.change.id in sink_refused) for m in fresh] + [(m, True) for m, _ in refused],
            )
            published = {m.record_id for m in fresh if m.change.id not in sink_refused}
            self.remember_credit(
                cursor, [version for key, version in versions.items() if key in published]
            )
            if advance_to is not None:
                cursor.execute(
                    "INSERT INTO revsync_netsuite_watermarks (account, kind, watermark) "
                    "VALUES (%s, %s, %s) ON CONFLICT (account, kind) DO UPDATE SET "
                    "watermark = greatest(revsync_netsuite_watermarks.watermark, "
                    "excluded.watermark), advanced_at = now()",
                    (account, read.kind.value, advance_to),
                )
        EVENTS.labels(read.kind.value, "after_submit" if advance_to is None else "poll").inc(
            written.published
        )
        if advance_to is not None:
            WATERMARK.labels(read.kind.value).set(advance_to.timestamp())
        return written.published

    def changes(
        self, cursor: psycopg.Cursor[Any], read: Read, read_at: datetime
    ) -> tuple[list[Made], list[tuple[Made, str]], dict[str, CustomerVersion]]:
        """The changes of a page's rows; the rows that cannot be read, each as a placeholder
        change with the reason; and the customers' versions the changes are of."""
        made: list[Made] = []
        refused: list[tuple[Made, str]] = []
        customers: dict[str, CustomerVersion] = {}
        for row in read.rows:
            record_id = row.get("id", "")
            modified = row.get("modified", "")
            try:
                if record_id in read.broken:
                    raise read.broken[record_id]
                if read.kind is Kind.CUSTOMER:
                    customer = customer_version(row, self.account)
                    if customer is not None:
                        customers[customer.customer_id] = customer
                    continue
                for change in self.document_changes(read, row, read_at):
                    made.append(Made(change, record_id, modified))
            except RowInvalid as error:
                refused.append((self.unreadable(read.kind, row, read_at), str(error)))
        newer: dict[str, CustomerVersion] = {}
        if customers:
            customer_made, newer = self.customer_changes(cursor, customers, read, read_at)
            made.extend(customer_made)
        return made, refused, newer

    def document_changes(self, read: Read, row: dict[str, str], read_at: datetime) -> list[Change]:
        order = read.orders.get(row["id"], {})
        if read.kind is Kind.INVOICE:
            return invoice_changes({**row, **_order_columns(order)}, self.account, read_at)
        if read.kind is Kind.FULFILLMENT:
            lines = read.lines.get(row["id"], [])
            return fulfillment_changes(
                {**row, **_order_columns(order)}, lines, self.account, read_at
            )
        applications = [
            ({**row, **_order_columns(values)}, applied)
            for values, applied in read.applications.get(row["id"], [])
        ]
        return payment_changes(row, applications, self.account, read_at)

    def customer_changes(
        self,
        cursor: psycopg.Cursor[Any],
        customers: Mapping[str, CustomerVersion],
        read: Read,
        read_at: datetime,
    ) -> tuple[list[Made], dict[str, CustomerVersion]]:
        """The events of customers' new versions (not older than what was published of
        them: a page read before an afterSubmit post wrote a later version), and those
        versions. A credit that moved needs the customer's exposure: read with the page, or
        (when another writer published a version since) now."""
        before = self.credit(cursor, list(customers))
        newer = {
            customer_id: customer
            for customer_id, customer in customers.items()
            if _newer(customer, before.get(customer_id))
        }
        moved = _moved(customers, before)
        exposures = {
            **read.exposures,
            **self.exposures([c for c in moved if c not in read.exposures]),
        }
        made = []
        for customer_id, customer in newer.items():
            for change in customer_changes(
                customer,
                _state(before.get(customer_id)),
                exposures.get(customer_id),
                self.account,
                read_at,
            ):
                made.append(Made(change, customer_id, customer.version))
        return made, newer

    def versions(self, rows: Iterable[Mapping[str, str]]) -> dict[str, CustomerVersion]:
        """The customer versions of a page's rows that can be read (the others are refused
        when the page is written)."""
        customers: dict[str, CustomerVersion] = {}
        for row in rows:
            try:
                customer = customer_version(row, self.account)
            except RowInvalid:
                continue
            if customer is not None:
                customers[customer.customer_id] = customer
        return customers

    def exposures(self, customer_ids: Sequence[str]) -> dict[str, Exposure]:
        """Each customer's exposure, read from NetSuite (nil for one with nothing open)."""
        if not customer_ids:
            return {}
        owed = {
            row["id"]: row.get("exposure") or "0"
            for row in self.query_all(EXPOSURES.format(ids=id_list(customer_ids)))
        }
        return {customer_id: Exposure(owed.get(customer_id, "0")) for customer_id in customer_ids}

    def credit(
        self, cursor: psycopg.Cursor[Any], customer_ids: Sequence[str]
    ) -> dict[str, tuple[CreditState, datetime]]:
        cursor.execute(
            "SELECT customer_id, version, credit_limit, status, changed_at "
            "FROM revsync_netsuite_customer_credit WHERE account = %s AND customer_id = ANY(%s)",
            (self.config.account_id, list(customer_ids)),
        )
        return {
            customer_id: (CreditState(version, format(limit, "f"), status), changed_at)
            for customer_id, version, limit, status, changed_at in cursor.fetchall()
        }

    def remember_credit(
        self, cursor: psycopg.Cursor[Any], versions: Sequence[CustomerVersion]
    ) -> None:
        """Keeps the credit of the customers' versions just published."""
        if not versions:
            return
        cursor.executemany(
            "INSERT INTO revsync_netsuite_customer_credit (account, customer_id, version, "
            "changed_at, credit_limit, status) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (account, customer_id) DO UPDATE SET version = excluded.version, "
            "changed_at = excluded.changed_at, credit_limit = excluded.credit_limit, "
            "status = excluded.status",
            [
                (
                    self.config.account_id,
                    customer.customer_id,
                    customer.version,
                    customer.changed_at,
                    customer.credit.credit_limit,
                    customer.credit.status,
                )
                for customer in versions
            ],
        )

    def unreadable(self, kind: Kind, row: Mapping[str, str], read_at: datetime) -> Made:
        record_id = row.get("id", "?")
        modified = row.get("modified", "")
        version = "" if kind is not Kind.CUSTOMER else modified
        return Made(
            Change(
                id=event_id(SOURCE, self.config.account_id, kind.value, record_id, "unreadable",
                            version),
                type=_EVENT_TYPES[kind],
                aggregateid=row.get("so_externalid") or row.get("externalid") or "",
                payload={"netsuite": dict(row)},
                read_at=read_at,
            ),
            record_id,
            modified,
        )  # fmt: skip

    def known(self, cursor: psycopg.Cursor[Any], ids: list[Any]) -> dict[Any, tuple[bool, str]]:
        """Of ``ids``, those already made: whether refused, and the version refused."""
        if not ids:
            return {}
        cursor.execute(
            "SELECT event_id, refused, modified FROM revsync_netsuite_published "
            "WHERE event_id = ANY(%s)",
            (ids,),
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}

    def refuse(self, cursor: psycopg.Cursor[Any], made: Made, reason: str) -> None:
        log.warning("netsuite: %s %s refused: %s", made.change.type, made.record_id, reason)
        cursor.execute(
            "INSERT INTO revsync_erp_inbound_refusals (event_id, source, type, aggregateid, "
            "reason, payload) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (made.change.id, self.sink.source, made.change.type, made.change.aggregateid,
             reason, Jsonb(made.change.payload)),
        )  # fmt: skip

    def record(
        self, cursor: psycopg.Cursor[Any], kind: Kind, outcomes: list[tuple[Made, bool]]
    ) -> None:
        if not outcomes:
            return
        cursor.executemany(
            "INSERT INTO revsync_netsuite_published (event_id, account, kind, record_id, "
            "modified, refused) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO "
            "UPDATE SET modified = excluded.modified, refused = excluded.refused, "
            "published_at = now()",
            [
                (m.change.id, self.config.account_id, kind.value, m.record_id, m.modified, bad)
                for m, bad in outcomes
            ],
        )

    # --- running ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Polls every ``poll_interval_s`` until ``stop`` is set. A failed poll (NetSuite or
        the database away, throttling) is logged and tried again after a back-off that
        doubles up to five minutes (or the Retry-After NetSuite asked for); its watermarks
        stay where its last written page left them."""
        failures = 0
        while not stop.is_set():
            try:
                self.poll()
            except Exception as error:  # every failure is waited out
                failures += 1
                wait = backoff_s(self.config.poll_interval_s, failures, error)
                log.warning(
                    "netsuite: poll failed (%d in a row), next in %.1f s: %s",
                    failures,
                    wait,
                    described(error),
                )
            else:
                failures = 0
                wait = self.config.poll_interval_s
            stop.wait(wait)


def backoff_s(interval_s: float, failures: int, error: BaseException) -> float:
    """How long to wait after ``failures`` failed polls in a row: the interval, doubled for
    each failure after the first up to :data:`MAX_BACKOFF_S`, at least what NetSuite's
    Retry-After asked."""
    wait: float = min(interval_s * 2.0 ** (failures - 1), max(MAX_BACKOFF_S, interval_s))
    if isinstance(error, TransientError) and error.retry_after is not None:
        wait = max(wait, error.retry_after)
    return wait


_EVENT_TYPES = {
    Kind.INVOICE: "InvoicePosted",
    Kind.FULFILLMENT: "ShipmentConfirmed",
    Kind.PAYMENT: "PaymentReceived",
    Kind.CUSTOMER: "CustomerMastered",
}


def _items(answer: Mapping[str, Any]) -> list[dict[str, str]]:
    items = answer.get("items")
    if not isinstance(items, list):
        raise TransientError("netsuite: a SuiteQL answer without its items")
    return [
        {key: value for key, value in item.items() if key != "links"}
        for item in items
        if isinstance(item, dict)
    ]


def _modified(kind: Kind, row: Mapping[str, str]) -> str:
    modified = row.get("modified")
    if not modified:
        raise TransientError(f"netsuite {kind}: a SuiteQL row without its last-modified time")
    return modified


def _order_columns(order: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in order.items() if key != "id"}


def _new(known: tuple[bool, str] | None, modified: str) -> bool:
    """Whether a change must be written: never made, or refused in an earlier version."""
    if known is None:
        return True
    refused, refused_version = known
    return refused and refused_version != modified


def _moved(
    customers: Mapping[str, CustomerVersion], before: Mapping[str, tuple[CreditState, datetime]]
) -> list[str]:
    """The customers whose version is newer than what was published of them and whose
    credit moved with it."""
    return [
        customer_id
        for customer_id, customer in customers.items()
        if _newer(customer, before.get(customer_id))
        and credit_moved(_state(before.get(customer_id)), customer.credit)
    ]


def _state(before: tuple[CreditState, datetime] | None) -> CreditState | None:
    return None if before is None else before[0]


def _newer(customer: CustomerVersion, before: tuple[CreditState, datetime] | None) -> bool:
    """Whether ``customer`` is newer than what was published of it: another version, not
    modified before it (a poll's page read before an afterSubmit post wrote a later one). In
    the hour a clock turns back, an edit in its second pass after one in its first reads as
    older (both are read as the first pass) and waits for the customer's next change."""
    if before is None:
        return True
    state, changed_at = before
    return state.version != customer.version and customer.changed_at >= changed_at
