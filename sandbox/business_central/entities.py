"""Business Central's entities over the books: each entity set a SQL query of one company's
rows with its fields under BC's names, the fields ``$filter`` may name, and how a row becomes
the JSON document the API answers.

Entity ids are the books' own ids (BC's are guids; revsync treats both as opaque text).
Timestamps are cut to milliseconds in SQL, so a ``$filter`` on ``lastModifiedDateTime``
compares exactly what the documents show. The hidden ``_version`` column (full precision) is
what a record's ETag is made of."""

# ruff: noqa: S608 - the queries are fixed text; values travel as parameters
from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sandbox.business_central.odata import Field, etag, timestamp

ORDER_KEY = "coalesce(m.external_document_number, o.external_id)"
"""An order's external document number: BC's own field (two orders may share one), the books'
unique external id for an order made before the simulator's table knew it."""

ITEMS_MODIFIED = "timestamp with time zone '2026-01-01 00:00:00+00'"
"""Products carry no change time in the books; items and price lists show this one."""

EXPOSURE = (
    "(SELECT coalesce(sum(so.grand_total), 0) FROM sales_orders so "
    " WHERE so.customer_id = c.id AND so.status = 'open') + "
    "(SELECT coalesce(sum(i.amount_due), 0) FROM invoices i "
    " JOIN sales_orders so ON so.id = i.sales_order_id "
    " WHERE so.customer_id = c.id AND i.status = 'posted')"
)
BALANCE_DUE = (
    "(SELECT coalesce(sum(i.amount_due), 0) FROM invoices i "
    " JOIN sales_orders so ON so.id = i.sales_order_id "
    " WHERE so.customer_id = c.id AND i.status = 'posted')"
)
BLOCKED = (
    "CASE WHEN c.status = 'blocked' OR 'order' = ANY(c.blocks) "
    "OR ('delivery' = ANY(c.blocks) AND 'billing' = ANY(c.blocks)) THEN 'All' "
    "WHEN 'delivery' = ANY(c.blocks) THEN 'Ship' "
    "WHEN 'billing' = ANY(c.blocks) THEN 'Invoice' ELSE ' ' END"
)
PAYMENT_TERMS_NAMESPACE = uuid.UUID("6f1c8f2e-3a57-4d0e-9b8a-2c6d7f1e9a40")


def payment_terms_id(code: str) -> str:
    """The id of payment terms ``code``: a guid the same in every run."""
    return str(uuid.uuid5(PAYMENT_TERMS_NAMESPACE, code))


def ms(expression: str) -> str:
    return f"date_trunc('milliseconds', {expression})"


