"""Business Central's webhooks, simulated: subscriptions (created and renewed only after the
``validationToken`` handshake, expiring, deleted by BC when a notification is refused) and the
notifications of changes, built from the books' outbox rows and batched.

A notification carries no data: ``{"value": [{"subscriptionId", "clientState",
"expirationDateTime", "resource", "changeType", "lastModifiedDateTime"}]}``; more changes of
one entity set in a batch than the collapse threshold become one ``collection`` notification
whose resource is the entity set. Customers, sales invoices (posted, and paid) and sales
orders (booked, edited, deleted, cancelled, invoiced, shipped) are notified; shipments and
customer payments are not, as in BC."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from sandbox.business_central.entities import NOTIFIED
from sandbox.business_central.odata import bad_request, error, etag, matches_etag, timestamp
from sandbox.erp.store import Connection, connect
from sandbox.http import Request, Response

if TYPE_CHECKING:
    from sandbox.business_central.simulator import BusinessCentralSimulator

log = logging.getLogger(__name__)

RESOURCE = r"/?api/v2\.0/companies\(([^)/]+)\)/([A-Za-z]+)"
RETRIED = frozenset({408, 429})
"""Answers after which BC tries a notification again (and every 5xx); any other answer that
is not 2xx deletes the subscription."""
MAX_CLIENT_STATE = 2048
DELIVERY_LOG = 1000


@dataclass(frozen=True)
class Change:
    """One change of a record a subscription may watch."""

    legal_entity: str
    entity: str
    id: str
    change_type: str
    at: datetime


@dataclass
class Subscription:
    id: str
    notification_url: str
    resource: str
    client_state: str
    legal_entity: str
    entity: str
    created_at: datetime
    modified_at: datetime
    expires_at: datetime
    version: int = 1
    pending: list[Change] = field(default_factory=list)
    failed_attempts: int = 0

    @property
    def etag(self) -> str:
        return etag("subscription", self.id, self.version)

    def document(self, api_url: str) -> dict[str, Any]:
        return {
            "@odata.context": f"{api_url}/$metadata#subscriptions/$entity",
            "@odata.etag": self.etag,
            "subscriptionId": self.id,
            "notificationUrl": self.notification_url,
            "resource": self.resource,
            "timestamp": self.version,
            "userId": "00000000-0000-0000-0000-000000000001",
            "lastModifiedDateTime": timestamp(self.modified_at),
            "clientState": self.client_state,
            "expirationDateTime": timestamp(self.expires_at),
            "systemCreatedAt": timestamp(self.created_at),
        }


class Subscriptions:
    """The ``subscriptions`` API of one environment, in memory (a restart forgets them, as
    if they had all expired)."""

    def __init__(self, simulator: BusinessCentralSimulator) -> None:
        self._simulator = simulator
        self._lock = threading.Lock()
        self._by_id: dict[str, Subscription] = {}

    def current(self) -> list[Subscription]:
        """The subscriptions not yet expired; expired ones are gone."""
        now = datetime.now(UTC)
        with self._lock:
            for gone in [s.id for s in self._by_id.values() if s.expires_at <= now]:
                del self._by_id[gone]
            return list(self._by_id.values())

    def remove(self, subscription_id: str) -> None:
        with self._lock:
            self._by_id.pop(subscription_id, None)

    def list(self, _: Request) -> Response:
        api = self._simulator.api_url
        return Response(
            body={
                "@odata.context": f"{api}/$metadata#subscriptions",
                "value": [
                    {k: v for k, v in s.document(api).items() if k != "@odata.context"}
                    for s in self.current()
                ],
            }
        )

    def get(self, request: Request) -> Response:
        return Response(body=self._find(request).document(self._simulator.api_url))

    def create(self, request: Request) -> Response:
        body = self._body(request, required=True)
        legal_entity, entity = self._watched(body["resource"])
        self._handshake(body["notificationUrl"])
        now = datetime.now(UTC)
        subscription = Subscription(
            id=uuid.uuid4().hex,
            notification_url=body["notificationUrl"],
            resource=body["resource"],
            client_state=body.get("clientState", ""),
            legal_entity=legal_entity,
            entity=entity,
            created_at=now,
            modified_at=now,
            expires_at=now + self._lifetime(),
        )
        with self._lock:
            self._by_id[subscription.id] = subscription
        return Response(201, subscription.document(self._simulator.api_url))

    def renew(self, request: Request) -> Response:
        subscription = self._find(request)
        if not matches_etag(request.headers.get("if-match"), subscription.etag):
            raise _changed()
        body = self._body(request, required=False)
        url = body.get("notificationUrl", subscription.notification_url)
        resource = body.get("resource", subscription.resource)
        legal_entity, entity = self._watched(resource)
        self._handshake(url)
        now = datetime.now(UTC)
        with self._lock:
            # The handshake took a while: a renewal that came in meanwhile wins.
            if not matches_etag(request.headers.get("if-match"), subscription.etag):
                raise _changed()
            subscription.notification_url = url
            subscription.resource = resource
            subscription.legal_entity, subscription.entity = legal_entity, entity
            subscription.client_state = body.get("clientState", subscription.client_state)
            subscription.modified_at = now
            subscription.expires_at = now + self._lifetime()
            subscription.version += 1
        return Response(body=subscription.document(self._simulator.api_url))

    def delete(self, request: Request) -> Response:
        subscription = self._find(request)
        if not matches_etag(request.headers.get("if-match"), subscription.etag):
            raise _changed()
        self.remove(subscription.id)
        return Response(204)

    def inspect(self, _: Request) -> Response:
        """The control API's view: each subscription with what waits to be delivered."""
        api = self._simulator.api_url
        return Response(
            body={
                "value": [
                    {
                        **s.document(api),
                        "pendingChanges": len(s.pending),
                        "failedAttempts": s.failed_attempts,
                    }
                    for s in self.current()
                ]
            }
        )

    def _find(self, request: Request) -> Subscription:
        key = (request.params.get("subscription") or "").strip("'")
        for subscription in self.current():
            if subscription.id == key:
                return subscription
        raise error(404, "BadRequest_NotFound", f"The subscription '{key}' does not exist.")

    def _lifetime(self) -> timedelta:
        return timedelta(seconds=self._simulator.settings.subscription_lifetime_s)

    @staticmethod
    def _body(request: Request, *, required: bool) -> dict[str, str]:
        body = request.body if isinstance(request.body, dict) else None
        if body is None:
            raise bad_request("The request body is not a subscription.")
        allowed = {"notificationUrl", "resource", "clientState"}
        for name in body:
            if name not in allowed and not name.startswith("@odata."):
                raise bad_request(
                    f"Could not find a property named '{name}' on type "
                    "'Microsoft.NAV.subscriptions'."
                )
        values = {k: v for k, v in body.items() if k in allowed}
        if not all(isinstance(v, str) for v in values.values()):
            raise bad_request("The fields of a subscription are text.")
        if required and not (values.get("notificationUrl") and values.get("resource")):
            raise bad_request("A subscription needs a notificationUrl and a resource.")
        url = values.get("notificationUrl")
        if url is not None and not url.startswith(("http://", "https://")):
            raise bad_request("The notificationUrl is not an http(s) URL.")
        if len(values.get("clientState", "")) > MAX_CLIENT_STATE:
            raise bad_request("The clientState is longer than 2048 characters.")
        return values

    def _watched(self, resource: str) -> tuple[str, str]:
        match = re.fullmatch(RESOURCE, resource)
        if match is None:
            raise bad_request(f"The resource '{resource}' is not a valid resource.")
        company = self._simulator.companies.get(match.group(1).strip("'"))
        if company is None:
            raise bad_request(f"The company of resource '{resource}' does not exist.")
        if match.group(2) not in NOTIFIED:
            raise bad_request(
                f"The entity '{match.group(2)}' does not support webhook subscriptions."
            )
        return company.legal_entity, match.group(2)

    def _handshake(self, url: str) -> None:
        """Asks the receiver to echo a fresh token; anything else refuses the subscription."""
        token = secrets.token_urlsafe(24)
        timeout = self._simulator.settings.notification_timeout_s
        self._simulator.books.server.count("business_central.handshakes")
        try:
            answer = httpx.post(url, params={"validationToken": token}, timeout=timeout)
        except httpx.HTTPError:
            raise bad_request(
                "The subscription could not be validated: the notification URL did not answer."
            ) from None
        if answer.status_code != 200 or answer.text.strip() != token:
            raise bad_request(
                "The subscription could not be validated: the notification URL answered "
                f"HTTP {answer.status_code} without the validation token."
            )


