"""SuiteQL over the books: NetSuite's tables as PostgreSQL views in a schema of their own, and
the query endpoint's execution of one read-only SELECT on them, paged as NetSuite pages.

The views carry NetSuite's table and column names (lower-cased, as SuiteQL answers them) and
NetSuite's conventions: booleans are ``'T'``/``'F'``, references are internal ids, date-times
are cut to the second. Each view hands its rows over in a random order, so a query whose
ORDER BY is not unique sees its ties in another order on every call, as paging by offset on
NetSuite does. Date-time columns are ``timestamptz``; a query runs in the account's time zone,
so ``TO_CHAR`` and ``TO_TIMESTAMP`` read and write the account's local time.
"""

# ruff: noqa: S608 - the views' SQL is built from fixed names and quoted literals, and a
# query runs in a read-only transaction on the views alone.

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from sandbox.erp.store import Connection

MAX_LIMIT = 1000
"""The most rows one page holds."""
ROW_CAP = 100_000
"""How far into a result paging may go: ``offset + limit`` beyond it is refused."""

DEFAULT_SUBSIDIARIES = {"US01": "1", "CA01": "2", "DE01": "3", "GB01": "4"}
"""Legal entity -> subsidiary internal id; the subsidiary's name is the legal entity."""
DEFAULT_CURRENCIES = {"USD": "1", "GBP": "2", "CAD": "3", "EUR": "4"}
"""ISO code -> currency internal id (NetSuite's usual first four); another code's internal id
is the code itself."""

SALES_ORDER_STATUS = {"open": "B", "invoiced": "G", "shipped": "H", "cancelled": "C"}
"""The books' order status -> NetSuite's sales order status letter: B Pending Fulfillment,
G Billed (the books bill before they ship), H Closed (billed and shipped), C Cancelled."""


