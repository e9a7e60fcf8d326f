"""The NetSuite adapter of the ERP port (:class:`revsync.ports.erp.ErpPort`), over SuiteTalk
REST web services.

The wire (``https://{account}.suitetalk.api.netsuite.com``; JSON; ``Authorization: Bearer``
with a token from :mod:`revsync.connectors.netsuite_auth`):

``GET /services/rest/record/v1/customer/{id}`` and ``.../customer/eid:{crm_account_id}``
    (``?expandSubResources=true``) 200 the customer record: ``entityId`` (its number),
    ``externalId`` (the CRM account id), ``companyName``, ``subsidiary`` and ``currency``
    (``{"id"}``: the legal entity and currency by the configured id maps), ``creditLimit``,
    ``terms`` (``refName``: NET30...), ``creditHoldOverride`` (``ON``: credit hold),
    ``isInactive`` (true: blocked), ``vatRegNumber`` (the tax id), custom entity fields
    ``custentity_revsync_duns``, ``custentity_revsync_country`` (ISO code) and
    ``custentity_revsync_blocks`` (comma-separated blocks), ``addressBook.items[]`` (the one
    with ``defaultBilling`` is the billing address: ``addr1``, ``city``, ``state``, ``zip``,
    ``country``), ``balance`` (unpaid invoices) and ``unbilledOrders`` (open orders).
    404 ``NONEXISTENT_ID`` when there is none.
``POST /services/rest/record/v1/customer`` (``X-NetSuite-Idempotency-Key``)
    Creates the account's customer with its ``externalId``; 204 with ``Location``. 400
    ``DUP_RCRD`` when a customer has the external id already: then revsync reads it by
    external id and ``PATCH``es the CRM-owned fields onto it (``.../customer/{id}``, 204).
    Only one create can win, so concurrent upserts for one account make one customer.
``PUT /services/rest/record/v1/salesOrder/eid:{crm_order_id}`` (``X-NetSuite-Idempotency-Key``)
    Books the order: ``entity``, ``subsidiary``, ``currency``, ``location`` (the region's),
    ``otherRefNum`` (PO number), ``shipDate``, ``shippingAddress``, ``memo`` (the
    correlation id) and ``item.items[]`` (``line``, ``item`` by internal id, ``quantity``,
    ``rate``, ``price`` (the price level: the price book), ``custcol_revsync_discount``,
    ``custcol_revsync_tax_amount``). 204 with ``Location``. The order read back
    (``GET .../salesOrder/{id}`` or ``eid:``) carries ``tranId``, ``orderStatus`` (B
    pending fulfilment: open; G billed: invoiced; F/H: shipped; C: cancelled),
    ``subtotal``, ``taxTotal``, ``total``, ``createdDate`` and the account script's
    ``custbody_revsync_credit_check`` and ``custbody_revsync_pricing_outcome``.
``PATCH /services/rest/record/v1/salesOrder/{id}`` (``X-NetSuite-Idempotency-Key``)
    ``{"orderStatus": {"id": "C"}, "custbody_revsync_cancel_reason"}`` cancels it; 204.
``POST /services/rest/query/v1/suiteql?limit=1000&offset=N`` (``Prefer: transient``)
    ``{"q": "SELECT ..."}``: 200 ``{"items", "hasMore", "totalResults", ...}``, every value a
    string, empty ones left out. Items (``item``: ``itemid`` the SKU, ``displayname``,
    ``class``, ``isinactive`` ``T``/``F``, ``subsidiary`` ids, ``saleunit``), price books
    (``pricelevel``: ``name``, ``currency``, ``subsidiary``; ``pricing``: ``item``,
    ``pricelevel``, ``currency``, ``unitprice``), stock (``inventorybalance``: ``item``,
    ``location``, ``quantityavailable``, ``expectedreceiptdate``) and the duplicate search
    (``customer``) are read this way.

Exactly once: a create first reads the order by external id (a retry after a lost answer
finds it there); the create is an upsert on the external id carrying
``X-NetSuite-Idempotency-Key``, a UUID derived from the caller's key and the operation, so a
repeat of the same call is answered ``IDEMPOTENCY_ERROR`` instead of running twice. Such an
answer is resolved by reading what the first request wrote: the record as this call asks for
it is the first call's answer; another record means the key was used for another request
(:class:`~revsync.ports.erp.IdempotencyConflict`). A refused request leaves its key unused.

Errors are ``{"type", "title", "status", "o:errorDetails": [{"detail", "o:errorCode",
"o:errorPath"}]}``. ``INVALID_LOGIN`` (401) refreshes the token once, then is transient, as
is ``INSUFFICIENT_PERMISSION`` (403, a role to fix); ``CONCURRENCY_LIMIT_EXCEEDED`` and
``REQUEST_LIMIT_EXCEEDED`` (429), ``RCRD_HAS_BEEN_CHANGED``, ``UNEXPECTED_ERROR`` and 5xx are
transient with back-off; ``NONEXISTENT_ID`` is None (or
:class:`~revsync.ports.erp.ErpOrderMissing`); ``INVALID_VALUE``, ``INVALID_FIELD`` and
``USER_ERROR`` are permanent refusals naming the field (``INVALID_CUSTOMER`` for a customer,
``INVALID_ORDER`` for an order); the codes an account's beforeSubmit script raises
(:data:`BUSINESS_CODES`) are :class:`~revsync.ports.erp.ErpRejected` with that code, the
SKUs of the lines its ``o:errorPath`` points at (``item.items[N].item``) and the field.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from revsync.connectors.erp import ErpUnexpectedResponse
from revsync.connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    TRANSIENT_STATUSES,
    BoundedClient,
    error_code,
    failed_call,
    retry_after_s,
)
from revsync.connectors.netsuite_auth import (
    TOKEN_PATH,
    NetSuiteAuthFailed,
    NetSuiteSession,
    signing_key,
)
from revsync.contracts.events import CreditCheckOutcome, PricingOutcome, money
from revsync.errors import TransientError
from revsync.ports.erp import (
    Address,
    CreditPosition,
    Customer,
    CustomerDraft,
    CustomerQuery,
    CustomerStatus,
    CustomerUpsert,
    ErpOrderMissing,
    ErpPort,
    ErpRejected,
    IdempotencyConflict,
    PriceBook,
    Product,
    SalesOrder,
    SalesOrderRequest,
    SalesOrderStatus,
    StockLevel,
    normalised_identifier,
)

SYSTEM = "netsuite"
RECORD = "/services/rest/record/v1"
SUITEQL = "/services/rest/query/v1/suiteql"
PAGE = 1000
"""SuiteQL's largest page."""
ROW_CAP = 100_000
"""How far SuiteQL pages by offset; a query reaching further must be narrowed."""
SKUS_PER_QUERY = 100
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1d1c3e-5b0a-5f6e-9d43-7a1e2c9b0f21")
"""The namespace of the UUIDs sent as X-NetSuite-Idempotency-Key (fixed: a key derived
today must be the key derived after a restart)."""
DEFAULT_CURRENCIES = {"USD": "1", "GBP": "2", "CAD": "3", "EUR": "4"}
"""ISO code -> currency internal id, as a new NetSuite account numbers its first four."""
BUSINESS_CODES = frozenset(
    {
        "CREDIT_HOLD",
        "CREDIT_LIMIT_EXCEEDED",
        "CUSTOMER_BLOCKED",
        "CUSTOMER_NOT_MASTERED",
        "UNKNOWN_PRODUCT",
        "PRICING_MISMATCH",
        "ORDER_NOT_CANCELLABLE",
        "INVALID_CUSTOMER",
        "INVALID_ORDER",
        "UNSUPPORTED_CURRENCY",
        "UNKNOWN_PRICE_BOOK",
    }
)
"""The refusals the account's beforeSubmit script raises, by revsync's reason codes."""
VALIDATION_CODES = frozenset({"INVALID_VALUE", "INVALID_FIELD", "USER_ERROR", "INVALID_FLD_VALUE"})
"""NetSuite's own refusals of a value; ``o:errorPath`` names the field."""
TRANSIENT_CODES = frozenset(
    {
        "CONCURRENCY_LIMIT_EXCEEDED",
        "REQUEST_LIMIT_EXCEEDED",
        "SSS_REQUEST_LIMIT_EXCEEDED",
        "RCRD_HAS_BEEN_CHANGED",
        "UNEXPECTED_ERROR",
    }
)
DUPLICATE_CODES = frozenset({"DUP_RCRD", "UNIQUE_CUST_ID_REQD", "DUP_ENTITY"})
MISSING_CODES = frozenset({"NONEXISTENT_ID", "RECORD_NOT_FOUND"})
CUSTOMER_FIELDS = {
    "companyName": "name",
    "subsidiary": "legal_entity",
    "currency": "currency",
    "custentity_revsync_country": "country_code",
    "vatRegNumber": "tax_id",
    "custentity_revsync_duns": "duns",
    "addressBook": "billing_address",
    "addressBook.items[0].addressBookAddress.addr1": "billing_address.street",
    "addressBook.items[0].addressBookAddress.city": "billing_address.city",
    "addressBook.items[0].addressBookAddress.state": "billing_address.state_province",
    "addressBook.items[0].addressBookAddress.zip": "billing_address.postal_code",
    "addressBook.items[0].addressBookAddress.country": "billing_address.country_code",
}
"""A path of NetSuite's customer record -> the field of revsync's customer it holds."""
ORDER_FIELDS = {
    "entity": "customer_id",
    "subsidiary": "legal_entity",
    "currency": "currency",
    "location": "region",
    "otherRefNum": "po_number",
    "shipDate": "requested_delivery_date",
    "shippingAddress": "ship_to",
    "memo": "correlation_id",
}
LINE_FIELDS = {"price": "price_book_id", "line": "line_number"}
"""A line field of the salesOrder record -> the field of revsync's order line it holds."""
LINE_PATH = re.compile(r"item\.items\[(?P<index>\d+)\]\.(?P<field>\w+)")
SKU_FIELDS = frozenset(
    {"item", "rate", "quantity", "amount", "custcol_revsync_discount", "custcol_revsync_tax_amount"}
)
"""Line fields whose refusal is a refusal of the line's product."""
ORDER_STATUSES = {
    "A": SalesOrderStatus.OPEN,
    "B": SalesOrderStatus.OPEN,
    "D": SalesOrderStatus.OPEN,
    "E": SalesOrderStatus.OPEN,
    "F": SalesOrderStatus.SHIPPED,
    "G": SalesOrderStatus.INVOICED,
    "H": SalesOrderStatus.SHIPPED,
    "C": SalesOrderStatus.CANCELLED,
}
"""NetSuite's sales order status letters: A pending approval, B pending fulfilment, D
partially fulfilled, E pending billing/partially fulfilled (all still open to revsync); F
pending billing (shipped); G billed (invoiced); H closed (billed and shipped); C cancelled."""
CONCURRENCY_BACKOFF_S = 1.0
"""How long to wait after CONCURRENCY_LIMIT_EXCEEDED, which says no Retry-After."""
REQUEST_LIMIT_BACKOFF_S = 5.0

