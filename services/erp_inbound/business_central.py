"""Business Central's changes as revsync's canonical events: webhooks for what Business Central
notifies (customers, sales invoices), kept subscribed and renewed before they expire, and a
reconciliation poll on ``lastModifiedDateTime`` for what it does not notify (sales shipments,
customer payments) or a notification missed.

A notification is only queued when it comes (``revsync_bc_notifications``), so Business
Central gets its answer at once; :meth:`BusinessCentralInbound.process` reads what it names
and writes the events. Each record is read in full, mapped by
:mod:`erp_inbound.business_central_mapping` and written through the :class:`InboundSink`; the
event ids come from the record and its version, so a repeated notification, a notification
and the poll finding the same record, or a re-poll, all write one event.

The poll keeps a position per company and entity: the latest ``lastModifiedDateTime`` it has
worked, and the records (id and version) it has worked since a short overlap before it. Each
page reads from the overlap on, skips what it has worked, and writes its events, the records
worked and the new position in one transaction; a record whose change committed a little after
a later one was stamped is found in the overlap, and records sharing one timestamp across a
page boundary are neither lost nor doubled.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import psycopg
from prometheus_client import Counter, Gauge
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from erp_inbound.business_central_mapping import (
    Company,
    CreditState,
    OrderReference,
    RecordInvalid,
    credit_state,
    customer_changes,
    invoice_posted,
    is_posted,
    modified,
    order_reference,
    payment_received,
    reference_id,
    shipment_confirmed,
    stamp,
)
from erp_inbound.sink import Change, InboundSink
from revsync.connectors.business_central import BusinessCentralConfig
from revsync.connectors.business_central_auth import (
    BusinessCentralAuthFailed,
    BusinessCentralWire,
    answered_code,
)
from revsync.connectors.cdc import read_json
from revsync.connectors.http import failed_call
from revsync.errors import RevsyncError, TransientError, described
from revsync.migrations import Tables
from revsync.security import POSTGRES_SERVICE

log = logging.getLogger(__name__)

SYSTEM = "business-central"
NOTIFIED_ENTITIES = ("customers", "salesInvoices")
"""The entities Business Central notifies revsync of: one subscription each per company."""
POLLED_ENTITIES = ("salesInvoices", "salesShipments", "customerPayments", "customers")
"""The entities the reconciliation poll reads; shipments and payments only it finds."""
OVERLAP = timedelta(seconds=5)
"""How far before its position a poll reads again: a change stamped before the position but
committed after the poll read past it is found then."""
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""Where the first poll of customers starts: every customer there is, for its credit fields."""
RETRIED_STATUSES = (408, 429, 503)
"""What a notification may be answered with to have Business Central send it again; any other
failure status makes it delete the subscription."""
ACCEPTED = 202
REFUSED = 401
MALFORMED = 400
UNAVAILABLE = 503
RESOURCE = re.compile(
    r"^/?(?:api/v2\.0/)?companies\((?P<company>[^)]+)\)/(?P<entity>[A-Za-z]+)"
    r"(?:\((?P<record>[^)]+)\))?$"
)
"""A subscription's or notification's resource: ``api/v2.0/companies(<id>)/<entity>`` and,
for one record, ``(<id>)`` after it."""
NOTIFICATIONS_PER_BATCH = 100
QUEUE_WAIT_S = 5.0
"""How long a notification waits for a database connection before it is answered 503 (and
sent again): Business Central waits only seconds for an answer."""
BACKOFF_MAX_S = 60.0

NOTIFICATIONS = Counter(
    "revsync_erp_inbound_bc_notifications_total",
    "Business Central notification bodies answered: taken, refused (no client state), "
    "malformed, or unavailable (asked again).",
    ["answer"],
)
EVENTS = Counter(
    "revsync_erp_inbound_bc_events_total",
    "Business Central changes written as events (or found written already), by entity and "
    "by what found them: a notification or the poll.",
    ["entity", "via"],
)
SUBSCRIPTIONS = Counter(
    "revsync_erp_inbound_bc_subscriptions_total",
    "Webhook subscriptions created, renewed or deleted.",
    ["action"],
)
SUBSCRIPTION_EXPIRY = Gauge(
    "revsync_erp_inbound_bc_subscription_expiry_seconds",
    "Seconds from when it was last kept to a subscription's expiry.",
    ["legal_entity", "entity"],
)
POLLED = Gauge(
    "revsync_erp_inbound_bc_poll_position_timestamp_seconds",
    "The lastModifiedDateTime the poll has read up to, by legal entity and entity.",
    ["legal_entity", "entity"],
)

