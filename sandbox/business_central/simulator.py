"""The Business Central simulator: BC's API v2.0 shape (Entra client-credentials tokens,
companies, customers, items, sales orders with deep insert and ETags, sales invoices,
shipments, customer payments, payment terms, company information, webhook subscriptions) and
revsync's extension API (``/api/revsync/integration/v1.0``: customer links, price lists, item
availability, sales order states, request keys) over the ERP sandbox's books in schema
``business_central``.

The business behaviour is the books' (:mod:`sandbox.erp.orders`, :mod:`sandbox.erp.customers`):
their refusals come back as BC's 400 ``Application_DialogException`` with the reason code first
in the message (``CREDIT_HOLD: ...``, the items at fault as ``[items: A, B]``, a customer's field
as ``[field: currencyCode]``), as revsync's validation extension raises them.

How the books' records show as BC's:

- One company per legal entity (guid from tenant, environment and code; ``name`` the code);
  a record is in the company of its legal entity. Ids are the books' ids.
- ``salesOrders``: every order not cancelled (``status`` ``Open``, or ``Released`` once
  invoiced; BC itself removes a fully posted order), ``shortcutDimension1Code`` the region.
  A deep insert prices against the company's first price list in the order's currency and
  takes each line's ``taxPercent`` of its net amount as its tax. Two orders may share an
  external document number, as in BC (the second gets an external id of its own in the books).
  ``DELETE`` removes an open order; ``PATCH`` changes ``requestedDeliveryDate``,
  ``shortcutDimension1Code`` and the ship-to fields of an open one. An order for a customer
  of another company is refused (``CUSTOMER_NOT_MASTERED``) once the books' own checks pass.
- ``salesInvoices``: ``status`` ``Open`` or ``Paid``, ``remainingAmount``; changed when paid.
  ``customerPayments`` (also under ``customerPaymentJournals({id})``): ``amount`` negative, as
  a payment journal line credits the customer, ``appliesToInvoiceId``.
- ``customers``: ``country`` the customer's country, the address its billing address,
  ``blocked`` from the books' blocks (``Ship``, ``Invoice``, ``All``).
- ``items`` and ``priceLists`` carry a fixed ``lastModifiedDateTime`` (the books keep none).
- Every collection takes ``$filter`` (``eq ne gt ge lt le``, ``and or not``, parentheses),
  ``$orderby``, ``$top``, ``$skip``, ``$select``, ``$expand`` of its lines, and pages
  ``page_size`` records at a time with ``@odata.nextLink`` (``$skiptoken`` an offset).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urlencode

import psycopg
from psycopg import errors
from pydantic import ValidationError

from revsync.contracts.events import money
from sandbox.business_central import entities, odata
from sandbox.business_central.entities import EntitySet
from sandbox.business_central.odata import (
    bad_request,
    error,
    filter_sql,
    loads,
    matches_etag,
    not_found,
    timestamp,
)
from sandbox.business_central.webhooks import Change, Notifier, Subscriptions
from sandbox.erp import customers as books_customers
from sandbox.erp import orders as books_orders
from sandbox.erp.customers import DEFAULT_CREDIT_LIMITS, CustomerEdit, CustomerInvalid
from sandbox.erp.orders import OrderBody
from sandbox.erp.simulator import (
    ErpSimulator,
)
from sandbox.erp.store import Connection, connect, migrate
from sandbox.http import CONTROL_PREFIX, HttpFailure, Request, Response

SCHEMA = "business_central"
DEFAULT_TENANT_ID = "7c1d3a52-0b5e-4f63-9d0a-5be1c0f7a001"
DEFAULT_ENVIRONMENT = "production"
DEFAULT_CLIENT_ID = "3f9a1c70-6d1b-4e8e-a2c4-0b7d5e1f2a90"
DEFAULT_CLIENT_SECRET = "sandbox-business-central-secret"  # noqa: S105 - the sandbox's default
SCOPE = "https://api.businesscentral.dynamics.com/.default"
COMPANY_NAMESPACE = uuid.UUID("2d6e0b1c-8f3a-4a9e-b5d7-1c0e6f4a3b21")
LEGAL_ENTITY_CURRENCIES = {"US01": "USD", "CA01": "CAD", "DE01": "EUR", "GB01": "GBP"}
CONTROL = CONTROL_PREFIX + "business-central/"
THREE_DAYS_S = 3 * 24 * 3600.0

MIGRATION = """
CREATE TABLE IF NOT EXISTS bc_sales_orders (
    order_id                 text PRIMARY KEY,
    external_document_number text NOT NULL,
    modified_at              timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE bc_sales_orders DROP CONSTRAINT IF EXISTS bc_sales_orders_order_id_fkey;
CREATE INDEX IF NOT EXISTS bc_sales_orders_external
    ON bc_sales_orders (external_document_number);
"""
"""What BC keeps beside the books: an order's own external document number (BC lets two
orders share one, the books' external id is unique) and the time of its last edit. No foreign
key: the books' reset empties their tables without knowing this one (order ids never repeat)."""

ORDER_FIELDS = frozenset(
    {
        "externalDocumentNumber", "customerId", "customerNumber", "currencyCode", "orderDate",
        "requestedDeliveryDate", "shipToName", "shipToContact", "shipToAddressLine1",
        "shipToAddressLine2", "shipToCity", "shipToState", "shipToCountry", "shipToPostCode",
        "shortcutDimension1Code", "pricesIncludeTax", "salesOrderLines",
    }
)  # fmt: skip
ORDER_LINE_FIELDS = frozenset(
    {
        "sequence", "lineType", "lineObjectNumber", "itemId", "description", "quantity",
        "unitPrice", "discountAmount", "taxPercent",
    }
)  # fmt: skip
ORDER_FIELD_NAMES = {
    "ship_to.street": "shipToAddressLine1",
    "ship_to.city": "shipToCity",
    "ship_to.country_code": "shipToCountry",
    "currency": "currencyCode",
    "region": "shortcutDimension1Code",
    "lines": "salesOrderLines",
    "requested_delivery_date": "requestedDeliveryDate",
}
"""A books' field of an order as BC names it, for the message of a refusal."""
ORDER_PATCH_FIELDS = {
    "requestedDeliveryDate": "requested_delivery_date",
    "shortcutDimension1Code": "region",
}
SHIP_TO = {
    "shipToAddressLine1": "street",
    "shipToCity": "city",
    "shipToState": "state_province",
    "shipToPostCode": "postal_code",
    "shipToCountry": "country_code",
}
LINK_FIELDS = {
    "crmAccountId": "crm_account_id",
    "displayName": "name",
    "countryCode": "country_code",
    "currencyCode": "currency",
    "taxRegistrationNumber": "tax_id",
    "dunsNumber": "duns",
}
BILLING = {
    "billingAddressLine1": "street",
    "billingCity": "city",
    "billingState": "state_province",
    "billingPostalCode": "postal_code",
    "billingCountryCode": "country_code",
}
BOOKS_FIELD_NAMES = {
    **{books: bc for bc, books in LINK_FIELDS.items()},
    **{f"billing_address.{books}": bc for bc, books in BILLING.items()},
    "billing_address": "billingAddressLine1",
}
"""A books' field as revsync's extension names it, for the message of a refusal."""


@dataclass
class Settings:
    """The simulator's knobs (``PUT /__sandbox/business-central/settings``)."""

    concurrency_limit: int = 5
    """Requests served at once in the environment; one more is 429 with Retry-After."""
    retry_after_s: int = 1
    token_lifetime_s: float = 3599.0
    page_size: int = 100
    """Rows per page of a collection before ``@odata.nextLink``."""
    subscription_lifetime_s: float = THREE_DAYS_S
    notification_interval_s: float = 1.0
    """How often notifications go out in batches (BC: about 30 s)."""
    collapse_threshold: int = 100
    """More changes than this for one entity set in one batch become one ``collection``
    notification."""
    notification_attempts: int = 5
    """Deliveries of a batch answered 408, 429 or 5xx (or not at all) before it is given up
    (BC retries for about 36 hours)."""
    notification_timeout_s: float = 5.0
    """How long the handshake and a delivery wait for the receiver's answer."""
    drop_next_notifications: int = 0
    """The next N notifications are lost (never sent): a missed notification."""
    duplicate_next_notifications: int = 0
    """The next N notifications are sent twice, in one batch."""

    def update(self, changes: dict[str, Any]) -> None:
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        values = {name: type(getattr(self, name))(value) for name, value in changes.items()}
        if any(value < 0 for value in values.values()):
            raise ValueError("settings are not negative")
        if values.get("concurrency_limit", 1) < 1 or values.get("page_size", 1) < 1:
            raise ValueError("concurrency_limit and page_size are at least 1")
        for name, value in values.items():
            setattr(self, name, value)


@dataclass(frozen=True)
class Company:
    id: str
    legal_entity: str
    currency: str

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "systemVersion": "25.0.0.0",
            "timestamp": 0,
            "name": self.legal_entity,
            "displayName": f"revsync {self.legal_entity}",
            "businessProfileId": "",
            "systemCreatedAt": "2026-01-01T00:00:00Z",
            "systemCreatedBy": DEFAULT_CLIENT_ID,
            "systemModifiedAt": "2026-01-01T00:00:00Z",
            "systemModifiedBy": DEFAULT_CLIENT_ID,
        }