T = TypeVar("T")
Detail = tuple[str, str, str | None]
"""(o:errorCode, detail, o:errorPath)"""


@dataclass(frozen=True)
class NetSuiteConfig:
    """Where the account is, the integration revsync calls it as, and the account's ids."""

    base_url: str
    """``https://{account}.suitetalk.api.netsuite.com`` (see :func:`account_url`)."""
    account_id: str
    """The account id, e.g. ``1234567_SB1``."""
    client_id: str
    """The integration record's client id (consumer key): the assertion's ``iss``."""
    certificate_id: str
    """The id NetSuite gave the certificate uploaded in the M2M setup: the JWT's ``kid``."""
    private_key: SecretStr
    """The certificate's private key, PEM: RSA for PS256/384/512 (and the deprecated RS256),
    EC on the algorithm's curve for ES256/384/512."""
    subsidiaries: Mapping[str, str]
    """Legal entity -> subsidiary internal id, for every legal entity on this account."""
    currencies: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CURRENCIES))
    """ISO currency code -> currency internal id."""
    locations: Mapping[str, str] = field(default_factory=dict)
    """Region -> location internal id; a region not named is its own location id."""
    algorithm: str = "PS256"
    timeout_s: float = 10.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_connections: int = 10
    max_in_flight: int = 5
    """This adapter's share of the account's concurrency pool (15 requests on the service
    tier, shared by every integration): calls beyond it wait for one to finish."""
    token_url: str | None = None
    """The token endpoint; by default the account's own."""
    assertion_lifetime_s: int = 300
    token_refresh_margin_s: float = 300.0
    """How long before the access token expires it is replaced."""

    def __post_init__(self) -> None:
        if not self.subsidiaries:
            raise ValueError("netsuite: subsidiaries names no legal entity")
        if self.max_in_flight < 1:
            raise ValueError(f"netsuite: max_in_flight must be positive, got {self.max_in_flight}")