@dataclass(frozen=True)
class EntitySet:
    """One entity set of a company: ``query`` selects its rows (``%(company)s`` is the legal
    entity), ``fields`` are what ``$filter`` and ``$orderby`` may name."""

    name: str
    query: str
    fields: Mapping[str, Field]
    computed: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Fields computed in Python from the row."""
    lines: tuple[str, str, str] | None = None
    """(navigation property, its query with ``%(ids)s``, the parent id column)."""
    order: str = '"lastModifiedDateTime", id'
    versioned: bool = True

    def document(self, row: Mapping[str, Any]) -> dict[str, Any]:
        body = {name: _json_value(value) for name, value in row.items() if not name.startswith("_")}
        if self.computed is not None:
            body.update(self.computed(dict(row)))
        document = {"@odata.etag": etag(self.name, row["id"], row.get("_version"))} | body
        return document if self.versioned else body


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return value
    return value


def _fields(*names: str, **kinds: str) -> dict[str, Field]:
    found = {name: Field(f'"{name}"') for name in names}
    found.update({name: Field(f'"{name}"', kind) for name, kind in kinds.items()})
    return found


CUSTOMERS = EntitySet(
    "customers",
    "SELECT c.id, c.number, c.name AS \"displayName\", 'Company' AS type, "
    "coalesce(c.billing_street, '') AS \"addressLine1\", '' AS \"addressLine2\", "
    "coalesce(c.billing_city, '') AS city, coalesce(c.billing_state_province, '') AS state, "
    "coalesce(c.country_code, '') AS country, "
    "coalesce(c.billing_postal_code, '') AS \"postalCode\", '' AS \"phoneNumber\", "
    "'' AS email, '' AS website, coalesce(c.tax_id, '') AS \"taxRegistrationNumber\", "
    'c.currency AS "currencyCode", c.payment_terms AS _payment_terms, '
    f'{BLOCKED} AS blocked, {BALANCE_DUE} AS "balanceDue", '
    'c.credit_limit AS "creditLimit", '
    f'{ms("c.updated_at")} AS "lastModifiedDateTime", c.updated_at::text AS _version '
    "FROM customers c WHERE c.legal_entity = %(company)s",
    _fields(
        "id",
        "number",
        "displayName",
        "country",
        "taxRegistrationNumber",
        "currencyCode",
        "blocked",
        "email",
        "city",
        "postalCode",
        lastModifiedDateTime="datetime",
        creditLimit="number",
        balanceDue="number",
    ),
    computed=lambda row: {"paymentTermsId": payment_terms_id(row["_payment_terms"])},
)

CUSTOMER_LINKS = EntitySet(
    "customerLinks",
    'SELECT c.id, c.id AS "customerId", c.number AS "customerNumber", '
    'coalesce(c.crm_account_id, \'\') AS "crmAccountId", c.name AS "displayName", '
    'coalesce(c.country_code, \'\') AS "countryCode", c.currency AS "currencyCode", '
    "coalesce(c.tax_id, '') AS \"taxRegistrationNumber\", "
    "coalesce(c.duns, '') AS \"dunsNumber\", "
    "coalesce(c.billing_street, '') AS \"billingAddressLine1\", "
    "coalesce(c.billing_city, '') AS \"billingCity\", "
    "coalesce(c.billing_state_province, '') AS \"billingState\", "
    "coalesce(c.billing_postal_code, '') AS \"billingPostalCode\", "
    "coalesce(c.billing_country_code, '') AS \"billingCountryCode\", "
    "CASE c.status WHEN 'active' THEN 'Active' WHEN 'blocked' THEN 'Blocked' "
    "ELSE 'Credit Hold' END AS \"creditStatus\", array_to_string(c.blocks, ',') AS blocks, "
    'c.payment_terms AS "paymentTermsCode", c.credit_limit AS "creditLimit", '
    f"{EXPOSURE} AS exposure, coalesce(c.name_key, '') AS \"nameKey\", "
    "coalesce(c.tax_id_key, '') AS \"taxIdKey\", coalesce(c.duns_key, '') AS \"dunsKey\", "
    f'{ms("c.updated_at")} AS "lastModifiedDateTime", c.updated_at::text AS _version '
    "FROM customers c WHERE c.legal_entity = %(company)s",
    _fields(
        "id",
        "customerId",
        "customerNumber",
        "crmAccountId",
        "displayName",
        "countryCode",
        "currencyCode",
        "taxRegistrationNumber",
        "dunsNumber",
        "nameKey",
        "taxIdKey",
        "dunsKey",
        "creditStatus",
        lastModifiedDateTime="datetime",
    ),
)

ITEMS = EntitySet(
    "items",
    "SELECT p.sku AS id, p.sku AS number, p.name AS \"displayName\", 'Inventory' AS type, "
    'p.product_line AS "itemCategoryCode", NOT p.active AS blocked, '
    'p.unit_of_measure AS "baseUnitOfMeasureCode", '
    "coalesce((SELECT e.unit_price FROM price_book_entries e JOIN price_books b "
    "ON b.id = e.price_book_id WHERE b.legal_entity = %(company)s AND e.sku = p.sku "
    'ORDER BY b.id LIMIT 1), 0) AS "unitPrice", '
    "coalesce((SELECT sum(s.quantity) FROM stock s WHERE s.sku = p.sku), 0) AS inventory, "
    f'{ITEMS_MODIFIED} AS "lastModifiedDateTime", '
    "(p.name || p.product_line || p.active::text || p.unit_of_measure) AS _version "
    "FROM products p WHERE cardinality(p.legal_entities) = 0 "
    "OR %(company)s = ANY(p.legal_entities)",
    _fields(
        "id",
        "number",
        "displayName",
        "itemCategoryCode",
        "baseUnitOfMeasureCode",
        blocked="bool",
        lastModifiedDateTime="datetime",
    ),
    order="number",
)

PRICE_LISTS = EntitySet(
    "priceLists",
    'SELECT b.id, b.id AS code, b.name AS description, b.currency AS "currencyCode", '
    "'Active' AS status, 'All Customers' AS \"assignToType\", "
    f'{ITEMS_MODIFIED} AS "lastModifiedDateTime", b.name AS _version '
    "FROM price_books b WHERE b.legal_entity = %(company)s",
    _fields("id", "code", "currencyCode", "status", lastModifiedDateTime="datetime"),
    lines=(
        "priceListLines",
        "SELECT e.price_book_id || ':' || e.sku AS id, e.price_book_id AS \"priceListCode\", "
        '\'Item\' AS "assetType", e.sku AS "assetNo", e.unit_price AS "unitPrice", '
        '0 AS "minimumQuantity", e.price_book_id AS _parent '
        "FROM price_book_entries e WHERE e.price_book_id = ANY(%(ids)s) ORDER BY e.sku",
        "_parent",
    ),
    order="code",
)

ITEM_AVAILABILITIES = EntitySet(
    "itemAvailabilities",
    "SELECT s.sku || '@' || s.region AS id, s.sku AS \"itemNumber\", "
    's.region AS "locationCode", s.quantity AS "quantityAvailable", '
    's.available_on AS "nextReceiptDate" FROM stock s WHERE %(company)s::text IS NOT NULL',
    _fields("id", "itemNumber", "locationCode", quantityAvailable="number"),
    order='"itemNumber", "locationCode"',
    versioned=False,
)

ORDER_FROM = (
    "FROM sales_orders o JOIN customers c ON c.id = o.customer_id "
    "LEFT JOIN bc_sales_orders m ON m.order_id = o.id WHERE o.legal_entity = %(company)s"
)
ORDER_MODIFIED = "greatest(o.created_at, o.status_changed_at, m.modified_at)"

SALES_ORDERS = EntitySet(
    "salesOrders",
    f'SELECT o.id, o.number, {ORDER_KEY} AS "externalDocumentNumber", '
    'o.created_at::date AS "orderDate", o.created_at::date AS "postingDate", '
    'o.customer_id AS "customerId", c.number AS "customerNumber", '
    'c.name AS "customerName", o.currency AS "currencyCode", '
    "false AS \"pricesIncludeTax\", coalesce(o.ship_to->>'street', '') AS \"shipToAddressLine1\", "
    "coalesce(o.ship_to->>'city', '') AS \"shipToCity\", "
    "coalesce(o.ship_to->>'state_province', '') AS \"shipToState\", "
    "coalesce(o.ship_to->>'country_code', '') AS \"shipToCountry\", "
    "coalesce(o.ship_to->>'postal_code', '') AS \"shipToPostCode\", "
    'o.region AS "shortcutDimension1Code", o.requested_delivery_date AS '
    "\"requestedDeliveryDate\", CASE o.status WHEN 'open' THEN 'Open' ELSE 'Released' END "
    "AS status, o.status = 'shipped' AS \"fullyShipped\", "
    'o.subtotal AS "totalAmountExcludingTax", o.tax_total AS "totalTaxAmount", '
    'o.grand_total AS "totalAmountIncludingTax", '
    f'{ms(ORDER_MODIFIED)} AS "lastModifiedDateTime", {ORDER_MODIFIED}::text AS _version, '
    f"o.status AS _status, o.external_id AS _external_id {ORDER_FROM} "
    "AND o.status <> 'cancelled'",
    _fields(
        "id",
        "number",
        "externalDocumentNumber",
        "customerId",
        "customerNumber",
        "currencyCode",
        "status",
        "shortcutDimension1Code",
        lastModifiedDateTime="datetime",
        orderDate="date",
        totalAmountIncludingTax="number",
    ),
    lines=(
        "salesOrderLines",
        "SELECT l.sales_order_id || '-' || l.line_number AS id, "
        'l.sales_order_id AS "documentId", l.line_number * 10000 AS sequence, '
        'l.sku AS "itemId", \'Item\' AS "lineType", l.sku AS "lineObjectNumber", '
        "p.name AS description, coalesce(p.unit_of_measure, 'EA') AS \"unitOfMeasureCode\", "
        'l.quantity, l.unit_price AS "unitPrice", l.discount_amount AS "discountAmount", '
        'l.line_total AS "amountExcludingTax", CASE WHEN l.line_total = 0 THEN 0 '
        'ELSE round(l.tax_amount * 100 / l.line_total, 6) END AS "taxPercent", '
        'l.tax_amount AS "totalTaxAmount", l.line_total + l.tax_amount AS '
        '"amountIncludingTax", l.sales_order_id AS _parent FROM sales_order_lines l '
        "LEFT JOIN products p ON p.sku = l.sku WHERE l.sales_order_id = ANY(%(ids)s) "
        "ORDER BY l.sales_order_id, l.line_number",
        "_parent",
    ),
)

SALES_ORDER_STATES = EntitySet(
    "salesOrderStates",
    f'SELECT o.id, o.number, {ORDER_KEY} AS "externalDocumentNumber", '
    'o.customer_id AS "customerId", o.currency AS "currencyCode", '
    "CASE o.status WHEN 'open' THEN 'Open' WHEN 'invoiced' THEN 'Invoiced' "
    "WHEN 'shipped' THEN 'Shipped' ELSE 'Canceled' END AS state, "
    'o.credit_check AS "creditCheck", o.pricing_outcome AS "pricingOutcome", '
    "coalesce(o.cancel_reason, '') AS \"cancelReason\", "
    'o.subtotal AS "totalAmountExcludingTax", o.tax_total AS "totalTaxAmount", '
    'o.grand_total AS "totalAmountIncludingTax", o.created_at AS "orderCreatedDateTime", '
    f'{ms(ORDER_MODIFIED)} AS "lastModifiedDateTime", {ORDER_MODIFIED}::text AS _version, '
    f"o.external_id AS _external_id {ORDER_FROM}",
    _fields(
        "id",
        "number",
        "externalDocumentNumber",
        "customerId",
        "state",
        lastModifiedDateTime="datetime",
        orderCreatedDateTime="datetime",
    ),
    order='"orderCreatedDateTime", number',
)

SALES_INVOICES = EntitySet(
    "salesInvoices",
    f'SELECT i.id, i.number, {ORDER_KEY} AS "externalDocumentNumber", o.id AS "orderId", '
    'o.number AS "orderNumber", i.posting_date AS "invoiceDate", '
    'i.posting_date AS "postingDate", i.due_date AS "dueDate", '
    'o.customer_id AS "customerId", c.number AS "customerNumber", '
    'c.name AS "customerName", i.currency AS "currencyCode", '
    'i.payment_terms AS _payment_terms, i.subtotal AS "totalAmountExcludingTax", '
    'i.tax_total AS "totalTaxAmount", i.grand_total AS "totalAmountIncludingTax", '
    "i.amount_due AS \"remainingAmount\", CASE i.status WHEN 'paid' THEN 'Paid' "
    "ELSE 'Open' END AS status, "
    f'{ms("greatest(i.posted_at, p.received_at)")} AS "lastModifiedDateTime", '
    "greatest(i.posted_at, p.received_at)::text AS _version "
    "FROM invoices i JOIN sales_orders o ON o.id = i.sales_order_id "
    "JOIN customers c ON c.id = o.customer_id LEFT JOIN payments p ON p.invoice_id = i.id "
    "LEFT JOIN bc_sales_orders m ON m.order_id = o.id WHERE o.legal_entity = %(company)s",
    _fields(
        "id",
        "number",
        "externalDocumentNumber",
        "orderId",
        "orderNumber",
        "customerId",
        "customerNumber",
        "status",
        lastModifiedDateTime="datetime",
        postingDate="date",
        remainingAmount="number",
    ),
    computed=lambda row: {"paymentTermsId": payment_terms_id(row["_payment_terms"])},
)

SALES_SHIPMENTS = EntitySet(
    "salesShipments",
    f'SELECT s.id, s.number, {ORDER_KEY} AS "externalDocumentNumber", '
    'o.number AS "orderNumber", o.customer_id AS "customerId", '
    'c.number AS "customerNumber", c.name AS "customerName", '
    's.shipped_at::date AS "shipmentDate", s.shipped_at::date AS "postingDate", '
    's.carrier AS "shippingAgentCode", s.tracking_number AS "packageTrackingNo", '
    "coalesce(s.warehouse, '') AS \"locationCode\", "
    f'{ms("s.shipped_at")} AS "lastModifiedDateTime", s.shipped_at::text AS _version '
    "FROM shipments s JOIN sales_orders o ON o.id = s.sales_order_id "
    "JOIN customers c ON c.id = o.customer_id "
    "LEFT JOIN bc_sales_orders m ON m.order_id = o.id WHERE o.legal_entity = %(company)s",
    _fields(
        "id",
        "number",
        "externalDocumentNumber",
        "orderNumber",
        "customerId",
        lastModifiedDateTime="datetime",
        shipmentDate="date",
    ),
    lines=(
        "salesShipmentLines",
        "SELECT s.id || '-' || (line->>'line_number') AS id, s.id AS \"documentId\", "
        "(line->>'line_number')::int * 10000 AS sequence, 'Item' AS \"lineType\", "
        "line->>'sku' AS \"lineObjectNumber\", (line->>'quantity')::numeric AS quantity, "
        "s.id AS _parent FROM shipments s, jsonb_array_elements(s.lines) AS line "
        "WHERE s.id = ANY(%(ids)s) ORDER BY s.id, (line->>'line_number')::int",
        "_parent",
    ),
)

CUSTOMER_PAYMENTS = EntitySet(
    "customerPayments",
    "SELECT p.id, (regexp_replace(p.number, '[^0-9]', '', 'g'))::bigint * 10000 "
    'AS "lineNumber", o.customer_id AS "customerId", c.number AS "customerNumber", '
    'p.received_at::date AS "postingDate", p.number AS "documentNumber", '
    f'{ORDER_KEY} AS "externalDocumentNumber", -p.amount AS amount, '
    'i.id AS "appliesToInvoiceId", i.number AS "appliesToInvoiceNumber", '
    "p.method AS description, p.currency AS _currency, "
    f'{ms("p.received_at")} AS "lastModifiedDateTime", p.received_at::text AS _version '
    "FROM payments p JOIN invoices i ON i.id = p.invoice_id "
    "JOIN sales_orders o ON o.id = i.sales_order_id JOIN customers c ON c.id = o.customer_id "
    "LEFT JOIN bc_sales_orders m ON m.order_id = o.id WHERE o.legal_entity = %(company)s",
    _fields(
        "id",
        "customerId",
        "customerNumber",
        "documentNumber",
        "externalDocumentNumber",
        "appliesToInvoiceId",
        "appliesToInvoiceNumber",
        lastModifiedDateTime="datetime",
        postingDate="date",
        amount="number",
    ),
)

STANDARD = {
    s.name: s
    for s in (
        CUSTOMERS,
        ITEMS,
        SALES_ORDERS,
        SALES_INVOICES,
        SALES_SHIPMENTS,
        CUSTOMER_PAYMENTS,
    )
}
"""The entity sets of BC's API v2.0 the simulator serves."""
EXTENSION = {
    s.name: s
    for s in (
        CUSTOMER_LINKS,
        PRICE_LISTS,
        ITEM_AVAILABILITIES,
        SALES_ORDER_STATES,
    )
}
"""The entity sets of revsync's extension (``/api/revsync/integration/v1.0``)."""

NOTIFIED = frozenset({"customers", "salesInvoices", "salesOrders", "items"})
"""The entity sets a webhook subscription may watch: shipments and payments are not among
them, as in BC."""


@dataclass
class Page:
    """One page of an entity set's answer."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    more: bool = False
