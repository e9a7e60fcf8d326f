"""The ERP simulator's PostgreSQL schema (``erp`` unless told another), and a small pool of
connections to it.

The statements name tables without their schema: a connection finds them on its
``search_path``, which :func:`connect` sets to the simulator's schema. So several simulators
(the reference ERP, and the ERPs whose APIs are simulated over the same business logic) keep
their books apart in one database."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row

DEFAULT_SCHEMA = "erp"

SCHEMA = """

CREATE TABLE IF NOT EXISTS customers (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    crm_account_id text,
    legal_entity   text NOT NULL,
    status         text NOT NULL CHECK (status IN ('active', 'blocked', 'credit_hold')),
    credit_limit   numeric(18, 4) NOT NULL,
    currency       char(3) NOT NULL
);
-- Customers mastered from CRM accounts. ADD COLUMN IF NOT EXISTS also upgrades a schema an
-- older simulator created; the *_key columns are what a search compares (revsync.ports.erp's
-- normalised_name and normalised_identifier of name, tax_id and duns).
CREATE SEQUENCE IF NOT EXISTS customer_numbers START 100001;
ALTER TABLE customers
    ADD COLUMN IF NOT EXISTS number text NOT NULL
        DEFAULT nextval('customer_numbers')::text,
    ADD COLUMN IF NOT EXISTS payment_terms text NOT NULL DEFAULT 'NET30',
    ADD COLUMN IF NOT EXISTS blocks text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS tax_id text,
    ADD COLUMN IF NOT EXISTS duns text,
    ADD COLUMN IF NOT EXISTS country_code text,
    ADD COLUMN IF NOT EXISTS billing_street text,
    ADD COLUMN IF NOT EXISTS billing_city text,
    ADD COLUMN IF NOT EXISTS billing_state_province text,
    ADD COLUMN IF NOT EXISTS billing_postal_code text,
    ADD COLUMN IF NOT EXISTS billing_country_code text,
    ADD COLUMN IF NOT EXISTS name_key text,
    ADD COLUMN IF NOT EXISTS tax_id_key text,
    ADD COLUMN IF NOT EXISTS duns_key text,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX IF NOT EXISTS customers_number ON customers (number);
CREATE UNIQUE INDEX IF NOT EXISTS customers_crm_account_id ON customers (crm_account_id)
    WHERE crm_account_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS customers_tax_id ON customers (tax_id_key);
CREATE INDEX IF NOT EXISTS customers_duns ON customers (duns_key);
CREATE INDEX IF NOT EXISTS customers_name ON customers (name_key, country_code);