def account_url(account_id: str) -> str:
    """The REST base URL of ``account_id`` (``1234567_SB1`` ->
    ``https://1234567-sb1.suitetalk.api.netsuite.com``)."""
    return f"https://{account_id.lower().replace('_', '-')}.suitetalk.api.netsuite.com"


def idempotency_key(operation: str, key: str) -> str:
    """The X-NetSuite-Idempotency-Key of ``operation`` under the caller's ``key``: a UUID, the
    same for the same two on every process."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{operation}:{key}"))


def literal(text: str) -> str:
    """``text`` as a SuiteQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class NetSuiteAdapter(ErpPort):
    """The ERP port on a NetSuite account, on one keep-alive connection pool."""

    def __init__(self, config: NetSuiteConfig) -> None:
        self._config = config
        key = signing_key(config.private_key.get_secret_value(), config.algorithm)
        self._client = BoundedClient(
            SYSTEM,
            config.base_url,
            timeout_s=config.timeout_s,
            max_response_bytes=config.max_response_bytes,
            max_connections=config.max_connections,
            headers={"Accept": "application/json"},
        )
        self._session = NetSuiteSession(
            self._client,
            config.token_url or config.base_url.rstrip("/") + TOKEN_PATH,
            config.client_id,
            config.certificate_id,
            key,
            algorithm=config.algorithm,
            assertion_lifetime_s=config.assertion_lifetime_s,
            refresh_margin_s=config.token_refresh_margin_s,
        )
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self._legal_entities = {v: k for k, v in config.subsidiaries.items()}
        self._currency_codes = {v: k for k, v in config.currencies.items()}

    @property
    def session(self) -> NetSuiteSession:
        return self._session

    # --- master data ------------------------------------------------------------------

    def customer(self, customer_id: str) -> Customer | None:
        record = self._record("customer", quote(customer_id, safe=""))
        return None if record is None else self._parsed(self._customer, record, "customer")

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        record = self._record("customer", "eid:" + quote(crm_account_id, safe=""))
        return None if record is None else self._parsed(self._customer, record, "customer")

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        wanted = sorted(set(skus))
        found: dict[str, Product] = {}
        for start in range(0, len(wanted), SKUS_PER_QUERY):
            chunk = wanted[start : start + SKUS_PER_QUERY]
            rows = self._query(
                "SELECT i.id, i.itemid, i.displayname, BUILTIN.DF(i.class) AS class, "  # noqa: S608 - quoted literals
                "i.isinactive, i.subsidiary, BUILTIN.DF(i.saleunit) AS saleunit FROM item i "
                f"WHERE i.itemid IN ({', '.join(map(literal, chunk))}) ORDER BY i.id"
            )
            for row in rows:
                product = self._parsed(self._product, row, "item")
                found[product.sku] = product
        return found

    def price_book(self, price_book_id: str) -> PriceBook | None:
        levels = self._query(
            "SELECT id, name, currency, subsidiary FROM pricelevel "  # noqa: S608 - quoted literals
            f"WHERE id = {literal(price_book_id)}"
        )
        if not levels:
            return None
        level = levels[0]
        prices = self._query(
            "SELECT i.itemid, p.unitprice FROM pricing p JOIN item i ON i.id = p.item "  # noqa: S608 - quoted literals
            f"WHERE p.pricelevel = {literal(price_book_id)} "
            f"AND p.currency = {literal(str(level.get('currency', '')))} ORDER BY i.id"
        )
        return self._parsed(lambda row: self._price_book(row, prices), level, "pricelevel")

    def credit(self, customer_id: str) -> CreditPosition | None:
        record = self._record("customer", quote(customer_id, safe=""))
        if record is None:
            return None
        return self._parsed(self._credit, record, "customer")

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        wanted = sorted(set(skus))
        location = self._config.locations.get(region, region)
        levels: dict[str, StockLevel] = {}
        for start in range(0, len(wanted), SKUS_PER_QUERY):
            chunk = wanted[start : start + SKUS_PER_QUERY]
            rows = self._query(
                "SELECT i.itemid, b.quantityavailable, "  # noqa: S608 - quoted literals
                "TO_CHAR(b.expectedreceiptdate, 'YYYY-MM-DD') AS availableon "
                "FROM inventorybalance b JOIN item i ON i.id = b.item "
                f"WHERE b.location = {literal(location)} "
                f"AND i.itemid IN ({', '.join(map(literal, chunk))}) ORDER BY i.id"
            )
            for row in rows:
                level = self._parsed(lambda r: _stock_level(r, region), row, "inventorybalance")
                levels[level.sku] = level
        return levels

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        criteria = []
        tax_id, duns = normalised_identifier(query.tax_id), normalised_identifier(query.duns)
        if tax_id:
            criteria.append(f"{_identifier_key('c.vatregnumber')} = {literal(tax_id)}")
        if duns:
            criteria.append(f"{_identifier_key('c.custentity_revsync_duns')} = {literal(duns)}")
        if query.name is not None and query.country_code is not None:
            # Names compare without accents and legal forms, which SuiteQL cannot: the
            # country narrows, the port's own comparison decides.
            criteria.append(
                f"UPPER(c.custentity_revsync_country) = {literal(query.country_code.upper())}"
            )
        if not criteria:
            return []
        rows = self._query(
            f"SELECT c.id FROM customer c WHERE {' OR '.join(criteria)} ORDER BY c.id"  # noqa: S608 - quoted literals
        )
        found = [self.customer(str(row["id"])) for row in rows]
        matching = [c for c in found if c is not None and query.matches(c)]
        return sorted(matching, key=lambda c: (len(c.number or ""), c.number or "", c.id))

    # --- customers mastered from CRM accounts ----------------------------------------

    def upsert_customer(self, draft: CustomerDraft, idempotency_key_: str) -> CustomerUpsert:
        subsidiary = self._config.subsidiaries.get(draft.legal_entity)
        if subsidiary is None:
            raise ErpRejected(
                "INVALID_CUSTOMER",
                f"legal entity {draft.legal_entity} has no subsidiary on this account",
                field="legal_entity",
            )
        currency = self._config.currencies.get(draft.currency)
        if currency is None:
            raise ErpRejected(
                "INVALID_CUSTOMER",
                f"currency {draft.currency} is not one of this account's",
                field="currency",
            )
        fields = _customer_fields(draft, subsidiary, currency)
        created = self._write(
            "POST",
            f"{RECORD}/customer",
            {"externalId": draft.crm_account_id, **fields},
            idempotency_key("customer.create", idempotency_key_),
            refusal=self._customer_refusal,
        )
        if created.status_code == 204:
            return CustomerUpsert(self._customer_at(created), created=True)
        if _code(created) == "IDEMPOTENCY_ERROR":
            return CustomerUpsert(self._replayed_customer(draft), created=True)
        # DUP_RCRD: the account has its customer; the CRM-owned fields go onto it.
        existing = self.customer_by_account(draft.crm_account_id)
        if existing is None:
            raise TransientError(
                f"{SYSTEM}: customer {draft.crm_account_id!r} was reported a duplicate but "
                "cannot be read by its external id yet"
            )
        updated = self._write(
            "PATCH",
            f"{RECORD}/customer/{quote(existing.id, safe='')}",
            fields,
            idempotency_key("customer.update", idempotency_key_),
            refusal=self._customer_refusal,
        )
        if updated.status_code == 204:
            return CustomerUpsert(self._customer_at(updated), created=False)
        return CustomerUpsert(self._replayed_customer(draft), created=False)

    def _replayed_customer(self, draft: CustomerDraft) -> Customer:
        """The customer an earlier request under this key wrote, if it wrote what ``draft``
        asks; else the key was used for another request."""
        customer = self.customer_by_account(draft.crm_account_id)
        if customer is None or not _holds(customer, draft):
            raise IdempotencyConflict(
                f"{SYSTEM}: the idempotency key of customer {draft.crm_account_id!r} was used "
                "with a different request"
            )
        return customer

    def _customer_at(self, response: httpx.Response) -> Customer:
        customer = self.customer(_location_id(response))
        if customer is None:
            raise TransientError(f"{failed_call(SYSTEM, response)}: the written customer is gone")
        return customer

    # --- sales orders -----------------------------------------------------------------

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key_: str) -> SalesOrder:
        booked = self._order_record("eid:" + quote(request.external_id, safe=""))
        if booked is not None:
            return self._parsed(self._sales_order, booked, "salesOrder")
        items = self._item_ids(request)
        body = self._order_body(request, items)
        path = f"{RECORD}/salesOrder/eid:{quote(request.external_id, safe='')}"
        try:
            response = self._write(
                "PUT",
                path,
                body,
                idempotency_key("salesOrder.create", idempotency_key_),
                refusal=lambda details, r: self._order_refusal(details, r, request),
            )
        except TransientError as lost:
            # The answer may be lost after the order was booked: if it is there, it is ours.
            try:
                found = self._order_or_none(request.external_id)
            except TransientError:
                raise lost from None
            if found is None:
                raise
            return found
        if response.status_code == 204:
            record = self._order_record(quote(_location_id(response), safe=""))
            if record is None:
                raise TransientError(f"{failed_call(SYSTEM, response)}: the booked order is gone")
            return self._parsed(self._sales_order, record, "salesOrder")
        # IDEMPOTENCY_ERROR or DUP_RCRD: whatever booked this external id booked our order.
        found = self._order_or_none(request.external_id)
        if found is None and _code(response) in DUPLICATE_CODES:
            raise TransientError(
                f"{failed_call(SYSTEM, response, _code(response))}: a duplicate of an order "
                "that cannot be read by its external id yet"
            )
        if found is None:
            raise IdempotencyConflict(
                f"{failed_call(SYSTEM, response, _code(response))}: the idempotency key was "
                "used with a different request"
            )
        return found

    def cancel_sales_order(
        self, external_id: str, reason: str, idempotency_key_: str
    ) -> SalesOrder:
        record = self._order_record("eid:" + quote(external_id, safe=""))
        if record is None:
            raise ErpOrderMissing(f"{SYSTEM}: no sales order has external id {external_id!r}")
        order = self._parsed(self._sales_order, record, "salesOrder")
        response = self._write(
            "PATCH",
            f"{RECORD}/salesOrder/{quote(order.id, safe='')}",
            {"orderStatus": {"id": "C"}, "custbody_revsync_cancel_reason": reason},
            idempotency_key("salesOrder.cancel", idempotency_key_),
            refusal=lambda details, r: self._order_refusal(details, r, None),
        )
        after = self._order_record(quote(order.id, safe=""))
        if after is None:
            raise ErpOrderMissing(f"{SYSTEM}: no sales order has external id {external_id!r}")
        cancelled = self._parsed(self._sales_order, after, "salesOrder")
        if response.status_code != 204 and (
            cancelled.status is not SalesOrderStatus.CANCELLED
            or after.get("custbody_revsync_cancel_reason") != reason
        ):
            raise IdempotencyConflict(
                f"{failed_call(SYSTEM, response, _code(response))}: the idempotency key was "
                "used with a different request"
            )
        return cancelled

    def _order_or_none(self, external_id: str) -> SalesOrder | None:
        record = self._order_record("eid:" + quote(external_id, safe=""))
        return None if record is None else self._parsed(self._sales_order, record, "salesOrder")

    def _order_record(self, key: str) -> dict[str, Any] | None:
        return self._record("salesOrder", key)

    def _item_ids(self, request: SalesOrderRequest) -> dict[str, str]:
        """The internal id of each of the order's SKUs; unknown or inactive ones are refused
        here, as the account would refuse a line without an item."""
        skus = sorted({line.sku for line in request.lines})
        rows: list[dict[str, Any]] = []
        for start in range(0, len(skus), SKUS_PER_QUERY):
            chunk = skus[start : start + SKUS_PER_QUERY]
            rows += self._query(
                "SELECT i.id, i.itemid, i.isinactive FROM item i "  # noqa: S608 - quoted literals
                f"WHERE i.itemid IN ({', '.join(map(literal, chunk))}) ORDER BY i.id"
            )
        active = {
            str(r.get("itemid")): str(r.get("id")) for r in rows if r.get("isinactive") != "T"
        }
        missing = [sku for sku in skus if sku not in active]
        if missing:
            raise ErpRejected("UNKNOWN_PRODUCT", "unknown or inactive products", tuple(missing))
        return active

    def _order_body(self, request: SalesOrderRequest, items: Mapping[str, str]) -> dict[str, Any]:
        subsidiary = self._config.subsidiaries.get(request.legal_entity)
        if subsidiary is None:
            raise ErpRejected(
                "INVALID_ORDER",
                f"legal entity {request.legal_entity} has no subsidiary on this account",
                field="legal_entity",
            )
        currency = self._config.currencies.get(request.currency)
        if currency is None:
            raise ErpRejected(
                "UNSUPPORTED_CURRENCY", f"currency {request.currency} is not one of this account's"
            )
        ship_to = request.ship_to
        header = {
            "entity": {"id": request.customer_id},
            "subsidiary": {"id": subsidiary},
            "currency": {"id": currency},
            "location": {"id": self._config.locations.get(request.region, request.region)},
            "otherRefNum": request.po_number,
            "shipDate": (
                request.requested_delivery_date.isoformat()
                if request.requested_delivery_date
                else None
            ),
            "memo": request.correlation_id,
            "shippingAddress": {
                name: value for name, value in _address_fields(ship_to).items() if value is not None
            },
            "item": {
                "items": [
                    {
                        "line": line.line_number,
                        "item": {"id": items[line.sku]},
                        "quantity": float(line.quantity),
                        "rate": float(line.unit_price),
                        "price": {"id": request.price_book_id},
                        "custcol_revsync_discount": float(line.discount_amount),
                        "custcol_revsync_tax_amount": float(line.tax_amount),
                    }
                    for line in request.lines
                ]
            },
        }
        return {name: value for name, value in header.items() if value is not None}

    # --- the wire ---------------------------------------------------------------------

    def _record(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record, or None when NetSuite has no such one."""
        response = self._send(
            "GET", f"{RECORD}/{kind}/{key}", params={"expandSubResources": "true"}
        )
        if response.status_code == 404 and _code(response) in MISSING_CODES:
            return None
        if response.status_code != 200:
            raise self._unexpected(response)
        return _json(response)

    def suiteql(self, query: str, *, limit: int, offset: int) -> Mapping[str, Any]:
        """One page of a SuiteQL query as NetSuite answers it (``items``, ``hasMore``,
        ``totalResults``...); a refused query is :class:`ErpUnexpectedResponse` naming
        NetSuite's error code."""
        response = self._send(
            "POST",
            SUITEQL,
            params={"limit": str(limit), "offset": str(offset)},
            json_body={"q": query},
            headers={"Prefer": "transient"},
        )
        if response.status_code != 200:
            raise self._unexpected(response)
        page = _json(response)
        if not isinstance(page.get("items"), list):
            raise ErpUnexpectedResponse(f"{failed_call(SYSTEM, response)}: no items")
        return page

    def _query(self, query: str) -> list[dict[str, Any]]:
        """Every row of a SuiteQL query, page by page (its ORDER BY must be unique)."""
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            if offset + PAGE > ROW_CAP:
                raise ErpUnexpectedResponse(
                    f"{SYSTEM}: a SuiteQL query passed {ROW_CAP} rows; it must be narrowed"
                )
            page = self.suiteql(query, limit=PAGE, offset=offset)
            rows += [item for item in page["items"] if isinstance(item, dict)]
            if not page.get("hasMore"):
                return rows
            offset += PAGE

    def _write(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        key: str,
        *,
        refusal: Callable[[list[Detail], httpx.Response], None],
    ) -> httpx.Response:
        """A write under ``key``: its 204, or the 400 IDEMPOTENCY_ERROR or duplicate the
        caller resolves; every other refusal raised through ``refusal`` or as unexpected."""
        response = self._send(
            method, path, json_body=body, headers={"X-NetSuite-Idempotency-Key": key}
        )
        if response.status_code == 204:
            return response
        if response.status_code == 404 and _code(response) in MISSING_CODES:
            # The record was there a moment ago: read again on the next attempt.
            raise TransientError(failed_call(SYSTEM, response, _code(response)))
        details = _details(response)
        codes = {code for code, _, _ in details}
        if response.status_code == 400 and codes & ({"IDEMPOTENCY_ERROR"} | DUPLICATE_CODES):
            return response
        if response.status_code == 400:
            refusal(details, response)
        raise self._unexpected(response)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call with the session's token, refreshed once if NetSuite says INVALID_LOGIN;
        the account's refusals to take more (429) and failures that may pass are
        :class:`~revsync.errors.TransientError`."""
        with self._slots:
            token = self._session.token()
            response = self._call(method, path, token, params, json_body, headers)
            if response.status_code == 401:
                token = self._session.refresh(token)
                response = self._call(method, path, token, params, json_body, headers)
        code = _code(response)
        if response.status_code in (401, 403):
            raise NetSuiteAuthFailed(
                f"{failed_call(SYSTEM, response, code)}: the integration's token or role was "
                "refused"
            )
        if response.status_code == 429:
            backoff = (
                CONCURRENCY_BACKOFF_S
                if code == "CONCURRENCY_LIMIT_EXCEEDED"
                else REQUEST_LIMIT_BACKOFF_S
            )
            raise TransientError(
                f"{failed_call(SYSTEM, response, code)}: the account takes no more requests now",
                retry_after=retry_after_s(response) or backoff,
            )
        if code in TRANSIENT_CODES or response.status_code in TRANSIENT_STATUSES:
            raise TransientError(failed_call(SYSTEM, response, code), retry_after_s(response))
        return response

    def _call(
        self,
        method: str,
        path: str,
        token: str,
        params: dict[str, str] | None,
        json_body: dict[str, Any] | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        return self._client.request(
            method,
            path,
            params=params,
            json_body=json_body,
            headers={**(headers or {}), "Authorization": f"Bearer {token}"},
        )

    def _customer_refusal(self, details: list[Detail], response: httpx.Response) -> None:
        for code, detail, path in details:
            if code in VALIDATION_CODES or code == "INVALID_CUSTOMER":
                field = CUSTOMER_FIELDS.get(path or "", path)
                raise ErpRejected("INVALID_CUSTOMER", detail or code, field=error_code(field))
            if code in BUSINESS_CODES:
                raise ErpRejected(code, detail or code, field=error_code(path))

    def _order_refusal(
        self, details: list[Detail], response: httpx.Response, request: SalesOrderRequest | None
    ) -> None:
        business = [d for d in details if d[0] in BUSINESS_CODES | VALIDATION_CODES]
        if not business:
            return
        code = business[0][0]
        skus: set[str] = set()
        fields: list[str] = []
        for _, _, path in business:
            line = LINE_PATH.fullmatch(path or "")
            if line and request is not None and line["field"] in SKU_FIELDS:
                index = int(line["index"])
                if index < len(request.lines):
                    skus.add(request.lines[index].sku)
            elif line:
                name = LINE_FIELDS.get(line["field"], line["field"])
                fields.append(f"lines.{line['index']}.{name}")
            elif path:
                fields.append(ORDER_FIELDS.get(path, path))
        if code in VALIDATION_CODES:
            code = "INVALID_ORDER"
        message = business[0][1] or code
        field_name = error_code(fields[0]) if fields else None
        raise ErpRejected(code, message, tuple(sorted(skus)), field_name)

    @staticmethod
    def _unexpected(response: httpx.Response) -> ErpUnexpectedResponse:
        details = _details(response)
        path = error_code(details[0][2]) if details else None
        named = f" at {path}" if path else ""
        return ErpUnexpectedResponse(f"{failed_call(SYSTEM, response, _code(response))}{named}")

    def _parsed(
        self, build: Callable[[dict[str, Any]], T], document: dict[str, Any], kind: str
    ) -> T:
        """``build(document)``, a shape error reported as NetSuite's fault by the field's
        name or the value's kind, never the value."""
        try:
            return build(document)
        except KeyError as missing:
            problem = f"no field {missing.args[0]!r}"
        except (TypeError, ValueError, InvalidOperation, AttributeError) as error:
            problem = f"a value of the wrong type or form ({type(error).__name__})"
        raise ErpUnexpectedResponse(f"{SYSTEM}: malformed {kind}: {problem}")

    # --- records as the port's types --------------------------------------------------

    def _legal_entity(self, reference: Any) -> str:
        internal_id = str(reference["id"])
        if internal_id not in self._legal_entities:
            raise ValueError("a subsidiary no legal entity is configured for")
        return self._legal_entities[internal_id]

    def _currency(self, reference: Any) -> str:
        internal_id = str(reference["id"] if isinstance(reference, Mapping) else reference)
        if internal_id not in self._currency_codes:
            raise ValueError("a currency not configured")
        return self._currency_codes[internal_id]

    def _customer(self, record: dict[str, Any]) -> Customer:
        inactive = record.get("isInactive") is True
        hold = (record.get("creditHoldOverride") or {}).get("id") == "ON"
        status = (
            CustomerStatus.BLOCKED
            if inactive
            else CustomerStatus.CREDIT_HOLD
            if hold
            else CustomerStatus.ACTIVE
        )
        blocks = record.get("custentity_revsync_blocks") or ""
        terms = record.get("terms")
        return Customer(
            id=str(record["id"]),
            name=record["companyName"],
            crm_account_id=record.get("externalId"),
            legal_entity=self._legal_entity(record["subsidiary"]),
            status=status,
            credit_limit=_money(record.get("creditLimit", 0)),
            currency=self._currency(record["currency"]),
            number=record.get("entityId"),
            payment_terms=terms.get("refName") if isinstance(terms, Mapping) else None,
            blocks=tuple(b.strip() for b in str(blocks).split(",") if b.strip()),
            tax_id=record.get("vatRegNumber"),
            duns=record.get("custentity_revsync_duns"),
            country_code=record.get("custentity_revsync_country"),
            billing_address=_billing_address(record.get("addressBook")),
        )

    def _credit(self, record: dict[str, Any]) -> CreditPosition:
        customer = self._customer(record)
        return CreditPosition(
            customer_id=customer.id,
            status=customer.status,
            currency=customer.currency,
            credit_limit=customer.credit_limit,
            exposure=money(
                _money(record.get("balance", 0)) + _money(record.get("unbilledOrders", 0))
            ),
        )

    def _product(self, row: dict[str, Any]) -> Product:
        subsidiaries = [s.strip() for s in str(row.get("subsidiary") or "").split(",") if s.strip()]
        return Product(
            sku=row["itemid"],
            name=row.get("displayname") or row["itemid"],
            product_line=row.get("class") or "",
            unit_of_measure=row.get("saleunit") or "EA",
            active=row.get("isinactive") != "T",
            legal_entities=frozenset(
                self._legal_entities[s] for s in subsidiaries if s in self._legal_entities
            ),
        )

    def _price_book(self, level: dict[str, Any], prices: Iterable[dict[str, Any]]) -> PriceBook:
        return PriceBook(
            id=str(level["id"]),
            name=level["name"],
            currency=self._currency(level["currency"]),
            legal_entity=self._legal_entity({"id": level["subsidiary"]}),
            prices={row["itemid"]: _money(row["unitprice"]) for row in prices},
        )

    def _sales_order(self, record: dict[str, Any]) -> SalesOrder:
        status = record.get("orderStatus") or record.get("status") or {}
        credit = record.get("custbody_revsync_credit_check")
        pricing = record.get("custbody_revsync_pricing_outcome")
        return SalesOrder(
            id=str(record["id"]),
            number=record["tranId"],
            external_id=record["externalId"],
            customer_id=str(record["entity"]["id"]),
            status=ORDER_STATUSES[status["id"]],
            currency=self._currency(record["currency"]),
            subtotal=_money(record.get("subtotal", 0)),
            tax_total=_money(record.get("taxTotal", 0)),
            grand_total=_money(record["total"]),
            credit_check=CreditCheckOutcome(credit) if credit else CreditCheckOutcome.UNKNOWN,
            pricing_outcome=PricingOutcome(pricing) if pricing else PricingOutcome.UNKNOWN,
            created_at=_timestamp(record["createdDate"]),
        )

    def close(self) -> None:
        self._client.close()


def _stock_level(row: dict[str, Any], region: str) -> StockLevel:
    available_on = row.get("availableon")
    return StockLevel(
        sku=row["itemid"],
        region=region,
        quantity=_money(row.get("quantityavailable", "0")),
        available_on=date.fromisoformat(available_on) if available_on else None,
    )


def _identifier_key(column: str) -> str:
    """A tax id or DUNS column without spacing, dashes, dots or slashes, in capitals: what
    :func:`~revsync.ports.erp.normalised_identifier` keeps of what NetSuite may hold."""
    stripped = column
    for character in (" ", "-", ".", "/"):
        stripped = f"REPLACE({stripped}, '{character}', '')"
    return f"UPPER({stripped})"


def _customer_fields(draft: CustomerDraft, subsidiary: str, currency: str) -> dict[str, Any]:
    """The CRM-owned fields of ``draft`` as the customer record's; an empty one is written
    as null, which clears it."""
    book: dict[str, Any] = {"items": []}
    if draft.billing_address is not None:
        book["items"] = [
            {
                "defaultBilling": True,
                "defaultShipping": False,
                "addressBookAddress": _address_fields(draft.billing_address),
            }
        ]
    return {
        "companyName": draft.name,
        "subsidiary": {"id": subsidiary},
        "currency": {"id": currency},
        "custentity_revsync_country": draft.country_code,
        "vatRegNumber": draft.tax_id,
        "custentity_revsync_duns": draft.duns,
        "addressBook": book,
    }


def _address_fields(address: Address) -> dict[str, Any]:
    return {
        "addr1": address.street,
        "city": address.city,
        "state": address.state_province,
        "zip": address.postal_code,
        "country": {"id": address.country_code},
    }


def _holds(customer: Customer, draft: CustomerDraft) -> bool:
    """Whether ``customer`` holds every CRM-owned field as ``draft`` has it."""
    return (
        customer.name,
        customer.legal_entity,
        customer.currency,
        customer.country_code,
        customer.tax_id,
        customer.duns,
        customer.billing_address,
    ) == (
        draft.name,
        draft.legal_entity,
        draft.currency,
        draft.country_code,
        draft.tax_id,
        draft.duns,
        draft.billing_address,
    )


def _billing_address(book: object) -> Address | None:
    items = book.get("items") if isinstance(book, Mapping) else None
    billing = [
        i["addressBookAddress"]
        for i in items or []
        if isinstance(i, Mapping) and i.get("defaultBilling") and "addressBookAddress" in i
    ]
    if not billing:
        return None
    address = billing[0]
    country = address.get("country")
    return Address(
        street=address["addr1"],
        city=address["city"],
        state_province=address.get("state"),
        postal_code=address.get("zip"),
        country_code=country["id"] if isinstance(country, Mapping) else country,
    )


def _money(value: object) -> Decimal:
    """A NetSuite amount (a JSON number, or SuiteQL's string) at the ERP's four places."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise TypeError("an amount is not a number")
    amount = Decimal(value) if isinstance(value, str | Decimal) else Decimal(repr(value))
    if not amount.is_finite():
        raise ValueError("an amount is not finite")
    return money(amount)


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a timestamp without its offset")
    return moment


def _location_id(response: httpx.Response) -> str:
    location = str(response.headers.get("Location", ""))
    internal_id = location.rstrip("/").rsplit("/", 1)[-1]
    if not location or not internal_id:
        raise ErpUnexpectedResponse(f"{failed_call(SYSTEM, response)}: no Location")
    return internal_id


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ErpUnexpectedResponse(
            f"{SYSTEM}: {response.request.method} {response.request.url.path} answered "
            f"HTTP {response.status_code} without a JSON object"
        )
    return document


def _details(response: httpx.Response) -> list[Detail]:
    """The ``o:errorDetails`` of NetSuite's error body, as (code, detail, path)."""
    try:
        document = json.loads(response.content) if response.content else None
    except ValueError:
        return []
    if not isinstance(document, Mapping):
        return []
    details = document.get("o:errorDetails")
    if not isinstance(details, list):
        return []
    return [
        (
            str(d.get("o:errorCode") or ""),
            str(d.get("detail") or ""),
            d.get("o:errorPath") if isinstance(d.get("o:errorPath"), str) else None,
        )
        for d in details
        if isinstance(d, Mapping)
    ]


def _code(response: httpx.Response) -> str | None:
    details = _details(response)
    return error_code(details[0][0]) if details else None