def company_id(tenant_id: str, environment: str, legal_entity: str) -> str:
    """A company's guid: the same for a tenant, environment and legal entity in every run."""
    return str(uuid.uuid5(COMPANY_NAMESPACE, f"{tenant_id}/{environment}/{legal_entity}"))


class BusinessCentralSimulator:
    """Business Central's API for one tenant and environment on ``host:port``, its books in
    schema ``business_central`` of ``dsn``."""

    def __init__(
        self,
        dsn: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tenant_id: str = DEFAULT_TENANT_ID,
        environment: str = DEFAULT_ENVIRONMENT,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        invoice_delay_s: float = 0.5,
        ship_delay_s: float = 1.0,
        payment_delay_s: float = -1.0,
        reset: bool = False,
        seed: int | None = None,
        concurrency_limit: int = 5,
        notification_interval_s: float = 1.0,
        subscription_lifetime_s: float = THREE_DAYS_S,
        token_lifetime_s: float = 3599.0,
        collapse_threshold: int = 100,
        notification_attempts: int = 5,
        page_size: int = 100,
        schema: str = SCHEMA,
    ) -> None:
        self.tenant_id = tenant_id
        self.environment = environment
        self._client_id = client_id
        self._client_secret = client_secret.encode()
        self.books = ErpSimulator(
            dsn,
            host=host,
            port=port,
            invoice_delay_s=invoice_delay_s,
            ship_delay_s=ship_delay_s,
            payment_delay_s=payment_delay_s,
            reset=reset,
            seed=seed,
            schema=schema,
            reference_api=False,
        )
        self._dsn = dsn
        self._schema = schema
        self._reset_at_start = reset
        self.settings = Settings(
            concurrency_limit=concurrency_limit,
            token_lifetime_s=token_lifetime_s,
            page_size=page_size,
            subscription_lifetime_s=subscription_lifetime_s,
            notification_interval_s=notification_interval_s,
            collapse_threshold=collapse_threshold,
            notification_attempts=notification_attempts,
        )
        self.companies = {
            company.id: company
            for company in (
                Company(company_id(tenant_id, environment, code), code, currency)
                for code, currency in LEGAL_ENTITY_CURRENCIES.items()
                if code in DEFAULT_CREDIT_LIMITS
            )
        }
        self._tokens: dict[str, float] = {}
        self._tokens_lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        server = self.books.server
        server.dumps = odata.dumps
        server.loads = loads
        self.subscriptions = Subscriptions(self)
        self.notifier = Notifier(self, dsn, schema)
        self._routes()

    # --- where it is ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root: the token endpoint, the API and the control API are under it."""
        return self.books.url

    @property
    def api_url(self) -> str:
        """BC's API v2.0 root for the tenant and environment."""
        return f"{self.url}{self._environment_root}/api/v2.0"

    @property
    def extension_url(self) -> str:
        """revsync's extension API root for the tenant and environment."""
        return f"{self.url}{self._environment_root}/api/revsync/integration/v1.0"

    @property
    def token_url(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def _environment_root(self) -> str:
        return f"/v2.0/{self.tenant_id}/{self.environment}"

    def company(self, legal_entity: str) -> Company:
        return next(c for c in self.companies.values() if c.legal_entity == legal_entity)

    def start(self) -> BusinessCentralSimulator:
        with connect(self._dsn, self._schema) as connection:
            migrate(connection)
            with connection.transaction():
                connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('revsync.sandbox.business_central'))"
                )
                connection.execute(MIGRATION)
                if self._reset_at_start:
                    connection.execute("TRUNCATE bc_sales_orders")
        self.books.start()
        self.notifier.start()
        return self

    def stop(self) -> None:
        self.notifier.stop()
        self.books.stop()

    # --- routing -----------------------------------------------------------------------

    def _routes(self) -> None:
        route = self.books.server.route
        tenant = self.tenant_id
        route("POST", rf"/{tenant}/oauth2/v2\.0/token", self._token, faults=False)
        root = f"{self._environment_root}/api/v2\\.0"
        extension = f"{self._environment_root}/api/revsync/integration/v1\\.0"
        company = r"/companies\((?P<company>[^)/]*)\)"
        entity = r"/(?P<entity>[A-Za-z]+)(?:\((?P<key>[^)/]*)\))?"
        tail = r"(?:/(?P<tail>[A-Za-z.]+))?"
        api = self._api
        api("GET", root + r"/companies", self._companies)
        api("GET", root + company, self._company)
        for method in ("GET", "POST", "PATCH", "DELETE"):
            api(method, root + company + entity + tail, self._standard)
            api(method, extension + company + entity + tail, self._extension)
        api("GET", extension + r"/companies", self._companies)
        subscriptions = root + r"/subscriptions"
        one = subscriptions + r"\((?P<subscription>[^)/]*)\)"
        api("GET", subscriptions, self.subscriptions.list)
        api("POST", subscriptions, self.subscriptions.create)
        api("GET", one, self.subscriptions.get)
        api("PATCH", one, self.subscriptions.renew)
        api("DELETE", one, self.subscriptions.delete)
        control = self.books.server.route
        control("GET", CONTROL + "settings", lambda _: Response(body=asdict(self.settings)))
        control("PUT", CONTROL + "settings", self._set_settings)
        control("GET", CONTROL + "subscriptions", self.subscriptions.inspect)
        control("GET", CONTROL + "notifications", self.notifier.inspect)
        control("POST", CONTROL + "notifications/flush", self.notifier.flush)
        control("POST", CONTROL + "tokens/expire", self._expire_tokens)
        control("GET", CONTROL + "companies", self._companies)

    def _api(self, method: str, pattern: str, handler: Callable[[Request], Response]) -> None:
        def guarded(request: Request) -> Response:
            self._authorise(request)
            request.params = {
                name: unquote(value) if value else value for name, value in request.params.items()
            }
            with self._slot():
                try:
                    return handler(request)
                except psycopg.Error as failure:
                    # The books' database failing: BC's answer to its own store failing.
                    self.books.server.count("business_central.internal_errors")
                    raise error(
                        500,
                        "Internal_ServerError",
                        f"An internal error occurred ({failure.sqlstate}).",
                    ) from None

        self.books.server.route(method, pattern, guarded)

    def _authorise(self, request: Request) -> None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        with self._tokens_lock:
            expires = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expires is not None and expires > time.monotonic():
            return
        self.books.server.count("business_central.unauthorized")
        reason = "invalid_token" if expires is not None or token else "invalid_request"
        challenge = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/{self.tenant_id}/'
            f'oauth2/authorize", error="{reason}"'
        )
        raise error(
            401,
            "Unauthorized",
            "The credentials provided are incorrect"
            if reason == "invalid_token"
            else "Authentication failed: no bearer token was given",
            {"WWW-Authenticate": challenge},
        )

    @contextmanager
    def _slot(self) -> Iterator[None]:
        with self._in_flight_lock:
            if self._in_flight >= self.settings.concurrency_limit:
                self.books.server.count("business_central.throttled")
                raise error(
                    429,
                    "Application_TooManyRequests",
                    f"Too many requests reached. Actual ({self._in_flight + 1}). "
                    f"Maximum ({self.settings.concurrency_limit}).",
                    {"Retry-After": str(self.settings.retry_after_s)},
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    # --- Entra ID ----------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.body if isinstance(request.body, dict) else {}

        def refuse(status: int, code: str, description: str, number: int) -> HttpFailure:
            return HttpFailure(
                status,
                {
                    "error": code,
                    "error_description": f"AADSTS{number}: {description}",
                    "error_codes": [number],
                    "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                    "trace_id": str(uuid.uuid4()),
                    "correlation_id": str(uuid.uuid4()),
                },
            )

        if form.get("grant_type") != "client_credentials":
            raise refuse(400, "unsupported_grant_type", "The grant type is not supported.", 70003)
        if form.get("client_id") != self._client_id:
            raise refuse(
                400, "unauthorized_client", "Application was not found in the directory.", 700016
            )
        secret = str(form.get("client_secret", "")).encode()
        if not hmac.compare_digest(secret, self._client_secret):
            raise refuse(401, "invalid_client", "Invalid client secret provided.", 7000215)
        if form.get("scope") != SCOPE:
            raise refuse(400, "invalid_scope", "The provided scope is not valid.", 1002012)
        token = secrets.token_urlsafe(32)
        self.books.server.count("business_central.tokens")
        lifetime = self.settings.token_lifetime_s
        with self._tokens_lock:
            now = time.monotonic()
            self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = now + lifetime
        return Response(
            body={
                "token_type": "Bearer",
                "expires_in": int(lifetime),
                "ext_expires_in": int(lifetime),
                "access_token": token,
            }
        )

    def _expire_tokens(self, _: Request) -> Response:
        """Every token issued so far expires now, as after an hour."""
        with self._tokens_lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)
        return Response(body={"expired": len(self._tokens)})

    def _set_settings(self, request: Request) -> Response:
        try:
            self.settings.update(request.body or {})
        except (TypeError, ValueError) as failure:
            raise HttpFailure(400, {"error": str(failure)}) from None
        return Response(body=asdict(self.settings))

    # --- companies ---------------------------------------------------------------------

    def _companies(self, _: Request) -> Response:
        return Response(
            body={
                "@odata.context": f"{self.api_url}/$metadata#companies",
                "value": [c.document() for c in self.companies.values()],
            }
        )

    def _company(self, request: Request) -> Response:
        return Response(body=self._company_of(request).document())

    def _company_of(self, request: Request) -> Company:
        key = (request.params.get("company") or "").strip("'")
        company = self.companies.get(key)
        if company is None:
            raise error(404, "BadRequest_NotFound", f"The company '{key}' does not exist.")
        return company

    def _company_information(self, company: Company) -> dict[str, Any]:
        return {
            "@odata.etag": odata.etag("companyInformation", company.id),
            "id": company.id,
            "displayName": f"revsync {company.legal_entity}",
            "currencyCode": company.currency,
            "lastModifiedDateTime": "2026-01-01T00:00:00.000Z",
        }

    def _payment_terms(self, key: str | None) -> Response:
        """Every payment terms code the books use, each under its id."""
        with self.books.pool.connection() as connection:
            codes = [
                row["code"]
                for row in connection.execute(
                    "SELECT payment_terms AS code FROM customers UNION "
                    "SELECT payment_terms FROM invoices UNION SELECT %s ORDER BY 1",
                    (books_customers.DEFAULT_PAYMENT_TERMS,),
                )
            ]
        documents = [
            {
                "@odata.etag": odata.etag("paymentTerms", code),
                "id": entities.payment_terms_id(code),
                "code": code,
                "displayName": code,
                "dueDateCalculation": f"{''.join(c for c in code if c.isdigit()) or '0'}D",
                "lastModifiedDateTime": "2026-01-01T00:00:00.000Z",
            }
            for code in codes
        ]
        if key is None:
            return Response(body={"value": documents})
        for document in documents:
            if document["id"] == key:
                return Response(body=document)
        raise not_found(f"paymentTerms record '{key}'")

    # --- entity sets -------------------------------------------------------------------

    def _standard(self, request: Request) -> Response:
        company = self._company_of(request)
        name = request.params["entity"]
        key = _key(request.params.get("key"))
        tail = request.params.get("tail")
        if name == "companyInformation" and request.method == "GET":
            return Response(body={"value": [self._company_information(company)]})
        if name == "paymentTerms" and request.method == "GET":
            return self._payment_terms(key)
        if name == "customerPaymentJournals" and tail == "customerPayments":
            return self._read(entities.CUSTOMER_PAYMENTS, company, request, None)
        if name == "salesOrders" and request.method in ("POST", "PATCH", "DELETE"):
            if request.method == "POST" and key is None and tail is None:
                return self._create_order(company, request)
            if key is not None and tail is None and request.method == "PATCH":
                return self._patch_order(company, key, request)
            if key is not None and tail is None and request.method == "DELETE":
                return self._delete_order(company, key, request)
        if request.method != "GET" or name not in entities.STANDARD:
            if name in entities.STANDARD or name in entities.EXTENSION:
                raise error(
                    405,
                    "BadRequest_MethodNotAllowed",
                    f"'{request.method}' requests for '{name}' are not supported.",
                )
            raise error(404, "BadRequest_NotFound", f"The resource '{name}' is not in this API.")
        entity = entities.STANDARD[name]
        if tail is not None:
            if entity.lines is None or tail != entity.lines[0] or key is None:
                raise error(404, "BadRequest_NotFound", f"'{tail}' is not a navigation property.")
            document = self._one(entity, company, key, expand=True)
            return Response(body={"value": document[tail]})
        return self._read(entity, company, request, key)

    def _extension(self, request: Request) -> Response:
        company = self._company_of(request)
        name = request.params["entity"]
        key = _key(request.params.get("key"))
        tail = request.params.get("tail")
        method = request.method
        if name == "requestKeys":
            return self._request_keys(request, key)
        if name == "customerLinks" and method == "POST" and key is None:
            return self._create_link(company, request)
        if name == "customerLinks" and method == "PATCH" and key is not None:
            return self._patch_link(company, key, request)
        if name == "salesOrderStates" and method == "POST" and tail == "Microsoft.NAV.cancel":
            if key is None:
                raise bad_request("cancel is bound to one sales order state.")
            return self._cancel_order(company, key, request)
        if method != "GET" or name not in entities.EXTENSION or tail is not None:
            raise error(404, "BadRequest_NotFound", f"'{method} {name}' is not in revsync's API.")
        return self._read(entities.EXTENSION[name], company, request, key)

    def _read(
        self, entity: EntitySet, company: Company, request: Request, key: str | None
    ) -> Response:
        expand = _expand(request, entity)
        if key is not None:
            return Response(body=self._one(entity, company, key, expand))
        query = {name: values[0] for name, values in request.query.items() if values}
        unknown = sorted(
            n for n in query if n.startswith("$")
            and n not in ("$filter", "$top", "$skip", "$skiptoken", "$orderby", "$select",
                          "$expand", "$count")
        )  # fmt: skip
        if unknown:
            raise bad_request(f"The query option '{unknown[0]}' is not supported.")
        condition, parameters = "TRUE", dict[str, Any]()
        if query.get("$filter"):
            condition, parameters = filter_sql(query["$filter"], entity.fields)
        order = entity.order
        if query.get("$orderby"):
            order = _order_by(query["$orderby"], entity)
        top = _whole(query.get("$top"), "$top")
        skip = _whole(query.get("$skip"), "$skip") or 0
        served = _whole(query.get("$skiptoken"), "$skiptoken") or 0
        size = self.settings.page_size
        if top is not None:
            size = min(size, top - served)
        rows: list[dict[str, Any]] = []
        if size > 0:
            statement = (
                f"SELECT * FROM ({entity.query}) t WHERE {condition} "  # noqa: S608 - whitelisted
                f"ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
            )
            with self.books.pool.connection() as connection:
                rows = connection.execute(
                    statement,
                    {
                        **parameters,
                        "company": company.legal_entity,
                        "limit": size + 1,
                        "offset": skip + served,
                    },
                ).fetchall()
                more = len(rows) > size
                rows = rows[:size]
                documents = self._documents(connection, entity, rows, expand)
        else:
            more, documents = False, []
        if top is not None and served + len(rows) >= top:
            more = False
        body: dict[str, Any] = {
            "@odata.context": f"{self.api_url}/$metadata#companies({company.id})/{entity.name}",
            "value": _select(documents, query.get("$select")),
        }
        if more:
            following = {**query, "$skiptoken": str(served + len(rows))}
            body["@odata.nextLink"] = (
                f"{self.url}{request.path}?{urlencode(following, safe='$,()')}"
            )
        return Response(body=body)

    def _one(
        self,
        entity: EntitySet,
        company: Company,
        key: str,
        expand: bool = False,
        connection: Connection | None = None,
    ) -> dict[str, Any]:
        with self._connection(connection) as db:
            row = db.execute(
                f"SELECT * FROM ({entity.query}) t WHERE id = %(key)s",  # noqa: S608 - fixed SQL
                {"company": company.legal_entity, "key": key},
            ).fetchone()
            if row is None:
                raise not_found(f"{entity.name} record '{key}'")
            [document] = self._documents(db, entity, [row], expand)
        return document

    @contextmanager
    def _connection(self, connection: Connection | None) -> Iterator[Connection]:
        if connection is not None:
            yield connection
            return
        with self.books.pool.connection() as lent:
            yield lent

    @staticmethod
    def _documents(
        connection: Connection, entity: EntitySet, rows: list[Any], expand: bool
    ) -> list[dict[str, Any]]:
        documents = [entity.document(row) for row in rows]
        if expand and entity.lines is not None and rows:
            name, query, parent = entity.lines
            by_parent: dict[str, list[dict[str, Any]]] = {}
            for line in connection.execute(query, {"ids": [row["id"] for row in rows]}):
                document = {k: v for k, v in line.items() if not k.startswith("_")}
                by_parent.setdefault(line[parent], []).append(document)
            for document in documents:
                document[name] = by_parent.get(document["id"], [])
        return documents

    # --- sales orders ------------------------------------------------------------------

    def _create_order(self, company: Company, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else None
        if body is None:
            raise bad_request("The request body is not a salesOrder.")
        _known(body, ORDER_FIELDS, "salesOrder")
        lines = body.get("salesOrderLines") or []
        if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
            raise bad_request("salesOrderLines is a list of salesOrderLine.")
        for line in lines:
            _known(line, ORDER_LINE_FIELDS, "salesOrderLine")
        external = str(body.get("externalDocumentNumber") or "")
        if len(external) > 35:
            raise bad_request(
                "The length of the string is 36, but it must be less than or equal to 35 "
                "characters. Value: externalDocumentNumber"
            )
        self.books.server.count("business_central.order_creates")
        with self.books.pool.connection() as connection:
            customer = self._order_customer(connection, company, body)
            currency = str(body.get("currencyCode") or (customer or {}).get("currency") or "")
            book = connection.execute(
                "SELECT id FROM price_books WHERE legal_entity = %s AND currency = %s "
                "ORDER BY id LIMIT 1",
                (company.legal_entity, currency),
            ).fetchone()
            draft = {
                "external_id": external or f"BC-{uuid.uuid4().hex[:12]}",
                "customer_id": (customer or {}).get("id") or str(body.get("customerId") or "?"),
                "currency": currency,
                "price_book_id": book["id"] if book else f"{company.legal_entity}-{currency}",
                "legal_entity": company.legal_entity,
                "region": str(body.get("shortcutDimension1Code") or "DEFAULT"),
                "po_number": None,
                "requested_delivery_date": body.get("requestedDeliveryDate"),
                "ship_to": {books: body.get(bc) or None for bc, books in SHIP_TO.items()},
                "lines": [_order_line(index, line) for index, line in enumerate(lines)],
                "correlation_id": None,
            }
            try:
                order = OrderBody.model_validate(draft)
            except ValidationError as invalid:
                first = invalid.errors(include_url=False, include_input=False)[0]
                where = ".".join(map(str, first["loc"]))
                where = ORDER_FIELD_NAMES.get(where, where)
                raise bad_request(f"The value of {where} is not valid: {first['msg']}.") from None
            order_id = self._book(
                connection, order, external, customer is None or bool(customer["in_company"])
            )
            document = self._one(entities.SALES_ORDERS, company, order_id, True, connection)
        self._order_changed(company, order_id, "created")
        return Response(
            201,
            document,
            {"Location": f"{self.api_url}/companies({company.id})/salesOrders({order_id})"},
        )

    @staticmethod
    def _order_customer(
        connection: Connection, company: Company, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The order's customer, wherever the books hold it (``in_company`` says whether in
        the order's company); None when the books have no such customer."""
        if body.get("customerId"):
            row = connection.execute(
                "SELECT id, currency, legal_entity = %s AS in_company FROM customers WHERE id = %s",
                (company.legal_entity, str(body["customerId"])),
            ).fetchone()
        elif body.get("customerNumber"):
            row = connection.execute(
                "SELECT id, currency, true AS in_company FROM customers "
                "WHERE number = %s AND legal_entity = %s",
                (str(body["customerNumber"]), company.legal_entity),
            ).fetchone()
        else:
            raise bad_request("A sales order needs a customerId or a customerNumber.")
        return dict(row) if row is not None else None

    def _book(
        self, connection: Connection, order: OrderBody, external: str, in_company: bool
    ) -> str:
        """Books ``order``; a second order for an external document number BC takes as it
        is, so in the books (whose external id is unique) it gets an external id of its own.

        A customer of another company is refused once the books' own checks pass (the books
        do not tie a customer to one legal entity; a company is a set of books of its own),
        so an order's refusal reads as the books' order of checks gives it."""
        attempt = order
        for _ in range(3):
            try:
                with connection.transaction():
                    row, _lines = books_orders.book(connection, attempt)
                    if not in_company:
                        raise _refusal(
                            "CUSTOMER_NOT_MASTERED",
                            f"customer {order.customer_id} is not a customer of this company",
                        )
                    connection.execute(
                        "INSERT INTO bc_sales_orders (order_id, external_document_number) "
                        "VALUES (%s, %s)",
                        (row["id"], external or row["external_id"]),
                    )
                    return str(row["id"])
            except HttpFailure as failure:
                document = failure.response.body
                if failure.response.status == 422:
                    self.books.server.count("business_central.order_refusals")
                    raise _refusal(
                        document["code"], document["message"], document.get("skus") or []
                    ) from None
                if failure.response.status != 409:
                    raise
                self.books.server.count("business_central.duplicate_external_documents")
                suffix = uuid.uuid4().hex[:8]
                attempt = order.model_copy(update={"external_id": f"{order.external_id}~{suffix}"})
        raise error(500, "Internal_ServerError", "The order could not be numbered.")

    def _locked_order(
        self, connection: Connection, company: Company, key: str, request: Request
    ) -> dict[str, Any]:
        row = connection.execute(
            "SELECT id FROM sales_orders WHERE id = %s AND legal_entity = %s "
            "AND status <> 'cancelled' FOR UPDATE",
            (key, company.legal_entity),
        ).fetchone()
        if row is None:
            raise not_found(f"salesOrders record '{key}'")
        document = self._one(entities.SALES_ORDERS, company, key, False, connection)
        if not matches_etag(request.headers.get("if-match"), document["@odata.etag"]):
            raise error(
                412,
                "Request_EntityChanged",
                "Could not save the changes because the record was changed by another user.",
            )
        return document

    def _patch_order(self, company: Company, key: str, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        _known(body, set(ORDER_PATCH_FIELDS) | set(SHIP_TO), "salesOrder")
        with self.books.pool.connection() as connection, connection.transaction():
            document = self._locked_order(connection, company, key, request)
            if document["status"] != "Open":
                raise _refusal("ORDER_NOT_EDITABLE", "Status must be equal to 'Open'.")
            for bc, column in ORDER_PATCH_FIELDS.items():
                if bc in body:
                    connection.execute(
                        f"UPDATE sales_orders SET {column} = %s WHERE id = %s",  # noqa: S608
                        (body[bc], key),
                    )
            ship_to = {SHIP_TO[bc]: value for bc, value in body.items() if bc in SHIP_TO}
            if ship_to:
                connection.execute(
                    "UPDATE sales_orders SET ship_to = ship_to || %s::jsonb WHERE id = %s",
                    (odata.dumps(ship_to).decode(), key),
                )
            connection.execute(
                "INSERT INTO bc_sales_orders (order_id, external_document_number) "
                "SELECT id, external_id FROM sales_orders WHERE id = %s "
                "ON CONFLICT (order_id) DO UPDATE SET modified_at = clock_timestamp()",
                (key,),
            )
            document = self._one(entities.SALES_ORDERS, company, key, False, connection)
        self._order_changed(company, key, "updated")
        return Response(body=document)

    def _delete_order(self, company: Company, key: str, request: Request) -> Response:
        with self.books.pool.connection() as connection, connection.transaction():
            document = self._locked_order(connection, company, key, request)
            if document["status"] != "Open":
                raise _refusal(
                    "ORDER_NOT_CANCELLABLE", "A released or posted sales order is not deleted."
                )
            posted = connection.execute(
                "SELECT 1 FROM invoices WHERE sales_order_id = %s", (key,)
            ).fetchone()
            if posted is not None:
                raise _refusal("ORDER_NOT_CANCELLABLE", "The order has been invoiced.")
            connection.execute("DELETE FROM sales_order_lines WHERE sales_order_id = %s", (key,))
            connection.execute("DELETE FROM bc_sales_orders WHERE order_id = %s", (key,))
            connection.execute("DELETE FROM sales_orders WHERE id = %s", (key,))
        self.books.server.count("business_central.order_deletes")
        self._order_changed(company, key, "deleted")
        return Response(204)

    def _cancel_order(self, company: Company, key: str, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        _known(body, {"reason"}, "cancel")
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise bad_request("cancel needs a reason.")
        with self.books.pool.connection() as connection, connection.transaction():
            row = connection.execute(
                "SELECT external_id FROM sales_orders WHERE id = %s AND legal_entity = %s",
                (key, company.legal_entity),
            ).fetchone()
            if row is None:
                raise not_found(f"salesOrderStates record '{key}'")
            try:
                books_orders.cancel(connection, row["external_id"], reason)
            except HttpFailure as failure:
                document = failure.response.body
                raise _refusal(document["code"], document["message"]) from None
        self._order_changed(company, key, "deleted")
        return Response(204)

    def _order_changed(self, company: Company, order_id: str, change_type: str) -> None:
        self.notifier.changed(
            Change(company.legal_entity, "salesOrders", order_id, change_type, datetime.now(UTC))
        )

    # --- revsync's customer links ------------------------------------------------------

    def _create_link(self, company: Company, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        _known(body, set(LINK_FIELDS) | set(BILLING), "customerLink")
        account = str(body.get("crmAccountId") or "")
        if not account:
            raise bad_request("crmAccountId is required to create a customer link.")
        draft = _books_customer(body, company)
        with self.books.pool.connection() as connection:
            try:
                with connection.transaction():
                    status, document = books_customers.upsert(connection, account, draft)
                    if status != 201:
                        raise _same_key(account)
                    created = document["customer"]["id"]
                    self.notifier.created_customers.add(created)
            except errors.UniqueViolation:
                raise _same_key(account) from None
            link = self._one(entities.CUSTOMER_LINKS, company, created, False, connection)
        return Response(201, link)

    def _patch_link(self, company: Company, key: str, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        _known(body, set(LINK_FIELDS) | set(BILLING), "customerLink")
        with self.books.pool.connection() as connection:
            try:
                with connection.transaction():
                    row = connection.execute(
                        "SELECT * FROM customers WHERE id = %s AND legal_entity = %s FOR UPDATE",
                        (key, company.legal_entity),
                    ).fetchone()
                    if row is None:
                        raise not_found(f"customerLinks record '{key}'")
                    current = self._one(entities.CUSTOMER_LINKS, company, key, False, connection)
                    if not matches_etag(request.headers.get("if-match"), current["@odata.etag"]):
                        raise error(
                            412,
                            "Request_EntityChanged",
                            "Could not save the changes because the record was changed by "
                            "another user.",
                        )
                    merged = {bc: current[bc] for bc in (*LINK_FIELDS, *BILLING)} | body
                    account = str(merged.get("crmAccountId") or "")
                    draft = _books_customer(merged, company)
                    if account and account != row["crm_account_id"]:
                        books_customers.edit(connection, key, CustomerEdit(crm_account_id=account))
                    if account:
                        books_customers.upsert(connection, account, draft)
                    else:
                        books_customers.check_fixed(row, draft)
                        columns = {**draft.columns(), **books_customers.keys(draft.columns())}
                        assignments = ", ".join(f"{name} = %({name})s" for name in columns)
                        connection.execute(
                            f"UPDATE customers SET {assignments}, updated_at = now() "  # noqa: S608
                            "WHERE id = %(id)s",
                            {**columns, "id": key},
                        )
                    link = self._one(entities.CUSTOMER_LINKS, company, key, False, connection)
            except CustomerInvalid as invalid:
                raise _invalid_customer(invalid) from None
            except errors.UniqueViolation:
                raise _same_key(str(body.get("crmAccountId"))) from None
        return Response(body=link)

    # --- revsync's request keys --------------------------------------------------------

    def _request_keys(self, request: Request, key: str | None) -> Response:
        """revsync's record of the requests it made (a table of the extension, not per
        company): its idempotency keys, each with its request's hash and the document it
        made, so a key used again with another request is told apart."""
        if request.method == "POST" and key is None:
            body = request.body if isinstance(request.body, dict) else {}
            _known(body, {"key", "requestHash", "documentId", "created"}, "requestKey")
            name, digest = str(body.get("key") or ""), str(body.get("requestHash") or "")
            if not name or not digest:
                raise bad_request("A request key needs a key and a requestHash.")
            stored = {
                "documentId": str(body.get("documentId") or ""),
                "created": bool(body.get("created")),
            }
            with self.books.pool.connection() as connection:
                inserted = connection.execute(
                    "INSERT INTO idempotency_keys (key, request_hash, status, response) "
                    "VALUES (%s, %s, 201, %s) ON CONFLICT (key) DO NOTHING RETURNING *",
                    (name, digest, odata.dumps(stored).decode()),
                ).fetchone()
            if inserted is None:
                raise _same_key(name)
            return Response(201, _request_key(inserted))
        if request.method != "GET":
            raise error(405, "BadRequest_MethodNotAllowed", "requestKeys are written once.")
        wanted = key
        if wanted is None:
            query = (request.query.get("$filter") or [""])[0]
            condition, parameters = filter_sql(query, {"key": odata.Field("key")})
            with self.books.pool.connection() as connection:
                rows = connection.execute(
                    f"SELECT * FROM idempotency_keys WHERE {condition}",  # noqa: S608
                    parameters,
                ).fetchall()
            return Response(body={"value": [_request_key(row) for row in rows]})
        with self.books.pool.connection() as connection:
            row = connection.execute(
                "SELECT * FROM idempotency_keys WHERE key = %s", (wanted,)
            ).fetchone()
        if row is None:
            raise not_found(f"requestKeys record '{wanted}'")
        return Response(body=_request_key(row))


def _request_key(row: Any) -> dict[str, Any]:
    stored = row["response"] or {}
    return {
        "key": row["key"],
        "requestHash": row["request_hash"],
        "documentId": stored.get("documentId", ""),
        "created": bool(stored.get("created")),
        "lastModifiedDateTime": timestamp(row["created_at"]),
    }


def _key(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1].replace("''", "'")
    return text


def _known(body: dict[str, Any], allowed: frozenset[str] | set[str], kind: str) -> None:
    for name in body:
        if name not in allowed and not name.startswith("@odata."):
            raise bad_request(
                f"Could not find a property named '{name}' on type 'Microsoft.NAV.{kind}'."
            )


def _whole(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise bad_request(f"The value of {option} is not a whole number.")
    return int(value)


def _order_by(text: str, entity: EntitySet) -> str:
    parts = []
    for clause in text.split(","):
        words = clause.split()
        if not words or words[0] not in entity.fields or len(words) > 2:
            raise bad_request(f"Could not order by '{clause.strip()}'.")
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise bad_request(f"Could not order by '{clause.strip()}'.")
        parts.append(f"{entity.fields[words[0]].expression} {direction.upper()}")
    return ", ".join([*parts, "id"])


def _expand(request: Request, entity: EntitySet) -> bool:
    wanted = (request.query.get("$expand") or [""])[0]
    if not wanted:
        return False
    if entity.lines is None or wanted != entity.lines[0]:
        raise bad_request(f"Could not find a navigation property named '{wanted}'.")
    return True


def _select(documents: list[dict[str, Any]], select: str | None) -> list[dict[str, Any]]:
    if not select:
        return documents
    names = {name.strip() for name in select.split(",")}
    return [
        {k: v for k, v in document.items() if k in names or k.startswith("@odata.")}
        for document in documents
    ]


def _decimal(value: Any, default: str = "0") -> Decimal:
    if value is None:
        return Decimal(default)
    if isinstance(value, bool):
        raise bad_request("An amount is a number.")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise bad_request("An amount is a number.") from None


def _order_line(index: int, line: dict[str, Any]) -> dict[str, Any]:
    if line.get("lineType", "Item") != "Item":
        raise bad_request("Only lines of type Item are supported.")
    sequence = line.get("sequence")
    number = (
        int(sequence) // 10000 if isinstance(sequence, int) and sequence >= 10000 else index + 1
    )
    quantity = _decimal(line.get("quantity"))
    price = _decimal(line.get("unitPrice"))
    discount = _decimal(line.get("discountAmount"))
    percent = _decimal(line.get("taxPercent"))
    return {
        "line_number": number,
        "sku": str(line.get("lineObjectNumber") or line.get("itemId") or ""),
        "quantity": quantity,
        "unit_price": price,
        "discount_amount": discount,
        "tax_amount": money((quantity * price - discount) * percent / 100),
    }


def _refusal(code: str, message: str, skus: list[str] | None = None) -> HttpFailure:
    """A business refusal as revsync's validation extension raises it: a dialog error whose
    message starts with the reason code, the items at fault in brackets."""
    items = f" [items: {', '.join(sorted(skus))}]" if skus else ""
    return error(400, "Application_DialogException", f"{code}: {message}{items}")


def _invalid_customer(invalid: CustomerInvalid) -> HttpFailure:
    named = BOOKS_FIELD_NAMES.get(invalid.field, invalid.field)
    return error(
        400,
        "Application_DialogException",
        f"INVALID_CUSTOMER: {invalid.message} [field: {named}]",
    )


def _same_key(what: str) -> HttpFailure:
    return error(
        409,
        "Internal_EntityWithSameKeyExists",
        f"The record already exists. Identification fields and values: '{what}'",
    )


def _books_customer(body: dict[str, Any], company: Company) -> books_customers.CustomerBody:
    billing = {books: body.get(bc) or None for bc, books in BILLING.items()}
    values: dict[str, Any] = {
        "name": body.get("displayName") or "",
        "legal_entity": company.legal_entity,
        "currency": body.get("currencyCode") or "",
        "country_code": body.get("countryCode") or "",
        "tax_id": body.get("taxRegistrationNumber") or None,
        "duns": body.get("dunsNumber") or None,
        "billing_address": (
            {**billing, "street": billing["street"] or ""}
            if any(value for value in billing.values())
            else None
        ),
    }
    try:
        return books_customers.validated(values)
    except CustomerInvalid as invalid:
        raise _invalid_customer(invalid) from None


__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_TENANT_ID",
    "SCOPE",
    "BusinessCentralSimulator",
    "Company",
    "Settings",
    "company_id",
]
