"""The simulated Salesforce org: an in-memory store of the sObjects revsync uses, the REST API
shapes the adapter calls, change events of Orders, their items and Accounts served by the Pub/Sub
API (gRPC), and a control API for seeding, sales-rep actions and inspection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from revsync.connectors.salesforce import decode_json, encode_json
from sandbox.crm.cdc import CHANGE_EVENT_ENTITIES, CdcKnobs, Change, ChangeCapture
from sandbox.crm.model import (
    PREFIXES,
    SOBJECTS,
    FieldError,
    SObjectType,
    Trigger,
    check_rules,
    coerce,
    new_org,
    normalised_id,
    now,
    record_id,
    sobject_type,
)
from sandbox.crm.pubsub import EventBus, PubSubServer
from sandbox.crm.schemas import NOT_IN_EVENTS
from sandbox.crm.soql import parse
from sandbox.http import CONTROL_PREFIX, HttpFailure, JsonServer, Request, Response, Route

DEFAULT_CLIENT_ID = "revsync-sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # noqa: S105 - the sandbox's published credential
INTEGRATION_USER_ID = "005000000000001AAA"
"""The user the client-credentials token runs as: every API change is theirs."""
SALES_REP_USER_ID = "005000000000002AAA"
"""The user behind the control API's changes, as if made in the Salesforce UI."""
API = r"/services/data/(?P<version>v\d+\.\d)"
QUERY_PAGE_SIZE = 2000
ORDER_STATUS_FIELDS = ("Status", "ERP_Status__c", "Billing_Status__c", "Delivery_Status__c")


@dataclass
class Transaction:
    """Who is changing the org, and the changes to publish when they commit."""

    origin: str
    """A change event's changeOrigin: the API and client, or "" for the UI."""
    user: str
    changes: list[Change] = field(default_factory=list)
    stamp: str = field(default_factory=now)
    """When it happened: every record it writes gets this LastModifiedDate, as in Salesforce,
    so its identical changes to several records can be merged into one event."""


@dataclass
class _Write:
    """A validated record write, ready to apply."""

    sobject: SObjectType
    values: dict[str, Any]
    existing: str | None
    """The id of the record to update; None to create one."""