class QueryRefused(Exception):
    """The query is not one SELECT, or PostgreSQL refused it; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _values(mapping: Mapping[str, str], names: tuple[str, str]) -> str:
    rows = ", ".join(
        f"({_literal(key)}, {_literal(value)})" for key, value in sorted(mapping.items())
    )
    return f"(VALUES {rows}) AS m({names[0]}, {names[1]})"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_definitions(
    books: str, subsidiaries: Mapping[str, str], currencies: Mapping[str, str], timezone: str
) -> dict[str, str]:
    """The SELECT of each view, reading the books in schema ``books``."""
    sub = f"(SELECT * FROM {_values(subsidiaries, ('legal_entity', 'id'))})"
    cur = f"(SELECT * FROM {_values(currencies, ('code', 'id'))})"
    tz = _literal(timezone)

    def sub_of(column: str) -> str:
        return f"(SELECT ns_s.id FROM {sub} ns_s WHERE ns_s.legal_entity = {column})"

    def cur_of(column: str) -> str:
        return (
            f"coalesce((SELECT ns_c.id FROM {cur} ns_c WHERE ns_c.code = {column}), {column}::text)"
        )

    def local_date(column: str) -> str:
        return f"({column} AT TIME ZONE {tz})::date"

    def second(column: str) -> str:
        return f"date_trunc('second', {column})"

    status = "CASE o.status " + " ".join(
        f"WHEN {_literal(k)} THEN {_literal(v)}" for k, v in SALES_ORDER_STATUS.items()
    )
    return {
        "subsidiary": f"SELECT s.id, s.legal_entity AS name FROM {sub} s",
        "currency": f"SELECT c.id, c.code AS symbol, c.code AS name FROM {cur} c",
        "customer": (
            "SELECT c.id, c.number AS entityid, c.crm_account_id AS externalid, "
            f"c.name AS companyname, {sub_of('c.legal_entity')} AS subsidiary, "
            f"{cur_of('c.currency')} AS currency, c.credit_limit AS creditlimit, "
            "c.payment_terms AS terms, "
            "CASE WHEN c.status = 'credit_hold' THEN 'ON' ELSE 'AUTO' END "
            "AS creditholdoverride, "
            "CASE WHEN c.status = 'blocked' THEN 'T' ELSE 'F' END AS isinactive, "
            "c.tax_id AS vatregnumber, c.duns AS custentity_revsync_duns, "
            "c.country_code AS custentity_revsync_country, "
            "nullif(array_to_string(c.blocks, ','), '') AS custentity_revsync_blocks, "
            "c.billing_street AS billaddr1, c.billing_city AS billcity, "
            "c.billing_state_province AS billstate, c.billing_postal_code AS billzip, "
            "c.billing_country_code AS billcountry, "
            f"{second('c.updated_at')} AS lastmodifieddate, "
            # The exposure: unpaid invoices and open (not yet billed) orders.
            f"(SELECT coalesce(sum(i.amount_due), 0) FROM {books}.invoices i "
            f"JOIN {books}.sales_orders o ON o.id = i.sales_order_id "
            "WHERE o.customer_id = c.id AND i.status = 'posted') AS balancesearch, "
            f"(SELECT coalesce(sum(o.grand_total), 0) FROM {books}.sales_orders o "
            "WHERE o.customer_id = c.id AND o.status = 'open') AS unbilledorderssearch "
            f"FROM {books}.customers c"
        ),
        "item": (
            "SELECT p.sku AS id, p.sku AS itemid, p.name AS displayname, "
            "p.product_line AS class, CASE WHEN p.active THEN 'F' ELSE 'T' END AS isinactive, "
            f"(SELECT nullif(string_agg(s.id, ', ' ORDER BY s.id), '') FROM {sub} s "
            "WHERE s.legal_entity = ANY(p.legal_entities)) AS subsidiary, "
            "p.unit_of_measure AS saleunit, 'InvtPart' AS itemtype "
            f"FROM {books}.products p"
        ),
        "pricelevel": (
            "SELECT b.id, b.name, "
            f"{cur_of('b.currency')} AS currency, {sub_of('b.legal_entity')} AS subsidiary "
            f"FROM {books}.price_books b"
        ),
        "pricing": (
            "SELECT e.sku AS item, e.price_book_id AS pricelevel, "
            f"{cur_of('b.currency')} AS currency, e.unit_price AS unitprice "
            f"FROM {books}.price_book_entries e JOIN {books}.price_books b "
            "ON b.id = e.price_book_id"
        ),
        "inventorybalance": (
            "SELECT s.sku AS item, s.region AS location, s.quantity AS quantityavailable, "
            f"s.available_on AS expectedreceiptdate FROM {books}.stock s"
        ),
        "transaction": (
            # Sales orders.
            "SELECT o.id, o.number AS tranid, 'SalesOrd' AS type, o.external_id AS externalid, "
            f"o.customer_id AS entity, {sub_of('o.legal_entity')} AS subsidiary, "
            f"{cur_of('o.currency')} AS currency, {local_date('o.created_at')} AS trandate, "
            f"NULL::date AS duedate, {status} END AS status, o.grand_total AS foreigntotal, "
            "NULL::numeric AS foreignamountremaining, o.subtotal AS subtotal, "
            "o.tax_total AS taxtotal, "
            f"{second('o.created_at')} AS createddate, "
            f"{second('greatest(o.created_at, o.status_changed_at)')} AS lastmodifieddate, "
            "o.correlation_id AS memo, o.po_number AS otherrefnum, "
            "o.requested_delivery_date AS shipdate, o.region AS location, "
            "NULL::text AS terms, NULL::text AS shipcarrier, NULL::text AS trackingnumberlist, "
            "NULL::text AS custbody_revsync_tracking_url, "
            "NULL::text AS custbody_revsync_completeness, NULL::text AS paymentmethod "
            f"FROM {books}.sales_orders o "
            # Invoices.
            "UNION ALL SELECT i.id, i.number, 'CustInvc', NULL, o.customer_id, "
            f"{sub_of('o.legal_entity')}, {cur_of('i.currency')}, i.posting_date, i.due_date, "
            "CASE i.status WHEN 'paid' THEN 'B' ELSE 'A' END, i.grand_total, i.amount_due, "
            f"i.subtotal, i.tax_total, {second('i.posted_at')}, "
            f"{second('greatest(i.posted_at, p.received_at)')}, NULL, o.po_number, NULL, "
            "o.region, i.payment_terms, NULL, NULL, NULL, NULL, NULL "
            f"FROM {books}.invoices i JOIN {books}.sales_orders o ON o.id = i.sales_order_id "
            f"LEFT JOIN {books}.payments p ON p.invoice_id = i.id "
            # Item fulfilments.
            "UNION ALL SELECT h.id, h.number, 'ItemShip', NULL, o.customer_id, "
            f"{sub_of('o.legal_entity')}, {cur_of('o.currency')}, "
            f"{local_date('h.shipped_at')}, NULL, 'C', NULL, NULL, NULL, NULL, "
            f"{second('h.shipped_at')}, {second('h.shipped_at')}, NULL, o.po_number, NULL, "
            "h.warehouse, NULL, h.carrier, h.tracking_number, h.tracking_url, h.completeness, "
            "NULL "
            f"FROM {books}.shipments h JOIN {books}.sales_orders o ON o.id = h.sales_order_id "
            # Customer payments.
            "UNION ALL SELECT p.id, p.number, 'CustPymt', NULL, o.customer_id, "
            f"{sub_of('o.legal_entity')}, {cur_of('p.currency')}, "
            f"{local_date('p.received_at')}, NULL, 'B', p.amount, NULL, NULL, NULL, "
            f"{second('p.received_at')}, {second('p.received_at')}, NULL, NULL, NULL, NULL, "
            "NULL, NULL, NULL, NULL, NULL, p.method "
            f"FROM {books}.payments p JOIN {books}.invoices i ON i.id = p.invoice_id "
            f"JOIN {books}.sales_orders o ON o.id = i.sales_order_id"
        ),
        "transactionline": (
            # Sales order lines.
            "SELECT l.sales_order_id AS transaction, l.line_number AS linesequencenumber, "
            "l.line_number AS id, l.sku AS item, l.quantity, l.unit_price AS rate, "
            "l.line_total AS netamount, l.tax_amount AS taxamount, "
            "l.discount_amount AS custcol_revsync_discount, NULL::text AS createdfrom "
            f"FROM {books}.sales_order_lines l "
            # Invoice lines: the order's, created from it.
            "UNION ALL SELECT i.id, l.line_number, l.line_number, l.sku, l.quantity, "
            "l.unit_price, l.line_total, l.tax_amount, l.discount_amount, i.sales_order_id "
            f"FROM {books}.invoices i JOIN {books}.sales_order_lines l "
            "ON l.sales_order_id = i.sales_order_id "
            # Fulfilment lines, created from the order.
            "UNION ALL SELECT h.id, (e->>'line_number')::integer, "
            "(e->>'line_number')::integer, e->>'sku', (e->>'quantity')::numeric, NULL, NULL, "
            f"NULL, NULL, h.sales_order_id FROM {books}.shipments h, "
            "jsonb_array_elements(h.lines) e "
            # A payment's one line: the invoice it pays.
            "UNION ALL SELECT p.id, 1, 1, NULL, NULL, NULL, p.amount, NULL, NULL, p.invoice_id "
            f"FROM {books}.payments p"
        ),
    }


BUILTIN = """
CREATE SCHEMA IF NOT EXISTS builtin;
CREATE OR REPLACE FUNCTION builtin.df(value anyelement) RETURNS text
    LANGUAGE sql IMMUTABLE AS 'SELECT value::text';