class Notifier:
    """Reads the books' outbox on a background thread, batches the changes of every
    subscription, and delivers them every ``notification_interval_s``."""

    def __init__(self, simulator: BusinessCentralSimulator, dsn: str, schema: str) -> None:
        self._simulator = simulator
        self._dsn = dsn
        self._schema = schema
        self._cursor: int | None = None
        self._direct: list[Change] = []
        self._direct_lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bc-notifier", daemon=True)
        self._connection: Connection | None = None
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=DELIVERY_LOG)
        self._http = httpx.Client()
        self.created_customers: set[str] = set()
        """Customers the API created whose first outbox row is their creation."""

    def start(self) -> None:
        with connect(self._dsn, self._schema) as connection:
            row = connection.execute("SELECT coalesce(max(seq), 0) AS seq FROM outbox").fetchone()
        assert row is not None
        self._cursor = int(row["seq"])
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        if self._connection is not None:
            self._connection.close()
        self._http.close()

    def changed(self, change: Change) -> None:
        """A change the API made that the outbox does not record (a sales order's)."""
        with self._direct_lock:
            self._direct.append(change)

    def flush(self, _: Request) -> Response:
        """Delivers what is due now rather than at the next interval."""
        return Response(body={"deliveries": self.tick()})

    def inspect(self, _: Request) -> Response:
        return Response(body={"value": list(self.deliveries)})

    def _run(self) -> None:
        while self._due():
            try:
                self.tick()
            except (psycopg.Error, httpx.HTTPError) as failure:
                log.warning("business central notifications failed: %s", failure)

    def _due(self) -> bool:
        """Waits out the interval (a change of it counts at once); False once stopping."""
        started = time.monotonic()
        while time.monotonic() - started < self._simulator.settings.notification_interval_s:
            if self._stopping.wait(0.05):
                return False
        return True

    def tick(self) -> list[dict[str, Any]]:
        """One round: new changes queued on every subscription watching them, then one batch
        delivered to each subscription with changes waiting."""
        with self._tick_lock:
            changes = self._outbox_changes()
            with self._direct_lock:
                changes.extend(self._direct)
                self._direct.clear()
            subscriptions = self._simulator.subscriptions.current()
            for subscription in subscriptions:
                subscription.pending.extend(
                    c
                    for c in changes
                    if (c.legal_entity, c.entity)
                    == (subscription.legal_entity, subscription.entity)
                    and c.at >= subscription.created_at
                )
            return [
                self._deliver(subscription)
                for subscription in subscriptions
                if subscription.pending
            ]

    def _outbox_changes(self) -> list[Change]:
        if self._connection is None or self._connection.closed:
            self._connection = connect(self._dsn, self._schema)
        rows = self._connection.execute(
            "SELECT seq, aggregatetype, type, payload, created_at FROM outbox "
            "WHERE seq > %s ORDER BY seq",
            (self._cursor or 0,),
        ).fetchall()
        if rows:
            self._cursor = int(rows[-1]["seq"])
        changes = [change for row in rows for change in _changes(row)]
        for index, change in enumerate(changes):
            if change.entity == "customers" and change.id in self.created_customers:
                self.created_customers.discard(change.id)
                changes[index] = replace(change, change_type="created")
        return changes

    def _deliver(self, subscription: Subscription) -> dict[str, Any]:
        settings = self._simulator.settings
        notifications = self._batch(subscription)
        outcome: dict[str, Any] = {
            "subscriptionId": subscription.id,
            "at": timestamp(datetime.now(UTC)),
            "notifications": len(notifications),
        }
        if not notifications:
            subscription.pending.clear()
            outcome["result"] = "dropped"
            self.deliveries.append(outcome)
            return outcome
        try:
            answer = self._http.post(
                subscription.notification_url,
                json={"value": notifications},
                timeout=settings.notification_timeout_s,
            )
            status: int | None = answer.status_code
        except httpx.HTTPError:
            status = None
        outcome["status"] = status
        if status is not None and 200 <= status < 300:
            subscription.pending.clear()
            subscription.failed_attempts = 0
            outcome["result"] = "delivered"
            outcome["value"] = notifications
        elif status is None or status in RETRIED or status >= 500:
            subscription.failed_attempts += 1
            if subscription.failed_attempts >= settings.notification_attempts:
                subscription.pending.clear()
                subscription.failed_attempts = 0
                outcome["result"] = "given_up"
            else:
                outcome["result"] = "retrying"
        else:
            self._simulator.subscriptions.remove(subscription.id)
            outcome["result"] = "subscription_deleted"
        self.deliveries.append(outcome)
        return outcome

    def _batch(self, subscription: Subscription) -> list[dict[str, Any]]:
        settings = self._simulator.settings
        company = self._simulator.company(subscription.legal_entity)
        collection = f"api/v2.0/companies({company.id})/{subscription.entity}"
        base = {
            "subscriptionId": subscription.id,
            "clientState": subscription.client_state,
            "expirationDateTime": timestamp(subscription.expires_at),
        }
        pending = subscription.pending
        if len(pending) > settings.collapse_threshold:
            notifications = [
                {
                    **base,
                    "resource": collection,
                    "changeType": "collection",
                    "lastModifiedDateTime": timestamp(min(c.at for c in pending)),
                }
            ]
        else:
            notifications = [
                {
                    **base,
                    "resource": f"{collection}({change.id})",
                    "changeType": change.change_type,
                    "lastModifiedDateTime": timestamp(change.at),
                }
                for change in pending
            ]
        kept: list[dict[str, Any]] = []
        for notification in notifications:
            if settings.drop_next_notifications > 0:
                settings.drop_next_notifications -= 1
                self._simulator.books.server.count("business_central.notifications_dropped")
                continue
            kept.append(notification)
            if settings.duplicate_next_notifications > 0:
                settings.duplicate_next_notifications -= 1
                kept.append(dict(notification))
        return kept


def _changes(row: dict[str, Any]) -> Iterable[Change]:
    payload = row["payload"]
    at = row["created_at"]
    kind = row["aggregatetype"]
    if kind == "customer":
        customer = payload["customer"]
        yield Change(customer["legal_entity"], "customers", customer["id"], "updated", at)
        return
    order = payload.get("sales_order") or {}
    legal_entity = order.get("legal_entity", "")
    if kind == "invoice":
        invoice = payload["invoice"]
        yield Change(legal_entity, "salesInvoices", invoice["id"], "created", at)
        yield Change(legal_entity, "salesOrders", order["id"], "updated", at)
    elif kind == "payment":
        yield Change(legal_entity, "salesInvoices", payload["invoice"]["id"], "updated", at)
    elif kind == "shipment":
        yield Change(legal_entity, "salesOrders", order["id"], "updated", at)


def _changed() -> Exception:
    return error(
        412,
        "Request_EntityChanged",
        "Could not save the changes because the record was changed by another user.",
    )
