"""The NetSuite simulator: SuiteTalk REST's shape (the M2M token endpoint, the record API with
external-id upserts, idempotency keys and async jobs, SuiteQL, the account's concurrency pool
and NetSuite's error bodies) over the ERP sandbox's books in schema ``netsuite``.

The business (credit, pricing, products, cancellation, customers' rules) is the books', as for
every simulated ERP; this module only speaks NetSuite. A refusal of the books reaches the
caller as an account's beforeSubmit script raises it: 400 with the reason code as
``o:errorCode`` and the field at fault as ``o:errorPath``."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from sandbox.erp import ErpSimulator
from sandbox.erp import customers as books_customers
from sandbox.erp import orders as books_orders
from sandbox.erp.customers import CustomerInvalid
from sandbox.erp.orders import OrderBody
from sandbox.erp.store import Connection
from sandbox.http import CONTROL_PREFIX, HttpFailure, JsonServer, Request, Response
from sandbox.netsuite import records, suiteql
from sandbox.netsuite.auth import TOKEN_PATH, TokenIssuer, refusal
from sandbox.netsuite.records import RECORD, Ids, error_body

SCHEMA = "netsuite"
QUERY = "/services/rest/query/v1/suiteql"
ASYNC = "/services/rest/async/v1/job"
NETSUITE_CONTROL = CONTROL_PREFIX + "netsuite/"
IDEMPOTENCY_HEADER = "x-netsuite-idempotency-key"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def failure(status: int, code: str, detail: str, path: str | None = None) -> HttpFailure:
    return HttpFailure(status, error_body(status, [(code, detail, path)]))


def not_found(kind: str, key: str) -> HttpFailure:
    return failure(404, "NONEXISTENT_ID", f"The record instance does not exist: {kind} {key}.")


@dataclass
class Settings:
    """NetSuite's own knobs (``PUT /__sandbox/netsuite/settings``); the shared faults of
    ``sandbox.http`` apply besides."""

    concurrency_limit: int = 15
    """Requests in flight the account takes at once; one more is refused at once with 429
    CONCURRENCY_LIMIT_EXCEEDED."""
    request_limit_rate: float = 0.0
    """The chance a request is refused with 429 REQUEST_LIMIT_EXCEEDED, as when the account's
    requests per time window are spent."""
    hold_s: float = 0.0
    """How long each request holds its place in the concurrency pool before its work, so a
    test can fill the pool."""
    async_delay_s: float = 0.2
    """How long an async job waits before it runs."""
    token_lifetime_s: int = 3600
    """The ``expires_in`` of the access tokens issued from now on."""
    row_cap: int = suiteql.ROW_CAP
    """How far SuiteQL paging goes (offset + limit); lowered to show the cap without
    100,000 rows."""
    lost_answers: int = 0
    """The next this many writes do their work, then hold their answer back
    ``lost_answer_hold_s``: the caller times out not knowing the write happened."""
    lost_answer_hold_s: float = 15.0
    forced_error_code: str = ""
    """When set, every request (of ``forced_error_method``, if set) is refused with this
    o:errorCode, ``forced_error_status`` and ``forced_error_path``, its work not done: an
    error the account gives only in states the books cannot reach (a role without a
    permission, a record changed under an edit, an unexpected error)."""
    forced_error_status: int = 400
    forced_error_path: str = ""
    forced_error_method: str = ""

    def update(self, changes: Mapping[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise KeyError(name)
            setattr(self, name, type(getattr(self, name))(value))


@dataclass
class Job:
    id: str
    task_id: str
    key: str | None
    progress: str = "pending"
    result: Response | None = None
    done: threading.Event = field(default_factory=threading.Event)


class NetSuiteSimulator:
    """A simulated NetSuite account on ``host:port`` (0: any free port), its books in schema
    ``netsuite`` of ``dsn``; ``integration`` registers one (client id, certificate id, public
    key PEM) at once."""

    def __init__(
        self,
        dsn: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_id: str = "1234567_SB1",
        invoice_delay_s: float = 0.5,
        ship_delay_s: float = 1.0,
        payment_delay_s: float = -1.0,
        reset: bool = False,
        seed: int | None = None,
        concurrency_limit: int = 15,
        timezone: str = "America/Los_Angeles",
        subsidiaries: Mapping[str, str] | None = None,
        currencies: Mapping[str, str] | None = None,
        integration: tuple[str, str, str] | None = None,
        token_lifetime_s: int = 3600,
        schema: str = SCHEMA,
    ) -> None:
        self._dsn = dsn
        self.account_id = account_id
        self.timezone = timezone
        self.books = ErpSimulator(
            dsn,
            host=host,
            port=port,
            schema=schema,
            reference_api=False,
            invoice_delay_s=invoice_delay_s,
            ship_delay_s=ship_delay_s,
            payment_delay_s=payment_delay_s,
            reset=reset,
            seed=seed,
        )
        self.settings = Settings(concurrency_limit=concurrency_limit)
        self.settings.token_lifetime_s = token_lifetime_s
        self.ids = Ids(
            subsidiaries or suiteql.DEFAULT_SUBSIDIARIES, currencies or suiteql.DEFAULT_CURRENCIES
        )
        self.issuer = TokenIssuer(token_lifetime_s)
        if integration is not None:
            self.issuer.register(*integration)
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._job_keys: dict[str, str] = {}
        self._jobs_lock = threading.Lock()
        self._write = threading.local()
        """``connection``: the transaction an idempotent write runs in, on its thread."""
        self._routes()

    @property
    def url(self) -> str:
        return self.books.url

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def server(self) -> JsonServer:
        return self.books.server

    def start(self) -> NetSuiteSimulator:
        self.books.start()
        with self.books.pool.connection() as connection:
            suiteql.install(
                connection,
                self.books.schema,
                self.ids.subsidiaries,
                self.ids.currencies,
                self.timezone,
            )
        return self

    def stop(self) -> None:
        self.books.stop()

    # --- routing ----------------------------------------------------------------------

    def _routes(self) -> None:
        route = self.server.route
        route("POST", TOKEN_PATH, self._token, faults=False)
        record = self._api
        record("GET", RECORD + r"/customer/(?P<id>[^/]+)", self._get_customer)
        record("POST", RECORD + r"/customer", self._create_customer, write=True)
        record("PUT", RECORD + r"/customer/eid:(?P<eid>[^/]+)", self._upsert_customer, write=True)
        record("PATCH", RECORD + r"/customer/(?P<id>[^/]+)", self._update_customer, write=True)
        record("GET", RECORD + r"/salesOrder/(?P<id>[^/]+)", self._get_order)
        record("PUT", RECORD + r"/salesOrder/eid:(?P<eid>[^/]+)", self._upsert_order, write=True)
        record("PATCH", RECORD + r"/salesOrder/(?P<id>[^/]+)", self._update_order, write=True)
        record("GET", RECORD + r"/invoice/(?P<id>[^/]+)", self._get_invoice)
        record("GET", RECORD + r"/itemFulfillment/(?P<id>[^/]+)", self._get_fulfillment)
        record("GET", RECORD + r"/customerPayment/(?P<id>[^/]+)", self._get_payment)
        record("GET", RECORD + r"/inventoryItem/(?P<id>[^/]+)", self._get_item)
        record("GET", RECORD + r"/priceLevel/(?P<id>[^/]+)", self._get_price_level)
        record("GET", RECORD + r"/subsidiary/(?P<id>[^/]+)", self._get_subsidiary)
        record("GET", RECORD + r"/currency/(?P<id>[^/]+)", self._get_currency)
        record("POST", QUERY, self._suiteql)
        record("GET", ASYNC + r"/(?P<job>[^/]+)", self._job)
        record("GET", ASYNC + r"/(?P<job>[^/]+)/task", self._job_tasks)
        record("GET", ASYNC + r"/(?P<job>[^/]+)/task/(?P<task>[^/]+)/result", self._job_result)
        control = self.server.route
        control("GET", NETSUITE_CONTROL + "settings", self._get_settings)
        control("PUT", NETSUITE_CONTROL + "settings", self._put_settings)
        control("POST", NETSUITE_CONTROL + "integrations", self._register)
        control("POST", NETSUITE_CONTROL + "tokens/expire", self._expire_tokens)

    def _api(
        self,
        method: str,
        pattern: str,
        handler: Callable[[Request], Response],
        *,
        write: bool = False,
    ) -> None:
        """Serves a NetSuite route behind the bearer token, the request limit and the
        concurrency pool; a write also takes the idempotency key and ``Prefer:
        respond-async``."""

        def governed(request: Request) -> Response:
            if self.issuer.valid(request.headers.get("authorization", "")) is None:
                raise failure(
                    401,
                    "INVALID_LOGIN",
                    "Invalid login attempt. The access token is missing, unknown or expired.",
                )
            request.params = {name: unquote(value) for name, value in request.params.items()}
            if self.server._chance(self.settings.request_limit_rate):
                self.server.count("netsuite.request_limit_exceeded")
                raise failure(
                    429,
                    "REQUEST_LIMIT_EXCEEDED",
                    "Request limit exceeded. Wait before you send more requests.",
                )
            with self._slot():
                if self.settings.hold_s > 0:
                    time.sleep(self.settings.hold_s)
                self._forced_error(request)
                if not write:
                    return handler(request)
                key = self._key(request)
                if "respond-async" in request.headers.get("prefer", ""):
                    return self._enqueue(request, key, handler)
                response = self._idempotently(request, key, handler)
                if self._lose_answer():
                    time.sleep(self.settings.lost_answer_hold_s)
                return response

        self.server.route(method, pattern, governed)

    def _forced_error(self, request: Request) -> None:
        settings = self.settings
        if settings.forced_error_code and settings.forced_error_method in ("", request.method):
            self.server.count("netsuite.forced_errors")
            raise failure(
                settings.forced_error_status,
                settings.forced_error_code,
                f"Forced {settings.forced_error_code}.",
                settings.forced_error_path or None,
            )

    def _lose_answer(self) -> bool:
        with self._in_flight_lock:
            if self.settings.lost_answers <= 0:
                return False
            self.settings.lost_answers -= 1
        self.server.count("netsuite.lost_answers")
        return True

    @contextmanager
    def _slot(self) -> Iterator[None]:
        with self._in_flight_lock:
            if self._in_flight >= self.settings.concurrency_limit:
                self.server.count("netsuite.concurrency_limit_exceeded")
                raise failure(
                    429,
                    "CONCURRENCY_LIMIT_EXCEEDED",
                    "Concurrent request limit exceeded. Request blocked.",
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    @staticmethod
    def _key(request: Request) -> str | None:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return None
        if not UUID.fullmatch(key.strip()):
            raise failure(
                400, "INVALID_VALUE", "The idempotency key must be a UUID.", IDEMPOTENCY_HEADER
            )
        return key.strip().lower()

    # --- idempotency and async jobs ----------------------------------------------------

    def _idempotently(
        self,
        request: Request,
        key: str | None,
        handler: Callable[[Request], Response],
        job: str | None = None,
    ) -> Response:
        """Runs a write once per key: the key is claimed in the transaction of the work, so a
        refused request leaves it unused, and a repeat of a finished one is refused with
        IDEMPOTENCY_ERROR naming what the first did."""
        if key is None:
            return handler(request)
        with self.books.pool.connection() as connection, connection.transaction():
            claimed = connection.execute(
                "INSERT INTO idempotency_keys (key, request_hash) VALUES (%s, %s) "
                "ON CONFLICT (key) DO NOTHING RETURNING key",
                (f"netsuite:{key}", f"{request.method} {request.path}"),
            ).fetchone()
            if claimed is None:
                stored = connection.execute(
                    "SELECT response FROM idempotency_keys WHERE key = %s", (f"netsuite:{key}",)
                ).fetchone()
                first = (stored or {}).get("response") or {}
                self.server.count("netsuite.idempotency_errors")
                raise failure(
                    400,
                    "IDEMPOTENCY_ERROR",
                    f"A request with idempotency key {key} was already processed: "
                    f"{first.get('job') or first.get('location') or 'see the first request'}.",
                    IDEMPOTENCY_HEADER,
                )
            self._write.connection = connection
            try:
                response = handler(request)
            finally:
                self._write.connection = None
            connection.execute(
                "UPDATE idempotency_keys SET status = %s, response = %s WHERE key = %s",
                (
                    response.status,
                    Jsonb(
                        {
                            "location": response.headers.get("Location"),
                            "job": job,
                        }
                    ),
                    f"netsuite:{key}",
                ),
            )
        return response

    def _enqueue(
        self, request: Request, key: str | None, handler: Callable[[Request], Response]
    ) -> Response:
        job = Job(uuid.uuid4().hex[:12], uuid.uuid4().hex[:8], key)
        with self._jobs_lock:
            if key is not None and key in self._job_keys:
                first = self._job_keys[key]
                self.server.count("netsuite.idempotency_errors")
                raise failure(
                    400,
                    "IDEMPOTENCY_ERROR",
                    f"A request with idempotency key {key} was already processed: {ASYNC}/{first}.",
                    IDEMPOTENCY_HEADER,
                )
            self._jobs[job.id] = job
            if key is not None:
                self._job_keys[key] = job.id

        def run() -> None:
            time.sleep(self.settings.async_delay_s)
            try:
                result = self._idempotently(request, key, handler, f"{ASYNC}/{job.id}")
            except HttpFailure as refused:
                result = refused.response
            except Exception:
                result = Response(500, error_body(500, [("UNEXPECTED_ERROR", "job failed", None)]))
            job.result = result
            job.progress = "succeeded" if result.status < 400 else "failed"
            if result.status >= 400 and key is not None:
                with self._jobs_lock:
                    self._job_keys.pop(key, None)  # a refused request leaves its key unused
            job.done.set()

        threading.Thread(target=run, name=f"netsuite-job-{job.id}", daemon=True).start()
        return Response(202, None, {"Location": f"{self.url}{ASYNC}/{job.id}"})

    def _found_job(self, request: Request) -> Job:
        with self._jobs_lock:
            job = self._jobs.get(request.params["job"])
        if job is None:
            raise not_found("job", request.params["job"])
        return job

    def _job(self, request: Request) -> Response:
        job = self._found_job(request)
        path = f"{self.url}{ASYNC}/{job.id}"
        return Response(
            body={
                "links": [{"rel": "self", "href": path}],
                "id": job.id,
                "completed": job.done.is_set(),
                "progress": job.progress,
                "task": {"links": [{"rel": "related", "href": f"{path}/task"}]},
            }
        )

    def _job_tasks(self, request: Request) -> Response:
        job = self._found_job(request)
        path = f"{self.url}{ASYNC}/{job.id}/task/{job.task_id}"
        return Response(
            body={
                "items": [
                    {
                        "id": job.task_id,
                        "links": [
                            {"rel": "self", "href": path},
                            {"rel": "related", "href": f"{path}/result"},
                        ],
                    }
                ]
            }
        )

    def _job_result(self, request: Request) -> Response:
        job = self._found_job(request)
        if request.params["task"] != job.task_id:
            raise not_found("task", request.params["task"])
        if job.result is None:
            raise failure(400, "USER_ERROR", "The job has not completed yet.")
        return job.result

    # --- the token endpoint -----------------------------------------------------------

    def _token(self, request: Request) -> Response:
        self.issuer.token_lifetime_s = self.settings.token_lifetime_s
        return Response(body=self.issuer.grant(request.body or {}, self.token_url))

    # --- customers --------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """The idempotent write's connection (its transaction open), or one of the pool's in
        a transaction of its own."""
        given: Connection | None = getattr(self._write, "connection", None)
        if given is not None:
            yield given
            return
        with self.books.pool.connection() as connection, connection.transaction():
            yield connection

    def _customer_row(self, connection: Connection, key: str, *, lock: bool = False) -> DictRow:
        column = "crm_account_id" if key.startswith("eid:") else "id"
        value = key.removeprefix("eid:")
        row = connection.execute(
            f"SELECT * FROM customers WHERE {column} = %s"  # noqa: S608 - fixed names
            + (" FOR UPDATE" if lock else ""),
            (value,),
        ).fetchone()
        if row is None:
            raise not_found("customer", key)
        return row

    def _get_customer(self, request: Request) -> Response:
        expand = request.query.get("expandSubResources", ["false"])[0] == "true"
        with self.books.pool.connection() as connection:
            row = self._customer_row(connection, request.params["id"])
            position = connection.execute(
                "SELECT "
                "(SELECT coalesce(sum(i.amount_due), 0) FROM invoices i JOIN sales_orders o "
                " ON o.id = i.sales_order_id WHERE o.customer_id = %(id)s "
                " AND i.status = 'posted') AS balance, "
                "(SELECT coalesce(sum(grand_total), 0) FROM sales_orders "
                " WHERE customer_id = %(id)s AND status = 'open') AS unbilled",
                {"id": row["id"]},
            ).fetchone()
        return Response(body=records.customer_record(row, position, self.ids, expand=expand))

    def _customer_body(
        self, record: Any, existing: Mapping[str, Any] | None
    ) -> books_customers.CustomerBody:
        if not isinstance(record, Mapping):
            raise failure(400, "USER_ERROR", "The request body must be a JSON object.")
        body, unknown = records.customer_body(record, existing, self.ids)
        if unknown:
            raise failure(400, "INVALID_FIELD", f"Unknown field {unknown[0]}.", unknown[0])
        try:
            return books_customers.validated(body)
        except CustomerInvalid as invalid:
            raise self._invalid_customer(invalid) from None

    @staticmethod
    def _invalid_customer(invalid: CustomerInvalid) -> HttpFailure:
        path = records.CUSTOMER_PATHS.get(invalid.field, invalid.field)
        return failure(400, "INVALID_VALUE", f"Invalid value for {path}: {invalid.message}", path)

    def _customer_written(self, row_id: str) -> Response:
        return Response(204, None, {"Location": f"{self.url}{RECORD}/customer/{row_id}"})

    def _create_customer(self, request: Request) -> Response:
        """POST customer: a new customer; its externalId (the CRM account) may have none yet,
        else DUP_RCRD."""
        record = request.body
        external_id = record.get("externalId") if isinstance(record, Mapping) else None
        if not isinstance(external_id, str) or not external_id:
            raise failure(400, "USER_ERROR", "revsync's customers carry an externalId.")
        body = self._customer_body(record, None)
        with self._transaction() as connection:
            status, document = self._books_upsert(connection, external_id, body)
            if status != 201:
                raise failure(
                    400,
                    "DUP_RCRD",
                    "A record with this external ID already exists.",
                    "externalId",
                )
        return self._customer_written(document["customer"]["id"])

    def _upsert_customer(self, request: Request) -> Response:
        external_id = request.params["eid"]
        with self._transaction() as connection:
            existing = connection.execute(
                "SELECT * FROM customers WHERE crm_account_id = %s", (external_id,)
            ).fetchone()
            body = self._customer_body(request.body, existing)
            _, document = self._books_upsert(connection, external_id, body)
        return self._customer_written(document["customer"]["id"])

    def _update_customer(self, request: Request) -> Response:
        with self._transaction() as connection:
            existing = self._customer_row(connection, request.params["id"], lock=True)
            if existing["crm_account_id"] is None:
                raise failure(
                    400, "USER_ERROR", "Only a customer with an externalId is updated here."
                )
            body = self._customer_body(request.body, existing)
            _, document = self._books_upsert(connection, existing["crm_account_id"], body)
        return self._customer_written(document["customer"]["id"])

    def _books_upsert(
        self, connection: Connection, external_id: str, body: books_customers.CustomerBody
    ) -> tuple[int, dict[str, Any]]:
        try:
            return books_customers.upsert(connection, external_id, body)
        except CustomerInvalid as invalid:
            raise self._invalid_customer(invalid) from None

    # --- sales orders -----------------------------------------------------------------

    def _order(self, connection: Connection, key: str) -> tuple[dict[str, Any], list[Any]]:
        if key.startswith("eid:"):
            document = books_orders.find(connection, key.removeprefix("eid:"))
        else:
            row = connection.execute(
                "SELECT external_id FROM sales_orders WHERE id = %s", (key,)
            ).fetchone()
            document = None if row is None else books_orders.find(connection, row["external_id"])
        if document is None:
            raise not_found("salesOrder", key)
        return document, document["lines"]

    def _get_order(self, request: Request) -> Response:
        expand = request.query.get("expandSubResources", ["false"])[0] == "true"
        with self.books.pool.connection() as connection:
            document, lines = self._order(connection, request.params["id"])
        return Response(body=records.order_record(document, lines, self.ids, expand=expand))

    def _order_written(self, order_id: str) -> Response:
        return Response(204, None, {"Location": f"{self.url}{RECORD}/salesOrder/{order_id}"})

    def _upsert_order(self, request: Request) -> Response:
        """PUT salesOrder/eid:X: books the order for external id X; the books amend no booked
        order, so an upsert that finds one leaves it as it is."""
        external_id = request.params["eid"]
        if not isinstance(request.body, Mapping):
            raise failure(400, "USER_ERROR", "The request body must be a JSON object.")
        body, faults = records.order_body(external_id, request.body, self.ids)
        if faults:
            raise HttpFailure(
                400, error_body(400, [("INVALID_VALUE", detail, path) for path, detail in faults])
            )
        try:
            order = OrderBody.model_validate(body)
        except ValidationError as error:
            first = error.errors(include_url=False, include_context=False, include_input=False)[0]
            path = _order_path([str(part) for part in first["loc"]])
            raise failure(400, "INVALID_VALUE", f"Invalid value for {path}.", path) from None
        self.server.count("netsuite.sales_order_upserts")
        with self._transaction() as connection:
            existing = books_orders.find(connection, external_id)
            if existing is not None:
                return self._order_written(existing["id"])
            try:
                booked, _ = books_orders.book(connection, order)
            except HttpFailure as refused:
                raise self._order_refusal(refused, [line.sku for line in order.lines]) from None
        return self._order_written(booked["id"])

    def _order_refusal(self, refused: HttpFailure, skus: list[str]) -> HttpFailure:
        document = refused.response.body
        if refused.response.status == 409 and isinstance(document, Mapping):
            # A concurrent upsert booked it first: NetSuite's unique external id.
            return failure(400, "DUP_RCRD", "A record with this external ID already exists.")
        if refused.response.status == 404:
            return not_found("salesOrder", "?")
        self.server.count("netsuite.sales_orders_rejected")
        return HttpFailure(400, records.order_refusal(document, skus))

    def _update_order(self, request: Request) -> Response:
        """PATCH salesOrder/{id}: ``orderStatus`` C cancels it (with the reason in
        ``custbody_revsync_cancel_reason``); nothing else of a booked order changes."""
        record = request.body if isinstance(request.body, Mapping) else {}
        unknown = sorted(set(record) - {"orderStatus", "custbody_revsync_cancel_reason"})
        if unknown:
            raise failure(
                400, "INVALID_FIELD", f"A booked order's {unknown[0]} does not change.", unknown[0]
            )
        status = record.get("orderStatus")
        if not (isinstance(status, Mapping) and status.get("id") == "C"):
            raise failure(400, "INVALID_VALUE", "orderStatus may only become C.", "orderStatus")
        reason = record.get("custbody_revsync_cancel_reason") or "cancelled"
        with self._transaction() as connection:
            document, _ = self._order(connection, request.params["id"])
            try:
                books_orders.cancel(connection, document["external_id"], str(reason))
            except HttpFailure as refused:
                raise self._order_refusal(refused, []) from None
        return self._order_written(document["id"])

    # --- documents and master data ----------------------------------------------------

    def _one(self, query: str, key: str, kind: str) -> DictRow:
        with self.books.pool.connection() as connection:
            row = connection.execute(query, (key,)).fetchone()
        if row is None:
            raise not_found(kind, key)
        return row

    def _get_invoice(self, request: Request) -> Response:
        row = self._one(
            "SELECT i.*, o.number AS order_number, o.customer_id, o.legal_entity "
            "FROM invoices i JOIN sales_orders o ON o.id = i.sales_order_id WHERE i.id = %s",
            request.params["id"],
            "invoice",
        )
        return Response(body=records.invoice_record(row, self.ids))

    def _get_fulfillment(self, request: Request) -> Response:
        row = self._one(
            "SELECT h.*, o.number AS order_number, o.customer_id "
            "FROM shipments h JOIN sales_orders o ON o.id = h.sales_order_id WHERE h.id = %s",
            request.params["id"],
            "itemFulfillment",
        )
        return Response(body=records.fulfillment_record(row))

    def _get_payment(self, request: Request) -> Response:
        row = self._one(
            "SELECT p.*, i.number AS invoice_number, o.customer_id FROM payments p "
            "JOIN invoices i ON i.id = p.invoice_id "
            "JOIN sales_orders o ON o.id = i.sales_order_id WHERE p.id = %s",
            request.params["id"],
            "customerPayment",
        )
        return Response(body=records.payment_record(row, self.ids))

    def _get_item(self, request: Request) -> Response:
        row = self._one(
            "SELECT * FROM products WHERE sku = %s", request.params["id"], "inventoryItem"
        )
        return Response(body=records.item_record(row, self.ids))

    def _get_price_level(self, request: Request) -> Response:
        row = self._one(
            "SELECT * FROM price_books WHERE id = %s", request.params["id"], "priceLevel"
        )
        return Response(body=records.price_level_record(row, self.ids))

    def _get_subsidiary(self, request: Request) -> Response:
        legal_entity = self.ids.legal_entities.get(request.params["id"])
        if legal_entity is None:
            raise not_found("subsidiary", request.params["id"])
        return Response(
            body={
                "links": [{"rel": "self", "href": f"{RECORD}/subsidiary/{request.params['id']}"}],
                "id": request.params["id"],
                "name": legal_entity,
            }
        )

    def _get_currency(self, request: Request) -> Response:
        code = self.ids.codes.get(request.params["id"])
        if code is None:
            raise not_found("currency", request.params["id"])
        return Response(
            body={
                "links": [{"rel": "self", "href": f"{RECORD}/currency/{request.params['id']}"}],
                "id": request.params["id"],
                "name": code,
                "symbol": code,
            }
        )

    # --- SuiteQL ----------------------------------------------------------------------

    def _suiteql(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, Mapping) else {}
        query = body.get("q")
        if not isinstance(query, str) or not query.strip():
            raise failure(400, "INVALID_PARAMETER", "The request body needs a query q.", "q")
        limit = _count(request, "limit", suiteql.MAX_LIMIT)
        offset = _count(request, "offset", 0)
        if not 1 <= limit <= suiteql.MAX_LIMIT:
            raise failure(
                400, "INVALID_PARAMETER", f"limit must be 1 to {suiteql.MAX_LIMIT}.", "limit"
            )
        if offset + limit > self.settings.row_cap:
            raise failure(
                400,
                "INVALID_PARAMETER",
                f"offset + limit may not pass {self.settings.row_cap} rows; narrow the query.",
                "offset",
            )
        try:
            page = suiteql.run(
                self._dsn, self.books.schema, self.timezone, query, limit=limit, offset=offset
            )
        except suiteql.QueryRefused as refused:
            raise failure(400, "INVALID_PARAMETER", refused.message, "q") from None
        self.server.count("netsuite.suiteql_queries")
        here = f"{self.url}{QUERY}"
        links = [{"rel": "self", "href": f"{here}?limit={limit}&offset={offset}"}]
        has_more = offset + len(page.items) < page.total
        if has_more:
            links.append({"rel": "next", "href": f"{here}?limit={limit}&offset={offset + limit}"})
        if offset > 0:
            previous = max(offset - limit, 0)
            links.append({"rel": "previous", "href": f"{here}?limit={limit}&offset={previous}"})
        return Response(
            body={
                "links": links,
                "count": len(page.items),
                "hasMore": has_more,
                "offset": offset,
                "totalResults": page.total,
                "items": [{"links": [], **item} for item in page.items],
            }
        )

    # --- control ----------------------------------------------------------------------

    def _get_settings(self, _: Request) -> Response:
        return Response(body=asdict(self.settings))

    def _put_settings(self, request: Request) -> Response:
        try:
            self.settings.update(request.body or {})
        except (KeyError, TypeError, ValueError) as error:
            raise HttpFailure(400, {"error": f"bad NetSuite setting: {error}"}) from None
        return Response(body=asdict(self.settings))

    def _register(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, Mapping) else {}
        try:
            self.issuer.register(
                str(body["client_id"]), str(body["certificate_id"]), str(body["public_key_pem"])
            )
        except (KeyError, ValueError) as error:
            raise HttpFailure(400, {"error": f"bad integration: {error}"}) from None
        return Response(201, {"client_id": body["client_id"]})

    def _expire_tokens(self, _: Request) -> Response:
        return Response(body={"expired": self.issuer.expire_all()})


def _count(request: Request, name: str, default: int) -> int:
    values = request.query.get(name)
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError:
        raise failure(400, "INVALID_PARAMETER", f"{name} must be a number.", name) from None


def _order_path(location: list[str]) -> str:
    """A field of the books' order body as the salesOrder record's path."""
    if location[:1] == ["lines"] and len(location) >= 2:
        names = {
            "sku": "item",
            "quantity": "quantity",
            "unit_price": "rate",
            "discount_amount": "custcol_revsync_discount",
            "tax_amount": "custcol_revsync_tax_amount",
            "line_number": "line",
        }
        field_name = names.get(location[2], location[2]) if len(location) > 2 else ""
        return f"item.items[{location[1]}]" + (f".{field_name}" if field_name else "")
    if location[:1] == ["ship_to"]:
        names = {
            "street": "addr1",
            "city": "city",
            "state_province": "state",
            "postal_code": "zip",
            "country_code": "country",
        }
        return "shippingAddress" + (
            f".{names.get(location[1], location[1])}" if len(location) > 1 else ""
        )
    names = {
        "po_number": "otherRefNum",
        "requested_delivery_date": "shipDate",
        "correlation_id": "memo",
        "customer_id": "entity",
        "region": "location",
    }
    return names.get(location[0], location[0]) if location else "body"


# Leave the refusal helper importable for the token route's callers.
__all__ = ["NetSuiteSimulator", "Settings", "failure", "refusal"]