CREATE TABLE IF NOT EXISTS stock (
    sku          text NOT NULL,
    region       text NOT NULL,
    quantity     numeric(18, 4) NOT NULL CHECK (quantity >= 0),
    available_on date,
    PRIMARY KEY (sku, region)
);
CREATE TABLE IF NOT EXISTS products (
    sku             text PRIMARY KEY,
    name            text NOT NULL,
    product_line    text NOT NULL,
    unit_of_measure text NOT NULL,
    active          boolean NOT NULL,
    legal_entities  text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS price_books (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    currency     char(3) NOT NULL,
    legal_entity text NOT NULL
);
CREATE TABLE IF NOT EXISTS price_book_entries (
    price_book_id text NOT NULL REFERENCES price_books ON DELETE CASCADE,
    sku           text NOT NULL,
    unit_price    numeric(18, 4) NOT NULL,
    PRIMARY KEY (price_book_id, sku)
);

CREATE SEQUENCE IF NOT EXISTS sales_order_numbers;
CREATE SEQUENCE IF NOT EXISTS invoice_numbers;
CREATE SEQUENCE IF NOT EXISTS shipment_numbers;
CREATE SEQUENCE IF NOT EXISTS payment_numbers;

CREATE TABLE IF NOT EXISTS sales_orders (
    id                      text PRIMARY KEY,
    number                  text NOT NULL UNIQUE,
    external_id             text NOT NULL UNIQUE,
    customer_id             text NOT NULL REFERENCES customers,
    currency                char(3) NOT NULL,
    price_book_id           text NOT NULL,
    legal_entity            text NOT NULL,
    region                  text NOT NULL,
    po_number               text,
    requested_delivery_date date,
    ship_to                 jsonb NOT NULL,
    subtotal                numeric(18, 4) NOT NULL,
    tax_total               numeric(18, 4) NOT NULL,
    grand_total             numeric(18, 4) NOT NULL,
    credit_check            text NOT NULL,
    pricing_outcome         text NOT NULL,
    status                  text NOT NULL
        CHECK (status IN ('open', 'invoiced', 'shipped', 'cancelled')),
    cancel_reason           text,
    correlation_id          text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    status_changed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sales_orders_progress ON sales_orders (status, status_changed_at);
CREATE INDEX IF NOT EXISTS sales_orders_customer ON sales_orders (customer_id, status);
CREATE TABLE IF NOT EXISTS sales_order_lines (
    sales_order_id  text NOT NULL REFERENCES sales_orders ON DELETE CASCADE,
    line_number     integer NOT NULL,
    sku             text NOT NULL,
    quantity        numeric(18, 4) NOT NULL,
    unit_price      numeric(18, 4) NOT NULL,
    list_price      numeric(18, 4) NOT NULL,
    discount_amount numeric(18, 4) NOT NULL,
    tax_amount      numeric(18, 4) NOT NULL,
    line_total      numeric(18, 4) NOT NULL,
    PRIMARY KEY (sales_order_id, line_number)
);

-- A key is claimed by the request that succeeds with it; its answer is replayed to retries.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          text PRIMARY KEY,
    request_hash text NOT NULL,
    status       integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS invoices (
    id             text PRIMARY KEY,
    number         text NOT NULL UNIQUE,
    sales_order_id text NOT NULL UNIQUE REFERENCES sales_orders,
    currency       char(3) NOT NULL,
    subtotal       numeric(18, 4) NOT NULL,
    tax_total      numeric(18, 4) NOT NULL,
    grand_total    numeric(18, 4) NOT NULL,
    amount_due     numeric(18, 4) NOT NULL,
    posting_date   date NOT NULL,
    due_date       date NOT NULL,
    payment_terms  text NOT NULL,
    status         text NOT NULL CHECK (status IN ('posted', 'paid')),
    posted_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_unpaid ON invoices (posted_at) WHERE status = 'posted';
CREATE TABLE IF NOT EXISTS shipments (
    id              text PRIMARY KEY,
    number          text NOT NULL UNIQUE,
    sales_order_id  text NOT NULL UNIQUE REFERENCES sales_orders,
    carrier         text NOT NULL,
    tracking_number text NOT NULL,
    tracking_url    text,
    completeness    text NOT NULL,
    warehouse       text,
    lines           jsonb NOT NULL,
    shipped_at      timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS payments (
    id          text PRIMARY KEY,
    number      text NOT NULL UNIQUE,
    invoice_id  text NOT NULL UNIQUE REFERENCES invoices,
    amount      numeric(18, 4) NOT NULL,
    currency    char(3) NOT NULL,
    method      text NOT NULL,
    received_at timestamptz NOT NULL
);

-- Debezium outbox event router columns; published_at lets a relay mark rather than delete.
CREATE TABLE IF NOT EXISTS outbox (
    id            uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid   text NOT NULL,
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    seq           bigserial UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify(current_schema() || '_outbox', ''); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

RESET = """
TRUNCATE outbox, payments, shipments, invoices, idempotency_keys,
    sales_order_lines, sales_orders, price_book_entries, price_books,
    products, customers, stock RESTART IDENTITY;
ALTER SEQUENCE customer_numbers RESTART;
ALTER SEQUENCE sales_order_numbers RESTART;
ALTER SEQUENCE invoice_numbers RESTART;
ALTER SEQUENCE shipment_numbers RESTART;
ALTER SEQUENCE payment_numbers RESTART;
"""

Connection = psycopg.Connection[DictRow]


def outbox_channel(schema: str) -> str:
    """The channel the ERP in ``schema`` notifies of new outbox rows on."""
    return f"{schema}_outbox"


def connect(dsn: str, schema: str = DEFAULT_SCHEMA) -> Connection:
    """An autocommit connection to the ERP in ``schema``: every unit of work opens its own
    ``transaction()``."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    return psycopg.connect(
        dsn, autocommit=True, row_factory=dict_row, options=f"-c search_path={schema}"
    )


def migrate(connection: Connection) -> None:
    """Create the connection's schema and its tables if missing; safe for simulators starting
    at once."""
    schema = connection.execute("SHOW search_path").fetchone()
    assert schema is not None
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext('revsync.sandbox.erp'))")
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema["search_path"]))
        )
        connection.execute(SCHEMA)


def reset(connection: Connection) -> None:
    """Empty every table and restart every document and customer number."""
    with connection.transaction():
        connection.execute(RESET)


class ConnectionPool:
    """At most ``size`` connections shared by the server's threads.

    The HTTP server starts a thread per client connection, so connections are lent per
    request rather than kept per thread.
    """

    def __init__(self, dsn: str, size: int, schema: str = DEFAULT_SCHEMA) -> None:
        self._dsn = dsn
        self._schema = schema
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        with self._slots:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                connection = connect(self._dsn, self._schema)
            healthy = False
            try:
                yield connection
                healthy = True
            finally:
                # A connection that saw an error other than a rolled-back transaction goes.
                idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                if healthy or idle:
                    self._idle.put(connection)
                else:
                    connection.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