SCHEMA = """
-- Business Central's webhook subscriptions revsync keeps, one per company and entity.
CREATE TABLE IF NOT EXISTS revsync_bc_subscriptions (
    company_id      text        NOT NULL,
    entity          text        NOT NULL,
    subscription_id text        NOT NULL,
    resource        text        NOT NULL,
    etag            text        NOT NULL,
    expiration      timestamptz NOT NULL,
    kept_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, entity)
);
-- Notifications as they came, until what they name has been read and written.
CREATE TABLE IF NOT EXISTS revsync_bc_notifications (
    seq         bigserial   PRIMARY KEY,
    company_id  text        NOT NULL,
    entity      text        NOT NULL,
    record_id   text,
    change_type text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
-- How far the reconciliation poll has read each company's entity, and from when it reports
-- (its first poll's time, or the configured start).
CREATE TABLE IF NOT EXISTS revsync_bc_positions (
    company_id   text        NOT NULL,
    entity       text        NOT NULL,
    position     timestamptz,
    publish_from timestamptz NOT NULL,
    polled_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, entity)
);
-- The record versions worked since a little before each position (the overlap the poll reads
-- again), so a record read twice is worked once.
CREATE TABLE IF NOT EXISTS revsync_bc_worked (
    company_id text        NOT NULL,
    entity     text        NOT NULL,
    record_id  text        NOT NULL,
    version    timestamptz NOT NULL,
    PRIMARY KEY (company_id, entity, record_id, version)
);
CREATE INDEX IF NOT EXISTS revsync_bc_worked_by_version
    ON revsync_bc_worked (company_id, entity, version);
-- Each customer's credit fields as of the last version revsync worked (its credit limit, and
-- its blocked status with the status revsync reports): a credit status change is reported
-- only when these moved.
CREATE TABLE IF NOT EXISTS revsync_bc_customer_credit (
    company_id   text           NOT NULL,
    customer_id  text           NOT NULL,
    version      timestamptz    NOT NULL,
    credit_limit numeric(18, 4) NOT NULL,
    standing     text           NOT NULL,
    PRIMARY KEY (company_id, customer_id)
);
"""
TABLES = (Tables(SCHEMA, writers=(POSTGRES_SERVICE,)),)


@dataclass(frozen=True)
class BusinessCentralInboundConfig:
    """Which companies revsync hears from, and how it keeps its subscriptions and its poll."""

    companies: Mapping[str, str]
    """Company id by legal entity: only these are subscribed to, polled and published."""
    notification_url: str
    """revsync's public receiver of notifications (``.../erp/business-central/notifications``)."""
    client_state: SecretStr
    """The secret every subscription is made with and every notification must carry."""
    renew_before_s: float = 24 * 3600.0
    """How long before a subscription's ``expirationDateTime`` it is renewed (they last three
    days)."""
    reconcile_interval_s: float = 300.0
    """How often the reconciliation poll runs."""
    page_size: int = 100
    """Records read per page of the poll, each page one transaction."""
    first_poll_from: datetime | None = None
    """What a first poll reports from: documents changed and customer versions from then on
    (earlier customers are read only for their credit fields). None: the first poll's own
    time, so history from before revsync was connected is not published."""

    def __post_init__(self) -> None:
        if not self.companies:
            raise ValueError("companies: name at least one legal entity's company id")
        if not self.notification_url.startswith(("https://", "http://")):
            raise ValueError("notification_url: expected an absolute http(s) URL")
        secret = self.client_state.get_secret_value()
        if not 1 <= len(secret) <= 2048:
            raise ValueError("client_state: expected 1 to 2048 characters")
        if self.renew_before_s <= 0:
            raise ValueError("renew_before_s: expected a positive number of seconds")
        if self.reconcile_interval_s <= 0:
            raise ValueError("reconcile_interval_s: expected a positive number of seconds")
        if not 1 <= self.page_size <= 20_000:
            raise ValueError("page_size: expected 1 to 20000")
        if self.first_poll_from is not None and self.first_poll_from.tzinfo is None:
            raise ValueError("first_poll_from: expected a time with its UTC offset")


class RecordGone(RevsyncError):
    """Business Central has no such record (404): deleted since it was notified."""


class BusinessCentralRefused(RevsyncError):
    """Business Central refused a call for good (not a transient failure): its status and its
    error code."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BusinessCentralApi(Protocol):
    """The calls the inbound side makes, relative to the API's base
    (``.../{tenant}/{environment}/api/v2.0``). A 404 raises :class:`RecordGone`, 408, 429 and
    5xx or a failed connection :class:`TransientError`, any other failure
    :class:`BusinessCentralRefused`."""

    @property
    def scope(self) -> str:
        """The tenant and environment the API's base names (``tenant/environment``)."""
        ...

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Mapping[str, Any]: ...

    def get_link(self, url: str) -> Mapping[str, Any]:
        """An absolute ``@odata.nextLink``."""
        ...

    def post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def patch(self, path: str, body: Mapping[str, Any], etag: str) -> Mapping[str, Any]: ...

    def delete(self, path: str, etag: str) -> None: ...

    def customer_link(self, company_id: str, customer_id: str) -> Mapping[str, Any] | None:
        """revsync's customer link of a customer (its ``crmAccountId``, and the credit
        standing it reports), or None when the customer has none."""
        ...


ENVIRONMENT = re.compile(r"/v2\.0/(?P<tenant>[^/]+)/(?P<environment>[^/]+)/api/v2\.0/?$")
"""An API base URL: ``.../v2.0/{tenant}/{environment}/api/v2.0``."""
READ_ATTEMPTS = 4
"""Tries of one read that failed in a way that may pass (throttled, timed out, 5xx), before
the failure ends the round: a page reads many records, and a round that had to start over for
any one of them might never finish while Business Central throttles."""
READ_RETRY_MAX_S = 5.0
"""The longest wait between two tries of one read (more, and the round gives up)."""