"""
"""``BUILTIN.DF(column)``, NetSuite's display value of a reference: here the value itself,
since the views already hold names where NetSuite would hold ids of lists (``class``)."""

NVL = """
CREATE OR REPLACE FUNCTION {schema}.nvl(value anyelement, fallback anyelement)
    RETURNS anyelement LANGUAGE sql IMMUTABLE AS 'SELECT coalesce(value, fallback)';
"""


def views_schema(books: str) -> str:
    """The schema of the SuiteQL views over the books in ``books``."""
    return f"{books}_suiteql"


def install(
    connection: Connection,
    books: str,
    subsidiaries: Mapping[str, str],
    currencies: Mapping[str, str],
    timezone: str,
) -> None:
    """Creates (or replaces) the views of the books in schema ``books``."""
    schema = views_schema(books)
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext('revsync.sandbox.netsuite'))")
        connection.execute(BUILTIN)
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        connection.execute(NVL.format(schema=schema))
        for name, select in view_definitions(books, subsidiaries, currencies, timezone).items():
            # Rows in a random order: ties of a non-unique ORDER BY differ from call to call.
            connection.execute(
                f"CREATE VIEW {schema}.{name} AS SELECT * FROM ({select}) AS v ORDER BY random()"
            )


@dataclass(frozen=True)
class Page:
    items: list[dict[str, str]]
    total: int


_LITERALS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def check_select(query: str) -> str:
    """``query`` without a trailing semicolon, if it is one SELECT; else QueryRefused."""
    bare = _LITERALS.sub(" ", query).strip()
    if bare.endswith(";"):
        bare = bare[:-1].rstrip()
        query = query.rstrip()[:-1]
    if not re.match(r"(?is)select\b", bare):
        raise QueryRefused("only a SELECT statement is supported")
    if ";" in bare:
        raise QueryRefused("one statement only")
    return query


def run(
    dsn: str,
    books: str,
    timezone: str,
    query: str,
    *,
    limit: int,
    offset: int,
    statement_timeout_ms: int = 10_000,
) -> Page:
    """One page of ``query``'s rows (and how many there are in all), run read-only in the
    account's time zone on the views of the books in ``books``."""
    select = check_select(query)
    options = (
        f"-c search_path={views_schema(books)} -c TimeZone={timezone.replace(' ', '_')} "
        f"-c statement_timeout={statement_timeout_ms} -c default_transaction_read_only=on"
    )
    try:
        with psycopg.connect(dsn, options=options) as connection:
            # No parameters: a % in the query is the query's own.
            total_row = connection.execute(
                f"SELECT count(*) FROM ({select}\n) AS suiteql_query"
            ).fetchone()
            cursor = connection.execute(
                f"SELECT * FROM ({select}\n) AS suiteql_query "
                f"LIMIT {int(limit)} OFFSET {int(offset)}"
            )
            names = [column.name.lower() for column in cursor.description or ()]
            rows = cursor.fetchall()
            zone = connection.info.timezone
    except psycopg.Error as error:
        message = (error.diag.message_primary or type(error).__name__) if error.diag else str(error)
        raise QueryRefused(f"Invalid search query: {message}") from None
    assert total_row is not None
    items = []
    for row in rows:
        item = {
            name: rendered(value, zone)
            for name, value in zip(names, row, strict=True)
            if value is not None
        }
        items.append(item)
    return Page(items, int(total_row[0]))


def rendered(value: Any, zone: Any = None) -> str:
    """A value as SuiteQL answers it: a string; a date or a date-time as a date in the
    user's format (M/D/YYYY, in the account's time zone); a number without trailing zeros."""
    if isinstance(value, datetime):
        value = value.astimezone(zone).date() if zone is not None else value.date()
    if isinstance(value, date):
        return f"{value.month}/{value.day}/{value.year}"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, Decimal):
        text = format(value, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text or "0"
    return str(value)