class CrmSimulator:
    """A Salesforce org for revsync's tests and demo; ``start()`` it, then use ``url``."""

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        host: str = "127.0.0.1",
        port: int = 0,
        pubsub_port: int = 0,
        seed: int | None = None,
        knobs: CdcKnobs | None = None,
        query_page_size: int = QUERY_PAGE_SIZE,
    ) -> None:
        """``port`` serves the REST and control APIs on ``host``, ``pubsub_port`` the Pub/Sub
        API on 127.0.0.1 (0: any free port); ``knobs`` are the change event and Pub/Sub
        knobs to start with; ``seed`` makes the fault dice repeatable."""
        self._client_id = client_id
        self._client_secret = client_secret
        self.query_page_size = query_page_size
        self.triggers: list[Trigger] = []
        """Apex triggers on API writes, as ``PUT /__sandbox/triggers`` sets them."""
        self.next_records_url_override: str | None = None
        """When set, every page that is not the last links to this instead of its next page,
        as a compromised or misbehaving org might (any URL, host or path)."""
        self.server = JsonServer(host, port, seed, loads=decode_json, dumps=encode_json)
        knobs = knobs or CdcKnobs()
        self.cdc = ChangeCapture(knobs, seed)
        self.bus = EventBus(knobs, seed)
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SOBJECTS}
        self._by_external_id: dict[tuple[str, str], dict[str, str]] = {
            (sobject.name, name): {}
            for sobject in SOBJECTS.values()
            for name in sobject.external_ids
        }
        self.org = new_org()
        self.org_id = record_id("00D", self.org, 1)
        """Each simulated org is an org of its own (the Pub/Sub API's tenant id)."""
        self._numbers: dict[str, itertools.count[int]] = {
            name: itertools.count(1) for name in SOBJECTS
        }
        self._order_numbers = itertools.count(100)
        self._items_by_order: dict[str, list[str]] = {}
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._cursor_numbers = itertools.count(1)
        self._tokens: set[str] = set()
        self.pubsub = PubSubServer(
            self.bus, org_id=self.org_id, authorized=self._tokens.__contains__, port=pubsub_port
        )
        self._routes()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pubsub_address(self) -> str:
        """The Pub/Sub API's ``host:port`` (plain gRPC)."""
        return self.pubsub.address

    def start(self) -> CrmSimulator:
        self.server.start()
        self.pubsub.start()
        return self

    def stop(self) -> None:
        self.pubsub.stop()
        self.server.stop()

    # --- Routes ---------------------------------------------------------------------------

    def _routes(self) -> None:
        route = self.server.route
        route("POST", r"/services/oauth2/token", self._token, faults=False)
        api = self._api
        route("GET", API + r"/sobjects/(?P<sobject>\w+)/(?P<id>\w+)", api("get", self._get))
        route("PATCH", API + r"/sobjects/(?P<sobject>\w+)/(?P<id>\w+)", api("update", self._update))
        route(
            "DELETE", API + r"/sobjects/(?P<sobject>\w+)/(?P<id>\w+)", api("delete", self._delete)
        )
        route(
            "GET",
            API + r"/sobjects/(?P<sobject>\w+)/(?P<id>\w+)/(?P<relationship>\w+)",
            api("related", self._related),
        )
        route(
            "PATCH",
            API + r"/sobjects/(?P<sobject>\w+)/(?P<field>\w+)/(?P<value>[^/]+)",
            api("upsert", self._upsert),
        )
        route(
            "PATCH",
            API + r"/composite/sobjects/(?P<sobject>\w+)/(?P<field>\w+)",
            api("collections.upsert", self._upsert_collection),
        )
        route("GET", API + r"/query", api("query", self._query))
        route(
            "GET",
            API + r"/query/(?P<cursor>\w+)-(?P<offset>\d+)",
            api("query.more", self._query_more),
        )
        control = CONTROL_PREFIX
        route("POST", control + r"records/(?P<sobject>\w+)", self._seed)
        route("GET", control + r"records/(?P<sobject>\w+)", self._inspect)
        route("DELETE", control + r"records/(?P<sobject>\w+)/(?P<id>\w+)", self._ui_delete)
        route("PATCH", control + r"records/(?P<sobject>\w+)/(?P<id>\w+)", self._ui_update)
        route("POST", control + r"orders", self._ui_orders)
        route("POST", control + r"orders/(?P<id>\w+)/cancel", self._ui_cancel)
        route("GET", control + r"stats", lambda _: Response(body=self.stats()))
        route("GET", control + r"pubsub", lambda _: Response(body=self.bus.knobs.as_dict()))
        route("PUT", control + r"pubsub", self._set_pubsub)
        route("POST", control + r"pubsub/schema", self._evolve_schema)
        route(
            "POST",
            control + r"pubsub/disconnect",
            lambda _: Response(body={"disconnected": self.bus.disconnect()}),
        )
        route("PUT", control + r"sessions/expire", self._expire_sessions)
        route("PUT", control + r"query", self._set_query)
        route("PUT", control + r"triggers", self._set_triggers)

    def _api(self, name: str, handler: Callable[[Request, Transaction], Response]) -> Route:
        """An API route: signed in, counted, and attributed to the integration user."""

        def serve(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme != "Bearer" or token not in self._tokens:
                raise HttpFailure(
                    401,
                    [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                )
            self.server.count(f"api.{name}")
            version = request.params["version"].removeprefix("v")
            transaction = Transaction(
                f"com/salesforce/api/rest/{version};client={_call_client(request)}",
                INTEGRATION_USER_ID,
            )
            try:
                response = self._committed(transaction, lambda: handler(request, transaction))
            except FieldError as error:
                status = 404 if error.status_code == "NOT_FOUND" else 400
                raise HttpFailure(status, [error.rest()]) from None
            return response

        return serve

    def _committed(self, transaction: Transaction, work: Callable[[], Response]) -> Response:
        """Run ``work`` under the org's lock and publish its change events, so they reach the
        bus in commit order before the caller has its answer."""
        with self._lock:
            response = work()
            self.bus.append(
                self.cdc.events(
                    transaction.changes, origin=transaction.origin, user=transaction.user
                )
            )
        return response

    # --- OAuth ----------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.body if isinstance(request.body, dict) else {}
        self.server.count("oauth.token")
        if form.get("grant_type") != "client_credentials":
            raise HttpFailure(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        known = hmac.compare_digest(str(form.get("client_id", "")), self._client_id)
        secret = hmac.compare_digest(str(form.get("client_secret", "")), self._client_secret)
        if not (known and secret):
            raise HttpFailure(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(32)}"
        with self._lock:
            self._tokens.add(token)
        identity = f"{self.url}/id/{self.org_id}/{INTEGRATION_USER_ID}"
        issued_at = str(int(time.time() * 1000))
        signature = hmac.new(
            self._client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
        ).digest()
        return Response(
            body={
                "access_token": token,
                "instance_url": self.url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": base64.b64encode(signature).decode(),
                "scope": "api",
            }
        )

    def _expire_sessions(self, _request: Request) -> Response:
        with self._lock:
            expired = len(self._tokens)
            self._tokens.clear()
        return Response(body={"expired": expired})

    # --- REST API ---------------------------------------------------------------------------

    def _get(self, request: Request, _transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        record = self._existing(sobject, request.params["id"])
        wanted = _query_value(request, "fields")
        names = list(sobject.fields) if wanted is None else [n.strip() for n in wanted.split(",")]
        sobject.check_fields(names)
        return Response(body=self._rest(request, sobject, {name: record[name] for name in names}))

    def _update(self, request: Request, transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        record = self._existing(sobject, request.params["id"])
        values = _fields(request.body)
        values.pop("Id", None)
        self._apply(self._prepared(sobject, values, record["Id"], api=True), transaction)
        return Response(204)

    def _delete(self, request: Request, transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        self._remove(sobject, self._existing(sobject, request.params["id"])["Id"], transaction)
        return Response(204)

    def _related(self, request: Request, _transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        parent = self._existing(sobject, request.params["id"])
        relationship = request.params["relationship"]
        if (sobject.name, relationship) != ("Order", "OrderItems"):
            raise FieldError("NOT_FOUND", "The requested resource does not exist")
        items = SOBJECTS["OrderItem"]
        children = [self._rest(request, items, record) for record in self._items(parent["Id"])]
        return Response(body=self._first_page(request, children))

    def _upsert(self, request: Request, transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        key_field, key = request.params["field"], unquote(request.params["value"])
        if key_field != "Id" and key_field not in sobject.external_ids:
            raise FieldError(
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {key_field}",
            )
        values = _fields(request.body)
        write = self._prepared_upsert(sobject, key_field, key, values)
        saved_id = self._apply(write, transaction)
        created = write.existing is None
        body = {"id": saved_id, "success": True, "errors": [], "created": created}
        return Response(201 if created else 200, body)

    def _upsert_collection(self, request: Request, transaction: Transaction) -> Response:
        sobject = sobject_type(request.params["sobject"])
        key_field = request.params["field"]
        if key_field != "Id" and key_field not in sobject.external_ids:
            raise FieldError(
                "INVALID_FIELD", f"Field {key_field} is not an external id of {sobject.name}"
            )
        body = request.body if isinstance(request.body, dict) else {}
        records = body.get("records")
        if not isinstance(records, list):
            raise FieldError("JSON_PARSER_ERROR", "records must be a list")
        if len(records) > 200:
            raise FieldError("EXCEEDED_ID_LIMIT", "Maximum number of records exceeded: 200")
        if not body.get("allOrNone"):
            # Each record is checked against the org as the records before it left it.
            results = [
                self._upsert_result(self._keyed(sobject, key_field, record), transaction)
                for record in records
            ]
            return Response(body=results)
        writes = [self._keyed(sobject, key_field, record) for record in records]
        if any(isinstance(write, FieldError) for write in writes):
            rolled_back = FieldError(
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request was "
                "using AllOrNone header",
            )
            results = [
                (write if isinstance(write, FieldError) else rolled_back).collection_result()
                for write in writes
            ]
        else:
            results = [self._upsert_result(write, transaction) for write in writes]
        return Response(body=results)

    def _keyed(self, sobject: SObjectType, key_field: str, record: Any) -> _Write | FieldError:
        """One collection record's write, keyed by the value of its ``key_field``, or why it
        cannot be written."""
        try:
            values = _fields(record)
            key = values.get(key_field)
            if not isinstance(key, str) or not key:
                raise FieldError("MISSING_ARGUMENT", f"{key_field} not specified", [key_field])
            return self._prepared_upsert(sobject, key_field, key, values)
        except FieldError as error:
            return error

    def _upsert_result(
        self, write: _Write | FieldError, transaction: Transaction
    ) -> dict[str, Any]:
        """Apply one collection record; its result as Salesforce reports it."""
        if isinstance(write, FieldError):
            return write.collection_result()
        created = write.existing is None
        saved_id = self._apply(write, transaction)
        return {"id": saved_id, "success": True, "errors": [], "created": created}

    def _query(self, request: Request, _transaction: Transaction) -> Response:
        soql = _query_value(request, "q")
        if soql is None:
            raise FieldError("MALFORMED_QUERY", "q is required")
        query = parse(soql)
        records = query.run(list(self._records[query.sobject.name].values()))
        return Response(
            body=self._first_page(
                request, [self._rest(request, query.sobject, record) for record in records]
            )
        )

    def _query_more(self, request: Request, _transaction: Transaction) -> Response:
        cursor, offset = request.params["cursor"], int(request.params["offset"])
        records = self._cursors.get(cursor)
        if records is None or offset > len(records):
            raise FieldError("INVALID_QUERY_LOCATOR", "invalid query locator")
        return Response(body=self._page(request, cursor, records, offset))

    def _first_page(self, request: Request, records: list[dict[str, Any]]) -> dict[str, Any]:
        cursor = ""
        if len(records) > self.query_page_size:
            cursor = f"01g{next(self._cursor_numbers):012d}"
            self._cursors[cursor] = records
        return self._page(request, cursor, records, 0)

    def _page(
        self, request: Request, cursor: str, records: list[dict[str, Any]], offset: int
    ) -> dict[str, Any]:
        end = offset + self.query_page_size
        page: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records)}
        if not page["done"]:
            page["nextRecordsUrl"] = self.next_records_url_override or (
                f"/services/data/{request.params['version']}/query/{cursor}-{end}"
            )
        else:
            self._cursors.pop(cursor, None)
        page["records"] = records[offset:end]
        return page

    # --- Control API ----------------------------------------------------------------------

    def _ui(self, work: Callable[[Transaction], Any]) -> Response:
        """A control-API change: one transaction by the sales rep in the UI."""
        transaction = Transaction("", SALES_REP_USER_ID)
        try:
            return self._committed(transaction, lambda: Response(body=work(transaction)))
        except FieldError as error:
            raise HttpFailure(
                404 if error.status_code == "NOT_FOUND" else 400, [error.rest()]
            ) from None

    def _seed(self, request: Request) -> Response:
        sobject = sobject_type(request.params["sobject"])
        records = _body_list(request, "records")

        def insert(transaction: Transaction) -> dict[str, Any]:
            writes = [self._prepared(sobject, _fields(r), None, api=False) for r in records]
            return {"ids": [self._apply(write, transaction) for write in writes]}

        return self._ui(insert)

    def _ui_update(self, request: Request) -> Response:
        """A rep editing a record in the UI: what the API could not write they can (their
        own fields), and the change event is theirs."""
        sobject = sobject_type(request.params["sobject"])
        values = _fields(request.body if isinstance(request.body, dict) else {})

        def update(transaction: Transaction) -> dict[str, Any]:
            existing = str(self._existing(sobject, request.params["id"])["Id"])
            write = self._prepared(sobject, values, existing, api=False)
            return {"id": self._apply(write, transaction)}

        return self._ui(update)

    def _inspect(self, request: Request) -> Response:
        sobject = sobject_type(request.params["sobject"])
        wanted = {name: values[-1] for name, values in request.query.items()}
        with self._lock:
            matching = [
                dict(record)
                for record in self._records[sobject.name].values()
                if all(as_text(record.get(name)) == value for name, value in wanted.items())
            ]
        return Response(body={"totalSize": len(matching), "records": matching})

    def _ui_orders(self, request: Request) -> Response:
        orders = _body_list(request, "orders")
        activate = bool((request.body or {}).get("activate", False))

        def create(transaction: Transaction) -> dict[str, Any]:
            prepared = [self._prepared_order(order) for order in orders]
            ids = [self._apply(order, transaction, items) for order, items in prepared]
            if activate:
                # As a rep activating the new orders from a list view: one identical update
                # of every order, after they all exist.
                for order_id in ids:
                    activation = {"Status": "Activated", "ActivatedDate": transaction.stamp}
                    self._apply(_Write(SOBJECTS["Order"], activation, order_id), transaction)
            return {"ids": ids}

        return self._ui(create)

    def _ui_cancel(self, request: Request) -> Response:
        reason = (request.body or {}).get("reason")
        orders = SOBJECTS["Order"]

        def cancel(transaction: Transaction) -> dict[str, Any]:
            order = self._existing(orders, request.params["id"])
            values = {"Status": "Cancelled", "Cancel_Reason__c": reason}
            self._apply(self._prepared(orders, values, order["Id"], api=False), transaction)
            return {"id": order["Id"]}

        return self._ui(cancel)

    def _ui_delete(self, request: Request) -> Response:
        sobject = sobject_type(request.params["sobject"])

        def delete(transaction: Transaction) -> dict[str, Any]:
            existing = self._existing(sobject, request.params["id"])
            self._remove(sobject, existing["Id"], transaction)
            return {"id": existing["Id"]}

        return self._ui(delete)

    def _set_pubsub(self, request: Request) -> Response:
        changes = request.body if isinstance(request.body, dict) else {}
        try:
            return Response(body=self.bus.configure(changes))
        except (KeyError, TypeError, ValueError) as error:
            raise HttpFailure(400, {"error": f"bad Pub/Sub setting: {error}"}) from None

    def _evolve_schema(self, request: Request) -> Response:
        """A new text field first in an entity's change event schema: ``entity``, ``field``."""
        body = request.body if isinstance(request.body, dict) else {}
        entity, name = body.get("entity"), body.get("field")
        if not isinstance(entity, str) or not isinstance(name, str):
            raise HttpFailure(400, {"error": "the body needs the strings 'entity' and 'field'"})
        try:
            schema = self.bus.evolve(entity, name)
        except ValueError as error:
            raise HttpFailure(400, {"error": str(error)}) from None
        return Response(body={"entity": entity, "schema_id": schema.schema_id})

    def _set_query(self, request: Request) -> Response:
        """Query paging: ``page_size``, and ``next_records_url`` (null: the real next page)."""
        changes = request.body if isinstance(request.body, dict) else {}
        if "page_size" in changes:
            size = changes["page_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise HttpFailure(400, {"error": "page_size must be a positive whole number"})
            self.query_page_size = size
        if "next_records_url" in changes:
            link = changes["next_records_url"]
            if link is not None and not isinstance(link, str):
                raise HttpFailure(400, {"error": "next_records_url must be a string or null"})
            self.next_records_url_override = link
        return Response(
            body={
                "page_size": self.query_page_size,
                "next_records_url": self.next_records_url_override,
            }
        )

    def _set_triggers(self, request: Request) -> Response:
        """Replace the org's triggers: ``{"triggers": [{"sobject", "field", "equals",
        "message"}]}`` (see :class:`~sandbox.crm.model.Trigger`)."""
        try:
            triggers = [Trigger.parse(document) for document in _body_list(request, "triggers")]
        except FieldError as error:
            raise HttpFailure(400, [error.rest()]) from None
        self.triggers = triggers
        return Response(body={"triggers": len(triggers)})

    def stats(self) -> dict[str, Any]:
        """Records per sObject, orders per status field, change event counters, the Pub/Sub
        API's channels and subscriptions, API calls per route."""
        with self._lock:
            orders = list(self._records["Order"].values())
            return {
                "records": {name: len(table) for name, table in self._records.items()},
                "orders": {
                    name: dict(Counter(as_text(order[name]) for order in orders))
                    for name in ORDER_STATUS_FIELDS
                },
                "cdc": vars(self.cdc.counters).copy(),
                "pubsub": self.bus.stats(),
                "api_calls": {
                    name.removeprefix("api."): count
                    for name, count in self.server.counters.items()
                    if name.startswith("api.")
                },
            }

    # --- The store --------------------------------------------------------------------------

    def _existing(self, sobject: SObjectType, wanted: str) -> dict[str, Any]:
        record = self._records[sobject.name].get(normalised_id(wanted) or "")
        if record is None:
            raise FieldError("NOT_FOUND", "The requested resource does not exist")
        return record

    def _prepared_upsert(
        self, sobject: SObjectType, key_field: str, key: str, values: dict[str, Any]
    ) -> _Write:
        values.pop(key_field, None)
        if key_field == "Id":
            existing = self._records[sobject.name].get(normalised_id(key) or "")
            if existing is None:
                raise FieldError("NOT_FOUND", f"No {sobject.name} with Id {key}", ["Id"])
            return self._prepared(sobject, values, existing["Id"], api=True)
        found = self._by_external_id[(sobject.name, key_field)].get(key)
        return self._prepared(sobject, {**values, key_field: key}, found, api=True)

    def _prepared(
        self,
        sobject: SObjectType,
        values: Mapping[str, Any],
        existing: str | None,
        *,
        api: bool,
        pending: Iterable[str] = (),
    ) -> _Write:
        """Validate a write: field names, types, lookups, then the record's rules as it would
        be afterwards. ``pending`` ids count as existing (created in the same call)."""
        coerced: dict[str, Any] = {}
        for name, value in values.items():
            coerced[name] = coerce(sobject, name, value)
            spec = sobject.fields[name]
            # Ids are the org's to give (a seed may bring its own, as a data migration does);
            # an item stays with the order it was created on.
            seeded_id = name == "Id" and not api and existing is None
            if seeded_id and (
                not str(coerced[name]).startswith(sobject.prefix)
                or coerced[name] in self._records[sobject.name]
            ):
                raise FieldError("INVALID_ID_FIELD", f"invalid or taken id: {value}", [name])
            if (
                (name == "Id" and not seeded_id)
                or (api and not spec.writable)
                or (existing and name == "OrderId")
            ):
                raise FieldError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}",
                    [name],
                )
            if spec.reference is not None and coerced[name] is not None:
                self._check_reference(name, spec.reference, coerced[name], set(pending))
        for name in sobject.external_ids:
            key = coerced.get(name)
            owner = self._by_external_id[(sobject.name, name)].get(key) if key else None
            if owner is not None and owner != existing:
                raise FieldError(
                    "DUPLICATE_VALUE", f"duplicate value found: {name} duplicates {owner}", [name]
                )
        before = self._records[sobject.name][existing] if existing else {}
        check_rules(sobject, {**before, **coerced})
        if api:
            for trigger in self.triggers:
                trigger.fire(sobject, {**before, **coerced})
        return _Write(sobject, coerced, existing)

    def _check_reference(self, name: str, target: str, value: str, pending: set[str]) -> None:
        if value in pending:
            return
        if PREFIXES.get(value[:3]) != target:
            raise FieldError(
                "FIELD_INTEGRITY_EXCEPTION", f"{name}: id value of incorrect type: {value}", [name]
            )
        if value not in self._records[target]:
            raise FieldError(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", [name]
            )

    def _prepared_order(self, order: Any) -> tuple[_Write, list[_Write]]:
        if not isinstance(order, dict):
            raise FieldError("JSON_PARSER_ERROR", "each order is a JSON object")
        values = dict(order)
        lines = values.pop("items", [])
        values.setdefault("Status", "Draft")
        write = self._prepared(SOBJECTS["Order"], values, None, api=False)
        # The order's id is taken now so that its items can be validated against it.
        order_id = record_id("801", self.org, next(self._numbers["Order"]))
        write.values["Id"] = order_id
        items = [
            self._prepared(
                SOBJECTS["OrderItem"],
                {**_fields(line), "OrderId": order_id},
                None,
                api=False,
                pending=[order_id],
            )
            for line in lines
        ]
        return write, items

    def _apply(self, write: _Write, transaction: Transaction, items: Sequence[_Write] = ()) -> str:
        """Store a validated write (with an order's items), recording its change when its
        sObject publishes change events."""
        sobject, table = write.sobject, self._records[write.sobject.name]
        stamp = transaction.stamp
        published = sobject.name in CHANGE_EVENT_ENTITIES
        if write.existing is None:
            new_id = write.values.pop("Id", None) or record_id(
                sobject.prefix, self.org, next(self._numbers[sobject.name])
            )
            record: dict[str, Any] = dict.fromkeys(sobject.fields)
            record.update(write.values, Id=new_id)
            for name in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
                if name in record:
                    record[name] = stamp
            if sobject.name == "OrderItem":
                self._items_by_order.setdefault(record["OrderId"], []).append(new_id)
            self._derive(sobject, record)
            table[new_id] = record
            self._index(sobject, record, {})
            position = len(transaction.changes)
            for item in items:
                self._apply(item, transaction)
            if sobject.name == "Order":
                self._total(record)
            if published:
                # Before its items' CREATEs, though its roll-up total already counts them.
                values = {
                    name: value
                    for name, value in record.items()
                    if value is not None and name not in NOT_IN_EVENTS
                }
                transaction.changes.insert(position, Change(sobject.name, "CREATE", new_id, values))
            return new_id
        record = table[write.existing]
        before = dict(record)
        record.update(write.values, LastModifiedDate=stamp, SystemModstamp=stamp)
        self._derive(sobject, record)
        self._index(sobject, record, before)
        if sobject.name == "OrderItem":
            self._total(self._records["Order"][record["OrderId"]])
        if published:
            changed = [
                name
                for name in sobject.fields
                if name not in NOT_IN_EVENTS
                and (record[name] != before[name] or name == "LastModifiedDate")
            ]
            transaction.changes.append(
                Change(
                    sobject.name,
                    "UPDATE",
                    record["Id"],
                    {name: record[name] for name in changed},
                    tuple(changed),
                    tuple(name for name in changed if record[name] is None),
                )
            )
        return str(record["Id"])

    def _remove(self, sobject: SObjectType, removed_id: str, transaction: Transaction) -> None:
        """Delete a record; an Order's items go with it, without change events of their own
        (a cascade delete publishes only the parent's)."""
        record = self._records[sobject.name].pop(removed_id)
        for name in sobject.external_ids:
            if record.get(name) is not None:
                self._by_external_id[(sobject.name, name)].pop(record[name], None)
        if sobject.name in CHANGE_EVENT_ENTITIES:
            transaction.changes.append(Change(sobject.name, "DELETE", removed_id))
        if sobject.name == "Order":
            for item_id in self._items_by_order.pop(removed_id, []):
                del self._records["OrderItem"][item_id]
        elif sobject.name == "OrderItem":
            self._items_by_order[record["OrderId"]].remove(removed_id)
            self._total(self._records["Order"][record["OrderId"]])

    def _derive(self, sobject: SObjectType, record: dict[str, Any]) -> None:
        """The fields Salesforce computes: numbers and line totals."""
        if sobject.name == "Order" and record["OrderNumber"] is None:
            record["OrderNumber"] = f"{next(self._order_numbers):08d}"
        if sobject.name == "OrderItem":
            if record["OrderItemNumber"] is None:
                siblings = len(self._items_by_order[record["OrderId"]])
                record["OrderItemNumber"] = f"{siblings:010d}"
            quantity, price = record["Quantity"], record["UnitPrice"]
            record["TotalPrice"] = quantity * price - (record["Discount__c"] or Decimal(0))

    def _items(self, order_id: str) -> list[dict[str, Any]]:
        items = self._records["OrderItem"]
        return [items[item_id] for item_id in self._items_by_order.get(order_id, [])]

    def _total(self, order: dict[str, Any]) -> None:
        """An Order's TotalAmount, the sum of its items' TotalPrice (a roll-up in Salesforce,
        so it changes without a change event of its own)."""
        order["TotalAmount"] = sum(
            (item["TotalPrice"] for item in self._items(order["Id"])), Decimal(0)
        )

    def _index(
        self, sobject: SObjectType, record: Mapping[str, Any], before: Mapping[str, Any]
    ) -> None:
        for name in sobject.external_ids:
            index = self._by_external_id[(sobject.name, name)]
            if before.get(name) is not None and before[name] != record.get(name):
                index.pop(before[name], None)
            if record.get(name) is not None:
                index[record[name]] = record["Id"]

    def _rest(
        self, request: Request, sobject: SObjectType, record: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A record as the REST API writes it, with its ``attributes``."""
        url = f"/services/data/{request.params['version']}/sobjects/{sobject.name}/"
        return {
            "attributes": {"type": sobject.name, "url": url + str(record.get("Id", ""))},
            **record,
        }


def _call_client(request: Request) -> str:
    """The ``client`` of the ``Sforce-Call-Options`` header, "" without one."""
    for option in request.headers.get("sforce-call-options", "").split(","):
        name, _, value = option.strip().partition("=")
        if name == "client":
            return value
    return ""


def _query_value(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[-1] if values else None


def _fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FieldError("JSON_PARSER_ERROR", "a record is a JSON object")
    return {name: value for name, value in body.items() if name != "attributes"}


def _body_list(request: Request, name: str) -> list[Any]:
    items = (request.body or {}).get(name) if isinstance(request.body, dict) else None
    if not isinstance(items, list):
        raise HttpFailure(400, {"error": f"the body needs a list '{name}'"})
    return items


def as_text(value: Any) -> str:
    """A field value as the inspection routes compare it with a query parameter."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