class BusinessCentralHttpApi:
    """:class:`BusinessCentralApi` over the ERP adapter's wire (its pool, Entra session and
    limit of concurrent calls): JSON read with exact decimals, reads that may pass tried
    again in place, and every failure typed by its status."""

    def __init__(self, wire: BusinessCentralWire, config: BusinessCentralConfig) -> None:
        self._wire = wire
        self._api_url = config.api_url.rstrip("/")
        self._extension_url = f"{config.environment_url}/{config.extension_path.strip('/')}"
        found = ENVIRONMENT.search(self._api_url)
        self._scope = f"{found['tenant']}/{found['environment']}" if found else self._api_url

    @property
    def scope(self) -> str:
        return self._scope

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Mapping[str, Any]:
        return self._read(f"{self._api_url}/{path}", params)

    def get_link(self, url: str) -> Mapping[str, Any]:
        if not url.startswith(self._api_url):
            raise BusinessCentralRefused(
                f"{SYSTEM}: a next page link outside the API's base, not followed", 200, None
            )
        return self._read(url)

    def post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        return self._call("POST", f"{self._api_url}/{path}", json_body=body)

    def patch(self, path: str, body: Mapping[str, Any], etag: str) -> Mapping[str, Any]:
        return self._call(
            "PATCH", f"{self._api_url}/{path}", json_body=body, headers={"If-Match": etag}
        )

    def delete(self, path: str, etag: str) -> None:
        self._call("DELETE", f"{self._api_url}/{path}", headers={"If-Match": etag})

    def customer_link(self, company_id: str, customer_id: str) -> Mapping[str, Any] | None:
        url = f"{self._extension_url}/companies({company_id})/customerLinks({customer_id})"
        try:
            return self._read(url)
        except RecordGone:
            return None

    def _read(self, url: str, params: Mapping[str, str] | None = None) -> Mapping[str, Any]:
        """A GET, tried again in place (up to :data:`READ_ATTEMPTS`, waiting what Business
        Central asks or a doubling pause) when it fails in a way that may pass (throttled,
        timed out, 5xx); a refused token is not waited out."""
        attempt = 1
        while True:
            try:
                return self._call("GET", url, params=params)
            except BusinessCentralAuthFailed:
                raise  # refused even with a fresh token: not a matter of waiting a moment
            except TransientError as error:
                wait = error.retry_after or 0.25 * 2**attempt
                if attempt == READ_ATTEMPTS or wait > READ_RETRY_MAX_S:
                    raise
            time.sleep(wait)
            attempt += 1

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Mapping[str, Any]:
        response = self._wire.send(method, url, params=params, json_body=json_body, headers=headers)
        if response.status_code == 404:
            raise RecordGone(failed_call(SYSTEM, response, answered_code(response)))
        if not response.is_success:
            code = answered_code(response)
            raise BusinessCentralRefused(
                failed_call(SYSTEM, response, code), response.status_code, code
            )
        if not response.content:
            return {}
        try:
            answer = read_json(response.content, parse_float=Decimal)
        except ValueError:
            answer = None
        if not isinstance(answer, Mapping):
            raise BusinessCentralRefused(
                f"{SYSTEM}: {method} {response.request.url.path} answered no JSON object",
                response.status_code,
                None,
            )
        return answer


def renewal_due(expiration: datetime, now: datetime, renew_before_s: float) -> bool:
    """Whether a subscription expiring at ``expiration`` is to be renewed ``now``."""
    return expiration - now <= timedelta(seconds=renew_before_s)


def keeping_interval_s(renew_before_s: float) -> float:
    """How often the subscriptions are checked: often enough that one is renewed well inside
    its renewal window (a quarter of it), at most a minute apart, at least half a second."""
    return max(0.5, min(60.0, renew_before_s / 4))


def backoff_s(failures: int) -> float:
    """The wait after ``failures`` failed rounds in a row: 1, 2, 4 ... up to a minute."""
    return 0.0 if failures <= 0 else min(BACKOFF_MAX_S, 2.0 ** (failures - 1))


def subscription_resource(company_id: str, entity: str) -> str:
    return f"/api/v2.0/companies({company_id})/{entity}"


@dataclass(frozen=True)
class Notified:
    """One notification: the company, the entity, the record (None for a ``collection``
    notification, which names the collection) and what happened."""

    company_id: str
    entity: str
    record_id: str | None
    change_type: str


def parse_resource(resource: object) -> tuple[str, str, str | None] | None:
    """(company id, entity, record id or None) of a resource path, or None when it is not
    one."""
    if not isinstance(resource, str):
        return None
    match = RESOURCE.match(resource.strip())
    if match is None:
        return None
    record = match["record"]
    return match["company"].strip("'"), match["entity"], record.strip("'") if record else None


class NotificationRefused(ValueError):
    """A notification body revsync does not take: malformed, or not carrying the client
    state (``forged``)."""

    def __init__(self, reason: str, *, forged: bool) -> None:
        super().__init__(reason)
        self.forged = forged


def read_notifications(body: bytes, client_state: SecretStr) -> list[Notified]:
    """The notifications of a webhook body, each checked for revsync's client state in
    constant time; one without it refuses the whole body."""
    try:
        document = read_json(body)
    except ValueError:
        raise NotificationRefused("not JSON", forged=False) from None
    values = document.get("value") if isinstance(document, dict) else None
    if not isinstance(values, list):
        raise NotificationRefused("no 'value' list", forged=False)
    secret = client_state.get_secret_value().encode()
    notified = []
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            raise NotificationRefused(f"value[{index}] is not an object", forged=False)
        state = value.get("clientState")
        given = state.encode() if isinstance(state, str) else b""
        if not hmac.compare_digest(given, secret):
            raise NotificationRefused(
                f"value[{index}] (subscription {_printable(value.get('subscriptionId'))}) "
                "does not carry revsync's client state",
                forged=True,
            )
        parsed = parse_resource(value.get("resource"))
        change_type = value.get("changeType")
        if parsed is None or not isinstance(change_type, str):
            raise NotificationRefused(f"value[{index}] names no resource", forged=False)
        company_id, entity, record_id = parsed
        if change_type == "collection":
            record_id = None
        notified.append(Notified(company_id, entity, record_id, change_type))
    return notified


