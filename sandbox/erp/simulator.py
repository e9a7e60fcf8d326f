"""The ERP simulator: the reference REST API of ``revsync.connectors.erp`` over PostgreSQL
schema ``erp``, the control API, and the background progression of orders.

The books, the control API and the progression also carry the simulators of vendors' APIs
(``sandbox.netsuite``, ``sandbox.business_central``): each makes one of these in a schema of
its own without the reference API (``reference_api=False``) and serves its vendor's routes on
:attr:`ErpSimulator.server` over :attr:`ErpSimulator.pool`."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date
from decimal import Decimal
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from psycopg import errors, sql
from pydantic import BaseModel, Field, ValidationError

from revsync.ports.erp import CustomerQuery
from sandbox.erp import customers, orders
from sandbox.erp.control import ErpStats
from sandbox.erp.customers import CustomerEdit, CustomerInvalid
from sandbox.erp.orders import CancelBody, OrderBody, StrictBody, amount
from sandbox.erp.progression import Clock, Progression
from sandbox.erp.store import (
    DEFAULT_SCHEMA,
    Connection,
    ConnectionPool,
    connect,
    migrate,
    reset,
)
from sandbox.http import CONTROL_PREFIX, HttpFailure, JsonServer, Request, Response

API = "/api/v1"
DEFAULT_API_TOKEN = "sandbox-erp-token"  # noqa: S105 - the sandbox's published default
STATUSES = ("open", "invoiced", "shipped", "cancelled")

M = TypeVar("M", bound=BaseModel)


class CustomerSeed(StrictBody):
    id: str = Field(min_length=1)
    number: str | None = Field(default=None, min_length=1)
    """None: the next customer number."""
    name: str = Field(min_length=1)
    crm_account_id: str | None = None
    legal_entity: str = Field(min_length=1)
    status: Literal["active", "blocked", "credit_hold"] = "active"
    credit_limit: Decimal = Field(ge=0, allow_inf_nan=False)
    currency: str = Field(min_length=3, max_length=3)
    payment_terms: str = Field(default=customers.DEFAULT_PAYMENT_TERMS, min_length=1)
    blocks: list[str] = Field(default_factory=list)
    tax_id: str | None = None
    duns: str | None = None
    country_code: str | None = Field(default=None, min_length=2, max_length=2)


class ProductSeed(StrictBody):
    sku: str = Field(min_length=1)
    name: str = Field(min_length=1)
    product_line: str = Field(min_length=1)
    unit_of_measure: str = "EA"
    active: bool = True
    legal_entities: list[str] = Field(default_factory=list)
    """Where the product is sold; empty means every legal entity."""


class PriceEntrySeed(StrictBody):
    sku: str = Field(min_length=1)
    unit_price: Decimal = Field(ge=0, allow_inf_nan=False)


class PriceBookSeed(StrictBody):
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    currency: str = Field(min_length=3, max_length=3)
    legal_entity: str = Field(min_length=1)
    entries: list[PriceEntrySeed] = Field(default_factory=list)


class StockSeed(StrictBody):
    sku: str = Field(min_length=1)
    region: str = Field(min_length=1)
    quantity: Decimal = Field(ge=0, allow_inf_nan=False)
    available_on: date | None = None


class AvailabilityBody(StrictBody):
    """The body of ``POST /api/v1/availability``."""

    region: str = Field(min_length=1)
    skus: list[str]


class CustomersSeed(StrictBody):
    customers: list[CustomerSeed]


class StockLevelsSeed(StrictBody):
    stock: list[StockSeed]


class ProductsSeed(StrictBody):
    products: list[ProductSeed]


class PriceBooksSeed(StrictBody):
    price_books: list[PriceBookSeed]


def _parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body if body is not None else {})
    except ValidationError as error:
        details = error.errors(include_url=False, include_context=False, include_input=False)
        raise HttpFailure(
            400,
            {
                "code": "invalid_request",
                "message": "; ".join(
                    f"{'.'.join(map(str, d['loc'])) or 'body'}: {d['msg']}" for d in details
                ),
            },
        ) from None


def _not_found(what: str) -> HttpFailure:
    return HttpFailure(404, {"code": "not_found", "message": f"no {what}"})


def _duplicate(message: str) -> HttpFailure:
    return HttpFailure(409, {"code": "duplicate_value", "message": message})


class ErpSimulator:
    """The simulated ERP on ``host:port`` (0: any free port), its state in ``dsn``."""

    def __init__(
        self,
        dsn: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_token: str = DEFAULT_API_TOKEN,
        invoice_delay_s: float = 0.5,
        ship_delay_s: float = 1.0,
        payment_delay_s: float = -1.0,
        reset: bool = False,
        tick_s: float = 0.1,
        pool_size: int = 16,
        seed: int | None = None,
        schema: str = DEFAULT_SCHEMA,
        reference_api: bool = True,
    ) -> None:
        self._dsn = dsn
        self.schema = schema
        self._token = f"Bearer {api_token}".encode()
        self._reset_at_start = reset
        self.clock = Clock()
        self.clock.update(
            {
                "invoice_delay_s": invoice_delay_s,
                "ship_delay_s": ship_delay_s,
                "payment_delay_s": payment_delay_s,
            }
        )
        self.server = JsonServer(host, port, seed=seed)
        self.pool = ConnectionPool(dsn, pool_size, schema)
        self.progression = Progression(dsn, self.clock, tick_s=tick_s, schema=schema)
        if reference_api:
            self._api_routes()
        self._control_routes()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ErpSimulator:
        with connect(self._dsn, self.schema) as connection:
            migrate(connection)
            if self._reset_at_start:
                reset(connection)
        self.server.start()
        self.progression.start()
        return self

    def stop(self) -> None:
        self.progression.stop()
        self.server.stop()
        self.pool.close()

    def _api_routes(self) -> None:
        api = self._api
        api("GET", r"/customers", self._find_customers)
        api("GET", r"/customers/(?P<id>[^/]+)", self._customer)
        api("GET", r"/customers/(?P<id>[^/]+)/credit", self._credit)
        api("PUT", r"/customers/by-external-id/(?P<crm_account_id>[^/]+)", self._upsert_customer)
        api("POST", r"/availability", self._availability)
        api("GET", r"/products", self._products)
        api("GET", r"/price-books/(?P<id>[^/]+)", self._price_book)
        api("POST", r"/sales-orders", self._create_order)
        api("GET", r"/sales-orders", self._find_orders)
        api("POST", r"/sales-orders/(?P<external_id>[^/]+)/cancel", self._cancel_order)

    def _control_routes(self) -> None:
        control = self.server.route
        control("POST", CONTROL_PREFIX + "customers", self._seed_customers)
        control("PATCH", CONTROL_PREFIX + "customers/(?P<id>[^/]+)", self._edit_customer)
        control("POST", CONTROL_PREFIX + "stock", self._seed_stock)
        control("POST", CONTROL_PREFIX + "products", self._seed_products)
        control("POST", CONTROL_PREFIX + "price-books", self._seed_price_books)
        control("GET", CONTROL_PREFIX + "stats", self._stats)
        control("GET", CONTROL_PREFIX + "sales-orders", self._all_orders)
        control("GET", CONTROL_PREFIX + "clock", lambda _: Response(body=self.clock.settings()))
        control("PUT", CONTROL_PREFIX + "clock", self._set_clock)
        control("POST", CONTROL_PREFIX + "reset", self._reset)

    def _api(self, method: str, pattern: str, handler: Callable[[Request], Response]) -> None:
        def authorised(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self._token):
                raise HttpFailure(
                    401, {"code": "unauthorized", "message": "a valid bearer token is required"}
                )
            request.params = {name: unquote(value) for name, value in request.params.items()}
            return handler(request)

        self.server.route(method, API + pattern, authorised)

    # --- the ERP API ------------------------------------------------------------------

    def _customer(self, request: Request) -> Response:
        with self.pool.connection() as connection:
            row = connection.execute(
                "SELECT * FROM customers WHERE id = %s", (request.params["id"],)
            ).fetchone()
        if row is None:
            raise _not_found(f"customer {request.params['id']!r}")
        return Response(body=customers.document(row))

    def _find_customers(self, request: Request) -> Response:
        """By external id (``external_id``), or every customer matching any criterion."""
        given = {name: values[0] for name, values in request.query.items()}
        if "external_id" in given:
            if len(given) > 1:
                raise HttpFailure(
                    400, {"code": "invalid_request", "message": "external_id goes alone"}
                )
            with self.pool.connection() as connection:
                items = customers.by_account(connection, given["external_id"])
        else:
            query = _customer_query(given)
            with self.pool.connection() as connection:
                items = customers.find(connection, query)
        return Response(body={"items": items})

    def _upsert_customer(self, request: Request) -> Response:
        key = _idempotency_key(request)
        crm_account_id = request.params["crm_account_id"]

        def upsert(connection: Connection) -> tuple[int, dict[str, Any]]:
            try:
                body = customers.validated(request.body)
                return customers.upsert(connection, crm_account_id, body)
            except CustomerInvalid as invalid:
                raise invalid.refusal() from None

        return self._idempotently(key, request, f"customer {crm_account_id}", upsert, "customers")

    def _credit(self, request: Request) -> Response:
        with self.pool.connection() as connection:
            position = customers.credit(connection, request.params["id"])
        if position is None:
            raise _not_found(f"customer {request.params['id']!r}")
        return Response(body=position)

    def _availability(self, request: Request) -> Response:
        body = _parse(AvailabilityBody, request.body)
        with self.pool.connection() as connection:
            rows = connection.execute(
                "SELECT sku, region, quantity, available_on FROM stock "
                "WHERE region = %s AND sku = ANY(%s) ORDER BY sku",
                (body.region, body.skus),
            ).fetchall()
        items = [
            {
                **row,
                "quantity": amount(row["quantity"]),
                "available_on": row["available_on"].isoformat() if row["available_on"] else None,
            }
            for row in rows
        ]
        return Response(body={"items": items})

    def _products(self, request: Request) -> Response:
        skus = request.query.get("sku", [])
        with self.pool.connection() as connection:
            rows = connection.execute(
                "SELECT * FROM products WHERE sku = ANY(%s) ORDER BY sku", (skus,)
            ).fetchall()
        return Response(body={"items": rows})

    def _price_book(self, request: Request) -> Response:
        with self.pool.connection() as connection:
            book = connection.execute(
                "SELECT * FROM price_books WHERE id = %s", (request.params["id"],)
            ).fetchone()
            if book is None:
                raise _not_found(f"price book {request.params['id']!r}")
            entries = connection.execute(
                "SELECT sku, unit_price FROM price_book_entries WHERE price_book_id = %s "
                "ORDER BY sku",
                (book["id"],),
            ).fetchall()
        return Response(
            body={
                **book,
                "entries": [
                    {"sku": e["sku"], "unit_price": amount(e["unit_price"])} for e in entries
                ],
            }
        )

    def _create_order(self, request: Request) -> Response:
        key = _idempotency_key(request)
        body = _parse(OrderBody, request.body)
        self.server.count("sales_orders.create_requests")

        def book(connection: Connection) -> tuple[int, dict[str, Any]]:
            order, lines = orders.book(connection, body)
            return 201, orders.document(order, lines)

        return self._idempotently(key, request, "create", book, "sales_orders")

    def _cancel_order(self, request: Request) -> Response:
        key = _idempotency_key(request)
        external_id = request.params["external_id"]
        body = _parse(CancelBody, request.body)

        def cancel(connection: Connection) -> tuple[int, dict[str, Any]]:
            return 200, orders.cancel(connection, external_id, body.reason)

        return self._idempotently(key, request, f"cancel {external_id}", cancel, "sales_orders")

    def _idempotently(
        self,
        key: str,
        request: Request,
        action: str,
        work: Callable[[Connection], tuple[int, dict[str, Any]]],
        counted_as: str,
    ) -> Response:
        """Run ``work`` once per idempotency key: a repeat of the same request gets the stored
        answer, in the same transaction that claims the key. Replays and refusals are counted
        under ``counted_as`` (``sales_orders``, ``customers``)."""
        fingerprint = orders.request_hash(action, request.body)
        with (
            self.pool.connection() as connection,
            self._counting_refusals(counted_as),
            connection.transaction(),
        ):
            replay = orders.claim_key(connection, key, fingerprint)
            if replay is not None:
                self.server.count(f"{counted_as}.idempotent_replays")
                return replay
            status, document = work(connection)
            orders.store_answer(connection, key, status, document)
        return Response(status, document)

    def _find_orders(self, request: Request) -> Response:
        external_id = request.query.get("external_id", [""])[0]
        if not external_id:
            raise HttpFailure(
                400, {"code": "invalid_request", "message": "external_id is required"}
            )
        with self.pool.connection() as connection:
            return Response(body={"items": orders.documents(connection, external_id)})

    @contextmanager
    def _counting_refusals(self, counted_as: str) -> Iterator[None]:
        """Counts the 409s and 422s the block answers with, letting them through."""
        try:
            yield
        except HttpFailure as failure:
            if failure.response.status == 409:
                self.server.count(f"{counted_as}.duplicate_external_ids")
            elif failure.response.status == 422:
                self.server.count(f"{counted_as}.rejected")
            raise

    # --- the control API ---------------------------------------------------------------

    def _seed_customers(self, request: Request) -> Response:
        """Creates or replaces customers as the ERP held them before revsync: no outbox rows.
        A seed without a number keeps the one it has, or takes the next."""
        seed = _parse(CustomersSeed, request.body)
        rows = customers.seed_keys([c.model_dump() for c in seed.customers])
        try:
            with self.pool.connection() as connection, connection.transaction():
                connection.cursor().executemany(SEED_CUSTOMER, rows)
        except errors.UniqueViolation:
            raise _duplicate("a seeded customer's number or crm_account_id is another's") from None
        return Response(body={"upserted": len(seed.customers)})

    def _edit_customer(self, request: Request) -> Response:
        """An ERP user's edit: the customer's document afterwards."""
        changes = _parse(CustomerEdit, request.body)
        try:
            with self.pool.connection() as connection, connection.transaction():
                return Response(body=customers.edit(connection, request.params["id"], changes))
        except errors.UniqueViolation:
            raise _duplicate("the CRM account is another customer's") from None

    def _seed_stock(self, request: Request) -> Response:
        seed = _parse(StockLevelsSeed, request.body)
        with self.pool.connection() as connection, connection.transaction():
            _upsert(connection, "stock", ("sku", "region"), [s.model_dump() for s in seed.stock])
        return Response(body={"upserted": len(seed.stock)})

    def _seed_products(self, request: Request) -> Response:
        seed = _parse(ProductsSeed, request.body)
        with self.pool.connection() as connection, connection.transaction():
            _upsert(connection, "products", ("sku",), [p.model_dump() for p in seed.products])
        return Response(body={"upserted": len(seed.products)})

    def _seed_price_books(self, request: Request) -> Response:
        """Replaces each book's entries as a whole, so a seed is the book's full price list."""
        seed = _parse(PriceBooksSeed, request.body)
        with self.pool.connection() as connection, connection.transaction():
            books = [book.model_dump(exclude={"entries"}) for book in seed.price_books]
            _upsert(connection, "price_books", ("id",), books)
            cursor = connection.cursor()
            cursor.execute(
                "DELETE FROM price_book_entries WHERE price_book_id = ANY(%s)",
                ([book.id for book in seed.price_books],),
            )
            cursor.executemany(
                "INSERT INTO price_book_entries (price_book_id, sku, unit_price) "
                "VALUES (%s, %s, %s)",
                [
                    (book.id, entry.sku, entry.unit_price)
                    for book in seed.price_books
                    for entry in book.entries
                ],
            )
        return Response(body={"upserted": len(seed.price_books)})

    def _stats(self, _: Request) -> Response:
        with self.pool.connection() as connection:
            by_status = {
                row["status"]: row["n"]
                for row in connection.execute(
                    "SELECT status, count(*) AS n FROM sales_orders GROUP BY status"
                )
            }
            totals = connection.execute(
                "SELECT (SELECT count(*) FROM invoices) AS invoices, "
                "(SELECT count(*) FROM shipments) AS shipments, "
                "(SELECT count(*) FROM payments) AS payments, "
                "(SELECT count(*) FROM outbox) AS outbox_rows"
            ).fetchone()
        assert totals is not None
        counters = dict(self.server.counters)
        stats = ErpStats(
            sales_orders={status: by_status.get(status, 0) for status in STATUSES},
            create_requests=counters.get("sales_orders.create_requests", 0),
            idempotent_replays=counters.get("sales_orders.idempotent_replays", 0),
            duplicate_external_ids=counters.get("sales_orders.duplicate_external_ids", 0),
            rejected=counters.get("sales_orders.rejected", 0),
            invoices=totals["invoices"],
            shipments=totals["shipments"],
            payments=totals["payments"],
            outbox_rows=totals["outbox_rows"],
        )
        return Response(body=asdict(stats))

    def _all_orders(self, request: Request) -> Response:
        external_id = request.query.get("external_id", [None])[0]
        with self.pool.connection() as connection:
            return Response(body={"items": orders.documents(connection, external_id)})

    def _set_clock(self, request: Request) -> Response:
        try:
            self.clock.update(request.body or {})
        except (TypeError, ValueError) as error:
            raise HttpFailure(400, {"code": "invalid_request", "message": str(error)}) from None
        return Response(body=self.clock.settings())

    def _reset(self, _: Request) -> Response:
        with self.pool.connection() as connection:
            reset(connection)
        self.server.counters.clear()
        return Response(body={"reset": True})


def _upsert(
    connection: Connection, table: str, key: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    """Inserts ``rows`` into ``erp.<table>``, replacing any row with the same ``key``."""
    if not rows:
        return
    columns = list(rows[0])
    query = sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES ({values}) "
        "ON CONFLICT ({key}) DO UPDATE SET {updates}"
    ).format(
        table=sql.Identifier(table),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(map(sql.Placeholder, columns)),
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(column))
            for column in columns
            if column not in key
        ),
    )
    connection.cursor().executemany(query, rows)


SEED_CUSTOMER = (
    "INSERT INTO customers (id, number, name, crm_account_id, legal_entity, status, "
    "credit_limit, currency, payment_terms, blocks, tax_id, duns, country_code, name_key, "
    "tax_id_key, duns_key) VALUES (%(id)s, coalesce(%(number)s, "
    "nextval('customer_numbers')::text), %(name)s, %(crm_account_id)s, %(legal_entity)s, "
    "%(status)s, %(credit_limit)s, %(currency)s, %(payment_terms)s, %(blocks)s, %(tax_id)s, "
    "%(duns)s, %(country_code)s, %(name_key)s, %(tax_id_key)s, %(duns_key)s) "
    "ON CONFLICT (id) DO UPDATE SET number = coalesce(%(number)s, customers.number), "
    "name = excluded.name, crm_account_id = excluded.crm_account_id, "
    "legal_entity = excluded.legal_entity, status = excluded.status, "
    "credit_limit = excluded.credit_limit, currency = excluded.currency, "
    "payment_terms = excluded.payment_terms, blocks = excluded.blocks, "
    "tax_id = excluded.tax_id, duns = excluded.duns, country_code = excluded.country_code, "
    "name_key = excluded.name_key, tax_id_key = excluded.tax_id_key, "
    "duns_key = excluded.duns_key, updated_at = now()"
)


def _customer_query(given: dict[str, str]) -> CustomerQuery:
    """The search criteria of a customers query; 400 for an unknown or incomplete one."""
    unknown = sorted(set(given) - {"tax_id", "duns", "name", "country"})
    if unknown:
        raise HttpFailure(
            400, {"code": "invalid_request", "message": f"unknown parameters {unknown}"}
        )
    if not given:
        raise HttpFailure(
            400,
            {
                "code": "invalid_request",
                "message": "give external_id, or any of tax_id, duns, name with country",
            },
        )
    try:
        return CustomerQuery(
            tax_id=given.get("tax_id"),
            duns=given.get("duns"),
            name=given.get("name"),
            country_code=given.get("country"),
        )
    except ValueError as error:
        raise HttpFailure(400, {"code": "invalid_request", "message": str(error)}) from None


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise HttpFailure(
            400, {"code": "idempotency_key_required", "message": "Idempotency-Key is required"}
        )
    return key