def _printable(value: object) -> str:
    """An identifier from a request as log text, or ``?``."""
    return value if isinstance(value, str) and re.fullmatch(r"[\w{}()'-]{1,64}", value) else "?"


@dataclass
class _Lookups:
    """What one unit of work has read besides its records, read once each."""

    links: dict[tuple[str, str], Mapping[str, Any] | None] = field(default_factory=dict)
    orders: dict[tuple[str, str], Mapping[str, Any] | None] = field(default_factory=dict)


class BusinessCentralInbound:
    """Business Central's changes as revsync's events: the webhook receiver's two answers,
    the subscriptions kept, the notifications worked and the reconciliation poll."""

    def __init__(
        self,
        api: BusinessCentralApi,
        pool: ConnectionPool[Any],
        sink: InboundSink,
        config: BusinessCentralInboundConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.pool = pool
        self.sink = sink
        self.config = config
        self._clock = clock
        self._legal_entities = {
            company_id: legal_entity for legal_entity, company_id in config.companies.items()
        }
        """The legal entity of each company read, by company id."""
        self._companies: dict[str, Company] = {}
        self._terms: dict[str, dict[str, str]] = {}
        """Payment terms' codes by id, per company (read once: they hardly change)."""
        self._wake = threading.Event()
        self._gaps: set[tuple[str, str]] = set()
        """Company and entity whose subscription was (re)made: notifications may have been
        missed before, so the poll reads them at once."""

    # -- the receiver -------------------------------------------------------------------------

    def validation(self, token: str) -> str:
        """The answer to Business Central's validation handshake: the token, as plain text."""
        return token

    def notified(self, body: bytes) -> int:
        """Takes a notification body: queues what it names and answers at once. 202 when
        taken; 401 when it does not carry revsync's client state (logged: a forgery, or a
        subscription made with an older secret, which Business Central then deletes and
        revsync makes again); 400 when malformed; 503 when it cannot be queued, so Business
        Central sends it again."""
        try:
            notifications = read_notifications(body, self.config.client_state)
        except NotificationRefused as refused:
            if refused.forged:
                log.warning("%s: notification refused: %s", SYSTEM, refused)
                NOTIFICATIONS.labels("refused").inc()
                return REFUSED
            log.warning("%s: malformed notification refused: %s", SYSTEM, refused)
            NOTIFICATIONS.labels("malformed").inc()
            return MALFORMED
        known = self._company_ids()
        ours = [
            Notified(known[n.company_id.lower()], n.entity, n.record_id, n.change_type)
            for n in notifications
            if n.company_id.lower() in known and n.entity in POLLED_ENTITIES
        ]
        if len(ours) < len(notifications):
            log.info(
                "%s: %d notification(s) for companies or entities revsync does not read ignored",
                SYSTEM,
                len(notifications) - len(ours),
            )
        if ours:
            try:
                with (
                    self.pool.connection(timeout=QUEUE_WAIT_S) as connection,
                    connection.transaction(),
                ):
                    connection.cursor().executemany(
                        "INSERT INTO revsync_bc_notifications (company_id, entity, record_id, "
                        "change_type) VALUES (%s, %s, %s, %s)",
                        [(n.company_id, n.entity, n.record_id, n.change_type) for n in ours],
                    )
            except psycopg.Error as error:
                log.warning("%s: notifications not queued, asked again: %s", SYSTEM, error)
                NOTIFICATIONS.labels("unavailable").inc()
                return UNAVAILABLE
            self._wake.set()
        NOTIFICATIONS.labels("taken").inc()
        return ACCEPTED

    def _company_ids(self) -> dict[str, str]:
        """Configured company ids by their lower case (GUIDs come in either case)."""
        return {company_id.lower(): company_id for company_id in self._legal_entities}

    # -- subscriptions ------------------------------------------------------------------------

    def keep_subscriptions(self) -> int:
        """Makes every wanted subscription exist and last: creates the missing (one per
        company for customers and sales invoices), renews each due for it (PATCH with its
        etag, which runs the handshake again), and makes again one Business Central deleted
        or let expire. Returns how many it created or renewed. One replica does it at a time;
        another finding it busy returns 0."""
        kept = 0
        failure: Exception | None = None
        with self.pool.connection() as connection, connection.transaction():
            locked = connection.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext('revsync.erp_inbound.bc.subscriptions'))"
            ).fetchone()
            if locked is None or not locked[0]:
                return 0
            live = self._live_subscriptions()
            now = self._clock()
            try:
                self._drop_unwanted(live)
            except (TransientError, BusinessCentralRefused) as error:
                log.warning("%s: unwanted subscriptions not deleted: %s", SYSTEM, error)
                failure = error
            for company_id in self._legal_entities:
                for entity in NOTIFIED_ENTITIES:
                    resource = subscription_resource(company_id, entity)
                    current = next(iter(live.get(_resource_key(resource), [])), None)
                    try:
                        kept += self._keep(connection, company_id, entity, current, now)
                    except (TransientError, BusinessCentralRefused, RecordGone) as error:
                        log.warning("%s: subscription to %s not kept: %s", SYSTEM, resource, error)
                        failure = failure or error
        if failure is not None:
            raise failure
        return kept

    def _live_subscriptions(self) -> dict[str, list[Mapping[str, Any]]]:
        """revsync's subscriptions Business Central has (those to its notification URL), by
        resource, the one expiring last first."""
        answer = self.api.get("subscriptions")
        live: dict[str, list[Mapping[str, Any]]] = {}
        for value in _values(answer):
            if value.get("notificationUrl") == self.config.notification_url:
                live.setdefault(_resource_key(str(value.get("resource")) or ""), []).append(value)
        for found in live.values():
            found.sort(key=lambda s: _expiration(s) or EPOCH, reverse=True)
        return live

    def _drop_unwanted(self, live: dict[str, list[Mapping[str, Any]]]) -> None:
        """Deletes revsync's subscriptions to what it no longer reads (a company taken out of
        its configuration) and the extra ones to one resource (left by a create whose answer
        was lost), each of which would only send notifications again."""
        wanted = {
            _resource_key(subscription_resource(company_id, entity))
            for company_id in self._legal_entities
            for entity in NOTIFIED_ENTITIES
        }
        for key, found in live.items():
            extra = found if key not in wanted else found[1:]
            for subscription in extra:
                with contextlib.suppress(RecordGone):  # gone already
                    self.api.delete(
                        f"subscriptions('{subscription.get('subscriptionId')}')",
                        str(subscription.get("@odata.etag") or "*"),
                    )
                SUBSCRIPTIONS.labels("deleted").inc()
                log.info(
                    "%s: subscription to %s deleted: %s",
                    SYSTEM,
                    subscription.get("resource"),
                    "not read" if key not in wanted else "a second one",
                )
            del found[int(key in wanted) :]

    def _keep(
        self,
        connection: psycopg.Connection[Any],
        company_id: str,
        entity: str,
        current: Mapping[str, Any] | None,
        now: datetime,
    ) -> int:
        body = {
            "notificationUrl": self.config.notification_url,
            "resource": subscription_resource(company_id, entity),
            "clientState": self.config.client_state.get_secret_value(),
        }
        if current is not None:
            expiration = _expiration(current)
            if expiration is not None and expiration > now:
                if not renewal_due(expiration, now, self.config.renew_before_s):
                    self._store(connection, company_id, entity, current)
                    return 0
                try:
                    renewed = self.api.patch(
                        f"subscriptions('{current['subscriptionId']}')",
                        body,
                        str(current.get("@odata.etag") or "*"),
                    )
                except RecordGone:
                    log.info("%s: subscription to %s gone, made again", SYSTEM, body["resource"])
                else:
                    self._store(connection, company_id, entity, renewed)
                    SUBSCRIPTIONS.labels("renewed").inc()
                    log.info(
                        "%s: subscription to %s renewed until %s",
                        SYSTEM,
                        body["resource"],
                        renewed.get("expirationDateTime"),
                    )
                    return 1
        created = self.api.post("subscriptions", body)
        self._store(connection, company_id, entity, created)
        SUBSCRIPTIONS.labels("created").inc()
        self._gaps.add((company_id, entity))
        log.info(
            "%s: subscribed to %s until %s",
            SYSTEM,
            body["resource"],
            created.get("expirationDateTime"),
        )
        return 1

    def _store(
        self,
        connection: psycopg.Connection[Any],
        company_id: str,
        entity: str,
        subscription: Mapping[str, Any],
    ) -> None:
        expiration = _expiration(subscription)
        subscription_id = subscription.get("subscriptionId")
        if expiration is None or not isinstance(subscription_id, str):
            raise BusinessCentralRefused(
                f"{SYSTEM}: a subscription answer without its id or expiration", 200, None
            )
        connection.execute(
            "INSERT INTO revsync_bc_subscriptions (company_id, entity, subscription_id, "
            "resource, etag, expiration) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (company_id, entity) DO UPDATE SET subscription_id = "
            "EXCLUDED.subscription_id, resource = EXCLUDED.resource, etag = EXCLUDED.etag, "
            "expiration = EXCLUDED.expiration, kept_at = now()",
            (
                company_id,
                entity,
                subscription_id,
                str(subscription.get("resource") or subscription_resource(company_id, entity)),
                str(subscription.get("@odata.etag") or "*"),
                expiration,
            ),
        )
        SUBSCRIPTION_EXPIRY.labels(self._legal_entities[company_id], entity).set(
            (expiration - self._clock()).total_seconds()
        )

    # -- notifications ------------------------------------------------------------------------

    def process(self) -> int:
        """Works the queued notifications: reads each record named (a ``collection``
        notification: its collection from the poll's position on), writes its events, and
        drops the notifications, in one transaction per batch. Returns the events written."""
        written = 0
        while True:
            done, count = self._process_records()
            written += count
            if done:
                break
        for company_id, entity, last in self._collections():
            polled = self._poll(company_id, entity)
            if polled is None:
                continue  # another replica is polling it: its notifications wait for a next
            written += polled
            with self.pool.connection() as connection:
                connection.execute(
                    "DELETE FROM revsync_bc_notifications WHERE company_id = %s AND entity = %s "
                    "AND record_id IS NULL AND seq <= %s",
                    (company_id, entity, last),
                )
        return written

    def _process_records(self) -> tuple[bool, int]:
        lookups = _Lookups()
        with self.pool.connection() as connection, connection.transaction():
            rows = connection.execute(
                "SELECT seq, company_id, entity, record_id, change_type "
                "FROM revsync_bc_notifications WHERE record_id IS NOT NULL "
                "AND company_id = ANY(%s) ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
                (list(self._legal_entities), NOTIFICATIONS_PER_BATCH),
            ).fetchall()
            if not rows:
                return True, 0
            changes: list[Change] = []
            counts: dict[str, int] = {}
            distinct = dict.fromkeys(
                (row[1], row[2], row[3]) for row in rows if row[4] != "deleted"
            )
            for company_id, entity, record_id in distinct:
                company = self._company(company_id)
                try:
                    record = self.api.get(
                        f"companies({company.id})/{entity}({record_id})", _expand(entity)
                    )
                except RecordGone:
                    log.info("%s: %s %s gone before it was read", SYSTEM, entity, record_id)
                    continue
                except BusinessCentralRefused as refused:
                    # Not to be read by its id (Business Central refuses the request itself):
                    # left to the poll, which reads the collection.
                    log.warning(
                        "%s: notified %s %s not read: %s", SYSTEM, entity, record_id, refused
                    )
                    continue
                worked = self._work(connection, company, entity, [record], lookups)
                counts[entity] = counts.get(entity, 0) + len(worked)
                changes += worked
            written = self.sink.write(connection.cursor(), changes).published
            connection.execute(
                "DELETE FROM revsync_bc_notifications WHERE seq = ANY(%s)",
                ([row[0] for row in rows],),
            )
        for entity, count in counts.items():
            EVENTS.labels(entity, "notification").inc(count)
        return len(rows) < NOTIFICATIONS_PER_BATCH, written

    def _collections(self) -> list[tuple[str, str, int]]:
        with self.pool.connection() as connection:
            rows = connection.execute(
                "SELECT company_id, entity, max(seq) FROM revsync_bc_notifications "
                "WHERE record_id IS NULL AND company_id = ANY(%s) GROUP BY company_id, entity",
                (list(self._legal_entities),),
            ).fetchall()
        return [(str(row[0]), str(row[1]), int(row[2])) for row in rows]

    # -- the reconciliation poll --------------------------------------------------------------

    def reconcile(self) -> int:
        """Polls every company's invoices, shipments, payments and customers changed since
        its position; returns the events written. An entity that fails does not stop the
        others; the first failure is raised after them, each failed entity's position where
        its last written page left it."""
        written = 0
        failure: Exception | None = None
        self._gaps.clear()
        for company_id in self._legal_entities:
            for entity in POLLED_ENTITIES:
                try:
                    written += self._poll(company_id, entity) or 0
                except Exception as error:  # raised after the other entities
                    log.warning(
                        "%s: polling %s of company %s failed: %s",
                        SYSTEM,
                        entity,
                        company_id,
                        described(error),
                    )
                    failure = failure or error
        if failure is not None:
            raise failure
        return written

    def _poll(self, company_id: str, entity: str) -> int | None:
        """Reads one company's entity from its position on, a page per transaction: the
        events written, or None when another replica was polling it."""
        written = 0
        polled = False
        company = self._company(company_id)
        with self.pool.connection() as connection:
            connection.execute(
                "INSERT INTO revsync_bc_positions (company_id, entity, publish_from) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (company.id, entity, self.config.first_poll_from or self._clock()),
            )
            connection.commit()
            while True:
                with connection.transaction():
                    page = self._poll_page(connection, company, entity)
                if page is None:
                    return written if polled else None
                polled = True
                count, more, position = page
                written += count
                EVENTS.labels(entity, "poll").inc(count)
                if position is not None:
                    POLLED.labels(company.legal_entity, entity).set(position.timestamp())
                if not more:
                    return written

    def _poll_page(
        self, connection: psycopg.Connection[Any], company: Company, entity: str
    ) -> tuple[int, bool, datetime | None] | None:
        """One page: its events, the records worked and the new position (the events written,
        whether more may follow, and the position). None when another replica is polling the
        same entity.

        A first poll reads documents from ``publish_from`` (less the overlap): what happened
        before revsync was connected is not reported. It reads every customer, to know each
        one's credit fields, and reports only the versions from ``publish_from`` on."""
        row = connection.execute(
            "SELECT position, publish_from FROM revsync_bc_positions WHERE company_id = %s "
            "AND entity = %s FOR UPDATE SKIP LOCKED",
            (company.id, entity),
        ).fetchone()
        if row is None:
            return None
        position: datetime | None = row[0]
        publish_from: datetime = row[1]
        if position is not None:
            floor = position - OVERLAP
        else:
            floor = EPOCH if entity == "customers" else publish_from - OVERLAP
        worked = {
            (str(r[0]), r[1])
            for r in connection.execute(
                "SELECT record_id, version FROM revsync_bc_worked WHERE company_id = %s "
                "AND entity = %s AND version >= %s",
                (company.id, entity, floor),
            )
        }
        top = self.config.page_size + len(worked)
        params = {
            "$filter": f"lastModifiedDateTime ge {stamp(floor)}",
            "$orderby": "lastModifiedDateTime asc",
            "$top": str(top),
            **_expand(entity),
        }
        answer = self.api.get(f"companies({company.id})/{entity}", params)
        records = list(_values(answer))
        # Business Central may answer fewer than $top a time, linking to the rest.
        while len(records) < top and isinstance(answer.get("@odata.nextLink"), str):
            answer = self.api.get_link(answer["@odata.nextLink"])
            records += _values(answer)
        fresh = [r for r in records if (str(r.get("id")), modified(entity, r)) not in worked]
        # A full page holds at least a page of records not worked yet; one that holds none is
        # a server not honouring $top, and reading it again would find nothing new either.
        more = bool(fresh) and len(records) >= top
        changes = self._work(connection, company, entity, fresh, _Lookups(), publish_from)
        written = self.sink.write(connection.cursor(), changes).published
        versions = [modified(entity, r) for r in records]
        latest = position
        if versions:
            latest = max(versions) if position is None else max([position, *versions])
            connection.execute(
                "UPDATE revsync_bc_positions SET position = %s, polled_at = now() "
                "WHERE company_id = %s AND entity = %s",
                (latest, company.id, entity),
            )
            connection.execute(
                "DELETE FROM revsync_bc_worked WHERE company_id = %s AND entity = %s "
                "AND version < %s",
                (company.id, entity, latest - OVERLAP),
            )
        return written, more, latest

    # -- reading and mapping ------------------------------------------------------------------

    def _work(
        self,
        connection: psycopg.Connection[Any],
        company: Company,
        entity: str,
        records: Sequence[Mapping[str, Any]],
        lookups: _Lookups,
        publish_from: datetime | None = None,
    ) -> list[Change]:
        """The changes of ``records`` not worked before (by id and version), each marked
        worked; a record that cannot be mapped is logged and marked worked too, so it is not
        read again until it changes. A customer's version before ``publish_from`` is only
        remembered (its credit fields), not reported."""
        changes: list[Change] = []
        read_at = self._clock()
        for record in records:
            record_id = record.get("id")
            if not isinstance(record_id, str) or not record_id:
                log.warning("%s: a record of %s without its id skipped", SYSTEM, entity)
                continue
            try:
                version = modified(entity, record)
                inserted = connection.execute(
                    "INSERT INTO revsync_bc_worked (company_id, entity, record_id, version) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (company.id, entity, record_id, version),
                )
                if inserted.rowcount == 0:
                    continue
                if entity == "customers":
                    report = publish_from is None or version >= publish_from
                    changes += self._customer(
                        connection, company, record, lookups, read_at, report=report
                    )
                else:
                    changes += self._document(company, entity, record, lookups, read_at)
            except RecordInvalid as invalid:
                log.warning("%s: %s", SYSTEM, invalid)
        return changes

    def _document(
        self,
        company: Company,
        entity: str,
        record: Mapping[str, Any],
        lookups: _Lookups,
        read_at: datetime,
    ) -> list[Change]:
        """The change of a posted invoice, a shipment or an applied payment of an order
        revsync placed (one carrying its CRM order id); none for any other document."""
        if entity in ("salesInvoices", "salesShipments") and not record.get(
            "externalDocumentNumber"
        ):
            return []  # no document of an order revsync placed
        if entity == "salesInvoices":
            if not is_posted(record):
                return []
            order = self._order(company, "salesInvoices", record, lookups)
            link = self._link(company, order.customer_id, lookups)
            terms = self._payment_terms(company, record.get("paymentTermsId"), link)
            return [invoice_posted(company, record, order, terms, read_at)]
        if entity == "salesShipments":
            order = self._order(company, "salesShipments", record, lookups)
            return [shipment_confirmed(company, record, order, {}, read_at)]
        if entity == "customerPayments":
            invoice_id = reference_id(record.get("appliesToInvoiceId"))
            if invoice_id is None:
                return []  # not applied to an invoice: no payment of an order
            try:
                invoice = self.api.get(f"companies({company.id})/salesInvoices({invoice_id})")
            except RecordGone:
                log.warning("%s: payment %s applies to no invoice", SYSTEM, record.get("id"))
                return []
            if not invoice.get("externalDocumentNumber"):
                return []
            order = self._order(company, "salesInvoices", invoice, lookups)
            return [payment_received(company, record, invoice, order, read_at)]
        return []

    def _customer(
        self,
        connection: psycopg.Connection[Any],
        company: Company,
        record: Mapping[str, Any],
        lookups: _Lookups,
        read_at: datetime,
        *,
        report: bool = True,
    ) -> list[Change]:
        """A customer's version: its events when it is newer than the last one worked (and
        ``report``), and its credit fields kept for the next."""
        customer_id = str(record["id"])
        link = self._link(company, customer_id, lookups)
        state = credit_state(record, link)
        row = connection.execute(
            "SELECT version, credit_limit, standing FROM revsync_bc_customer_credit "
            "WHERE company_id = %s AND customer_id = %s FOR UPDATE",
            (company.id, customer_id),
        ).fetchone()
        previous = None if row is None else CreditState(row[0], row[1], row[2])
        if previous is not None and previous.version >= state.version:
            return []  # an older version read late, or the same again
        connection.execute(
            "INSERT INTO revsync_bc_customer_credit (company_id, customer_id, version, "
            "credit_limit, standing) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (company_id, "
            "customer_id) DO UPDATE SET version = EXCLUDED.version, credit_limit = "
            "EXCLUDED.credit_limit, standing = EXCLUDED.standing",
            (company.id, customer_id, state.version, state.credit_limit, state.standing),
        )
        if not report or link is None or not link.get("crmAccountId"):
            return []  # before revsync was connected, or no CRM account to key it by
        terms = self._payment_terms(company, record.get("paymentTermsId"), link)
        return customer_changes(company, record, link, terms, previous, read_at)

    def _order(
        self, company: Company, entity: str, document: Mapping[str, Any], lookups: _Lookups
    ) -> OrderReference:
        """The order a document came from, read by its id or else its number (None when
        Business Central no longer has it), and the CRM account of its customer."""
        order_id = reference_id(document.get("orderId"))
        number = document.get("orderNumber")
        key = (company.id, order_id or f"number:{number}")
        if key not in lookups.orders:
            lookups.orders[key] = self._read_order(company, order_id, number)
        customer_id = reference_id(document.get("customerId")) or ""
        link = self._link(company, customer_id, lookups) if customer_id else None
        crm_account_id = link.get("crmAccountId") if link is not None else None
        return order_reference(
            company,
            entity,
            document,
            lookups.orders[key],
            crm_account_id if isinstance(crm_account_id, str) else "",
        )

    def _read_order(
        self, company: Company, order_id: str | None, number: object
    ) -> Mapping[str, Any] | None:
        orders = f"companies({company.id})/salesOrders"
        try:
            if order_id is not None:
                return self.api.get(f"{orders}({order_id})")
        except RecordGone:
            return None
        if not isinstance(number, str) or not number or "'" in number:
            return None
        found = list(_values(self.api.get(orders, {"$filter": f"number eq '{number}'"})))
        return found[0] if found else None

    def _link(
        self, company: Company, customer_id: str, lookups: _Lookups
    ) -> Mapping[str, Any] | None:
        key = (company.id, customer_id)
        if key not in lookups.links:
            lookups.links[key] = self.api.customer_link(company.id, customer_id)
        return lookups.links[key]

    def _payment_terms(
        self, company: Company, terms_id: object, link: Mapping[str, Any] | None
    ) -> str:
        """The code of payment terms by their id (what revsync's events carry), read from
        the company's ``paymentTerms``; where Business Central does not serve them, the
        customer's terms as revsync's customer link names them."""
        if company.id not in self._terms:
            try:
                answer = self.api.get(f"companies({company.id})/paymentTerms")
            except RecordGone:
                answer = {"value": []}
            self._terms[company.id] = {
                str(value.get("id")): str(value.get("code"))
                for value in _values(answer)
                if value.get("code")
            }
        terms = reference_id(terms_id)
        code = self._terms[company.id].get(terms) if terms is not None else None
        linked = link.get("paymentTermsCode") if link is not None else None
        return code or (linked if isinstance(linked, str) else "") or ""

    def _company(self, company_id: str) -> Company:
        known = self._company_ids().get(company_id.lower(), company_id)
        company = self._companies.get(known)
        if company is None:
            try:
                information = list(_values(self.api.get(f"companies({known})/companyInformation")))
            except RecordGone:
                information = []  # not served: documents name their currency
            currency = information[0].get("currencyCode") if information else None
            company = Company(
                tenant=self.api.scope,
                id=known,
                legal_entity=self._legal_entities[known],
                currency=str(currency or ""),
            )
            self._companies[known] = company
        return company

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: works notifications as they come, keeps the subscriptions, and
        polls on its interval (at once for an entity whose subscription was made again). Each
        of the three goes on when another fails (a receiver Business Central cannot reach
        does not stop the poll); a failure (Business Central or the database away,
        throttling) is logged and waited out, the wait doubling up to a minute, at least
        what a Retry-After asked; positions stay where their last written page left them."""
        keep_every = keeping_interval_s(self.config.renew_before_s)
        next_keep = next_poll = time.monotonic()
        failures = 0
        while not stop.is_set():
            failure: Exception | None = None
            try:
                self.process()
            except Exception as error:  # every failure is waited out
                failure = error
                log.warning("%s: notifications not worked: %s", SYSTEM, described(error))
            now = time.monotonic()
            if now >= next_keep:
                try:
                    self.keep_subscriptions()
                    next_keep = now + keep_every
                except Exception as error:
                    failure = failure or error  # logged by keep_subscriptions
            if now >= next_poll or self._gaps:
                try:
                    self.reconcile()
                    next_poll = now + self.config.reconcile_interval_s
                except Exception as error:
                    failure = failure or error  # logged by reconcile
            failures = failures + 1 if failure is not None else 0
            wait = min(1.0, keep_every)
            if failure is not None:
                wait = backoff_s(failures)
                if isinstance(failure, TransientError) and failure.retry_after is not None:
                    wait = max(wait, failure.retry_after)
                log.warning(
                    "%s: inbound round failed (%d in a row), next in %.1f s", SYSTEM, failures, wait
                )
            if stop.is_set() or self._wake.is_set():
                self._wake.clear()
                continue
            _wait_either(stop, self._wake, wait)
            self._wake.clear()


def _wait_either(stop: threading.Event, wake: threading.Event, timeout_s: float) -> None:
    """Waits until ``stop`` or ``wake`` is set, or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and not wake.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        wake.wait(min(left, 0.1))


def _values(answer: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    values = answer.get("value")
    if not isinstance(values, list):
        raise BusinessCentralRefused(f"{SYSTEM}: a collection answer without 'value'", 200, None)
    return (value for value in values if isinstance(value, Mapping))


def _expand(entity: str) -> dict[str, str]:
    """A shipment is read with its lines."""
    return {"$expand": "salesShipmentLines"} if entity == "salesShipments" else {}


def _resource_key(resource: str) -> str:
    parsed = parse_resource(resource)
    if parsed is None:
        return resource.lower()
    company_id, entity, record_id = parsed
    return f"{company_id.lower()}/{entity}/{record_id or ''}"


def _expiration(subscription: Mapping[str, Any]) -> datetime | None:
    value = subscription.get("expirationDateTime")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
