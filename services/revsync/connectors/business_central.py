"""The Business Central adapter of the ERP port (:class:`revsync.ports.erp.ErpPort`): API
v2.0 for what Business Central has, and revsync's extension API for what it lacks.

Every call carries an Entra access token (:mod:`revsync.connectors.business_central_auth`).
The environment's root is ``https://api.businesscentral.dynamics.com/v2.0/{tenant}/{env}``;
each legal entity is one company (``companies`` maps it to a company id, or to a company
name looked up once in ``GET api/v2.0/companies``). Amounts are JSON numbers, read as exact
decimals and kept at four places.

Business Central's API v2.0 (``api/v2.0/companies({id})/...``):

``POST salesOrders`` (deep insert)
    ``{"externalDocumentNumber": CRM order id, "customerId", "currencyCode",
    "requestedDeliveryDate", "shipToAddressLine1", "shipToCity", "shipToState",
    "shipToPostCode", "shipToCountry", "shortcutDimension1Code": region, "salesOrderLines":
    [{"sequence": line * 10000, "lineType": "Item", "lineObjectNumber": SKU, "quantity",
    "unitPrice", "discountAmount", "taxPercent"}]}``. 201 with the order and its
    ``@odata.etag``. No idempotency header exists and two orders may share an external
    document number, so a create is a lookup, the create, and a re-read: of orders sharing
    the number the oldest is kept and the extra one this adapter made is deleted (``DELETE
    salesOrders({id})`` with ``If-Match``); a create whose answer was lost is found by the
    re-read. The order's price comes from the company's price list in its currency; the
    CRM's price book is checked (exists, same currency) before the create.
``GET companies``
    ``{"value": [{"id", "name", ...}]}``.

revsync's extension (``api/revsync/integration/v1.0/companies({id})/...``, an AL extension
installed in the environment; its contract is this, its AL source is not shipped yet):

``customerLinks``
    One record per customer, on the Customer table and its extension fields: ``id``
    (the customer's), ``customerNumber``, ``crmAccountId`` (unique across companies),
    ``displayName``, ``countryCode``, ``currencyCode`` (the company's local currency code
    where the customer's own is blank), ``taxRegistrationNumber``,
    ``dunsNumber``, ``billingAddressLine1``, ``billingCity``, ``billingState``,
    ``billingPostalCode``, ``billingCountryCode``, ``creditStatus`` (``Active``,
    ``Blocked``, ``Credit Hold``), ``blocks`` (``order,delivery,billing``),
    ``paymentTermsCode``, ``creditLimit``, ``exposure`` (open orders and unpaid invoices),
    and the normalised search keys ``nameKey``, ``taxIdKey``, ``dunsKey`` (as
    :func:`revsync.ports.erp.normalised_name` and ``normalised_identifier`` make them).
    ``POST`` creates the customer of a CRM account (201; 409
    ``Internal_EntityWithSameKeyExists`` when the account has one), ``PATCH`` with
    ``If-Match`` writes the CRM-owned fields (412 ``Request_EntityChanged`` when stale).
``priceLists({code})?$expand=priceListLines``
    ``{"id", "code", "description", "currencyCode", "priceListLines": [{"assetType":
    "Item", "assetNo": SKU, "unitPrice"}]}``.
``items?$filter=number eq 'A' or ...`` (API v2.0)
    ``{"number", "displayName", "itemCategoryCode", "baseUnitOfMeasureCode", "blocked"}``;
    an item is in the companies of the legal entities that sell it, in every one when all
    sell it.
``itemAvailabilities?$filter=locationCode eq 'R' and (itemNumber eq 'A' or ...)``
    ``{"itemNumber", "locationCode", "quantityAvailable", "nextReceiptDate"}``.
``salesOrderStates?$filter=externalDocumentNumber eq 'X'``
    Every order revsync booked, also once posted or cancelled (Business Central deletes
    those from ``salesOrders``): ``{"id", "number", "externalDocumentNumber", "customerId",
    "currencyCode", "state" (Open, Invoiced, Shipped, Canceled), "creditCheck",
    "pricingOutcome", "totalAmountExcludingTax", "totalTaxAmount",
    "totalAmountIncludingTax", "orderCreatedDateTime"}``, oldest first.
    ``POST salesOrderStates({id})/Microsoft.NAV.cancel`` ``{"reason"}``: 204.
``requestKeys`` (not per company)
    ``{"key", "requestHash", "documentId", "created"}``: the idempotency keys revsync used,
    each with the hash of its request, written after the request succeeded. A key seen with
    another hash is :class:`~revsync.ports.erp.IdempotencyConflict`; a refused request
    writes none, so its key stays unused.

Errors are ``{"error": {"code", "message"}}``. Business refusals are 400
``Application_DialogException`` raised by revsync's validation extension, the message
``<REASON>: text [items: A, B]`` or ``INVALID_CUSTOMER: text [field: name]``:
:class:`~revsync.ports.erp.ErpRejected` with the code, the SKUs and the field (as the port
names it). 401 refreshes the token once, then is transient like 403; 408, 429 (with
``Retry-After``), 5xx are :class:`~revsync.errors.TransientError`; 404 is None or
:class:`~revsync.ports.erp.ErpOrderMissing`; 412 is read again and written once more.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from revsync.connectors.business_central_auth import (
    SCOPE,
    BusinessCentralAuthFailed,
    BusinessCentralWire,
    EntraSession,
    answered_code,
    answered_error,
)
from revsync.connectors.cdc import read_json
from revsync.connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BoundedClient,
    error_code,
    failed_call,
)
from revsync.contracts.events import CreditCheckOutcome, PricingOutcome
from revsync.errors import RevsyncError, TransientError
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
    normalised_name,
)

SYSTEM = "business-central"
STANDARD = "api/v2.0"
EXTENSION = "api/revsync/integration/v1.0"
PER_FILTER = 20
"""Values per ``or`` filter, so a URL stays well inside Business Central's limits."""
FOUR_PLACES = Decimal("0.0001")
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
REFUSAL = re.compile(
    r"^(?P<code>[A-Z][A-Z0-9_]+): (?P<text>.*?)(?: \[items: (?P<items>[^\]]*)\])?"
    r"(?: \[field: (?P<field>[^\]]*)\])?$",
    re.DOTALL,
)
"""A refusal of revsync's validation extension: the reason code first, then its text, the
items and the field at fault in brackets."""
FIELDS = {
    "displayName": "name",
    "currencyCode": "currency",
    "countryCode": "country_code",
    "taxRegistrationNumber": "tax_id",
    "dunsNumber": "duns",
    "crmAccountId": "crm_account_id",
    "billingAddressLine1": "billing_address.street",
    "billingCity": "billing_address.city",
    "billingState": "billing_address.state_province",
    "billingPostalCode": "billing_address.postal_code",
    "billingCountryCode": "billing_address.country_code",
    "shipToAddressLine1": "ship_to.street",
    "shipToCity": "ship_to.city",
    "shipToState": "ship_to.state_province",
    "shipToPostCode": "ship_to.postal_code",
    "shipToCountry": "ship_to.country_code",
    "shortcutDimension1Code": "region",
    "requestedDeliveryDate": "requested_delivery_date",
    "salesOrderLines": "lines",
}
"""A field as Business Central and revsync's extension name it, as the port names it."""
STATUSES = {
    "Active": CustomerStatus.ACTIVE,
    "Blocked": CustomerStatus.BLOCKED,
    "Credit Hold": CustomerStatus.CREDIT_HOLD,
}
STATES = {
    "Open": SalesOrderStatus.OPEN,
    "Invoiced": SalesOrderStatus.INVOICED,
    "Shipped": SalesOrderStatus.SHIPPED,
    "Canceled": SalesOrderStatus.CANCELLED,
}

T = TypeVar("T")


class BusinessCentralUnexpected(RevsyncError):
    """Business Central answered something this adapter does not understand (a 400 that is
    no business refusal, an unknown status, a malformed document); permanent, so it is
    looked at. Its text names the call, the status and the error code, never the body."""


@dataclass(frozen=True)
class BusinessCentralConfig:
    """Where the environment's API is, the app registration revsync calls it as, which
    company books for each legal entity, and the bounds of a call."""

    api_url: str
    """API v2.0's root: ``https://api.businesscentral.dynamics.com/v2.0/{tenant}/{env}/api/v2.0``."""
    token_url: str
    """Entra's token endpoint: ``https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token``."""
    tenant_id: str
    client_id: str
    client_secret: SecretStr
    companies: Mapping[str, str]
    """Legal entity -> the id (guid) or the name of its company."""
    scope: str = SCOPE
    extension_path: str = EXTENSION
    """revsync's extension API, from the environment's root."""
    inventory_entity: str | None = None
    """The legal entity whose company answers stock questions (the first one by default):
    locations are the regions, the same in every company."""
    timeout_s: float = 10.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_connections: int = 5
    """Calls at once (the rest wait their turn): at most the environment's limit of
    concurrent requests, so this adapter alone is never throttled for it."""
    token_refresh_margin_s: float = 300.0
    duplicate_settle_s: float = 0.2
    """After a create, how long before the second re-read that settles a race with another
    create of the same order (whose transaction may commit after the first re-read)."""

    def __post_init__(self) -> None:
        if not self.api_url.rstrip("/").endswith("/" + STANDARD):
            raise ValueError("api_url: expected the API v2.0 root, ending in /api/v2.0")
        if not self.companies:
            raise ValueError("companies: name at least one legal entity's company")
        if self.inventory_entity is not None and self.inventory_entity not in self.companies:
            raise ValueError("inventory_entity: expected one of the legal entities of companies")
        if not self.client_id or not self.client_secret.get_secret_value():
            raise ValueError("client_id and client_secret are required")

    @property
    def environment_url(self) -> str:
        return self.api_url.rstrip("/")[: -len(STANDARD)].rstrip("/")


@dataclass
class _Companies:
    """Legal entities and company ids, resolved once from the configured ids or names."""

    by_entity: dict[str, str] = field(default_factory=dict)
    by_id: dict[str, str] = field(default_factory=dict)


class BusinessCentralAdapter(ErpPort):
    """Business Central over its API v2.0 and revsync's extension, on one keep-alive pool."""

    def __init__(self, config: BusinessCentralConfig) -> None:
        self._config = config
        http = BoundedClient(
            SYSTEM,
            config.environment_url + "/",
            timeout_s=config.timeout_s,
            max_response_bytes=config.max_response_bytes,
            # One more than the calls let out at once: the token's, which needs no slot.
            max_connections=config.max_connections + 1,
        )
        session = EntraSession(
            http,
            config.token_url,
            config.client_id,
            config.client_secret.get_secret_value(),
            scope=config.scope,
            refresh_margin_s=config.token_refresh_margin_s,
        )
        self.wire = BusinessCentralWire(http, session, config.max_connections)
        """Every call to the environment; the inbound side calls over it too."""
        self._companies: _Companies | None = None
        self._companies_lock = threading.Lock()
        self._customer_company: dict[str, str] = {}
        """Where a customer id was last found: asked there first."""

    # --- master data ---------------------------------------------------------------------

    def customer(self, customer_id: str) -> Customer | None:
        found = self._link(customer_id)
        return None if found is None else _customer(*found)

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        found: dict[str, dict[str, Any]] = {}
        sold_by: dict[str, set[str]] = {}
        companies = self._company_ids()
        for entity, company in companies.by_entity.items():
            for chunk in _chunks(wanted):
                condition = " or ".join(f"number eq {_text(sku)}" for sku in chunk)
                for item in self._collection(
                    f"{STANDARD}/companies({company})/items", {"$filter": condition}
                ):
                    sku = _parse("items", lambda d: str(d["number"]), item)
                    found.setdefault(sku, item)
                    sold_by.setdefault(sku, set()).add(entity)
        everywhere = set(companies.by_entity)
        return {
            sku: _parse(
                "items", partial(_product, sold_by=sold_by[sku], everywhere=everywhere), item
            )
            for sku, item in found.items()
        }

    def price_book(self, price_book_id: str) -> PriceBook | None:
        for entity, company in self._company_ids().by_entity.items():
            response = self.wire.send(
                "GET",
                f"{self._extension}/companies({company})/priceLists({_key(price_book_id)})",
                params={"$expand": "priceListLines"},
            )
            if response.status_code == 404:
                continue
            document = self._expect(response, 200)
            return _parse("priceLists", partial(_price_book, legal_entity=entity), document)
        return None

    def credit(self, customer_id: str) -> CreditPosition | None:
        found = self._link(customer_id)
        if found is None:
            return None
        link = found[0]
        return _parse(
            "customerLinks",
            lambda d: CreditPosition(
                customer_id=str(d["id"]),
                status=_known(STATUSES, d["creditStatus"], "creditStatus"),
                currency=str(d["currencyCode"]),
                credit_limit=_amount(d["creditLimit"]),
                exposure=_amount(d["exposure"]),
            ),
            link,
        )

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        companies = self._company_ids()
        entity = self._config.inventory_entity or next(iter(companies.by_entity))
        company = companies.by_entity[entity]
        levels: dict[str, StockLevel] = {}
        for chunk in _chunks(wanted):
            items = " or ".join(f"itemNumber eq {_text(sku)}" for sku in chunk)
            condition = f"locationCode eq {_text(region)} and ({items})"
            for row in self._collection(
                f"{self._extension}/companies({company})/itemAvailabilities",
                {"$filter": condition},
            ):
                level = _parse("itemAvailabilities", _stock_level, row)
                levels[level.sku] = level
        return levels

    # --- customers -----------------------------------------------------------------------

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        found = self._link_by_account(crm_account_id)
        return None if found is None else _customer(*found)

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        criteria = []
        tax_id, duns = normalised_identifier(query.tax_id), normalised_identifier(query.duns)
        if tax_id:
            criteria.append(f"taxIdKey eq {_text(tax_id)}")
        if duns:
            criteria.append(f"dunsKey eq {_text(duns)}")
        name = normalised_name(query.name) if query.name is not None else ""
        if name and query.country_code:
            criteria.append(
                f"(nameKey eq {_text(name)} and countryCode eq {_text(query.country_code.upper())})"
            )
        if not criteria:
            return []  # no criterion: nobody matches
        found: list[Customer] = []
        for entity, company in self._company_ids().by_entity.items():
            for link in self._collection(
                f"{self._extension}/companies({company})/customerLinks",
                {"$filter": " or ".join(criteria)},
            ):
                found.append(_customer(link, entity))
        return sorted(found, key=lambda c: (len(c.number or ""), c.number or "", c.id))

    def upsert_customer(self, draft: CustomerDraft, idempotency_key: str) -> CustomerUpsert:
        companies = self._company_ids()
        company = companies.by_entity.get(draft.legal_entity)
        if company is None:
            raise ErpRejected(
                "INVALID_CUSTOMER",
                f"no company books for legal entity {draft.legal_entity}",
                field="legal_entity",
            )
        digest = request_hash("upsert_customer", asdict(draft))
        used = self._request_key(company, idempotency_key)
        if used is not None:
            if used["requestHash"] != digest:
                raise IdempotencyConflict(
                    f"{SYSTEM}: Idempotency-Key of customer upsert was used with a different "
                    "request"
                )
            replayed = self._link(str(used["documentId"]))
            if replayed is not None:
                return CustomerUpsert(_customer(*replayed), bool(used["created"]))
        upserted = self._upsert_link(company, draft)
        self._remember(company, idempotency_key, digest, upserted.customer.id, upserted.created)
        return upserted

    def _upsert_link(self, company: str, draft: CustomerDraft) -> CustomerUpsert:
        body = _link_body(draft)
        existing = self._link_by_account(draft.crm_account_id)
        if existing is None:
            response = self.wire.send(
                "POST",
                f"{self._extension}/companies({company})/customerLinks",
                json_body={"crmAccountId": draft.crm_account_id, **body},
            )
            if response.status_code != 409:
                self._raise_for_refusal(response, "INVALID_CUSTOMER")
                link = self._expect(response, 201)
                self._customer_company[str(link.get("id"))] = company
                return CustomerUpsert(_customer(link, draft.legal_entity), True)
            # Another worker linked the account first: its customer is the one to update.
            existing = self._link_by_account(draft.crm_account_id)
            if existing is None:
                raise TransientError(
                    f"{SYSTEM}: customer link for an account was taken, then not found"
                )
        link, entity = existing
        if entity != draft.legal_entity:
            raise ErpRejected(
                "INVALID_CUSTOMER", "a customer stays with its legal entity", field="legal_entity"
            )
        path = f"{self._extension}/companies({company})/customerLinks({_key(str(link['id']))})"
        for attempt in range(2):
            response = self.wire.send(
                "PATCH", path, json_body=body, headers={"If-Match": str(link["@odata.etag"])}
            )
            if response.status_code == 412 and attempt == 0:
                link = self._expect(self.wire.send("GET", path), 200)
                continue
            if response.status_code == 412:
                raise TransientError(
                    f"{failed_call(SYSTEM, response, 'Request_EntityChanged')}: changed twice "
                    "while written"
                )
            self._raise_for_refusal(response, "INVALID_CUSTOMER")
            updated = self._expect(response, 200)
            return CustomerUpsert(_customer(updated, entity), False)
        raise AssertionError("unreachable")

    # --- sales orders --------------------------------------------------------------------

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        company = self._company_of(request.legal_entity)
        digest = request_hash("create_sales_order", asdict(request))
        used = self._request_key(company, idempotency_key)
        if used is not None and used["requestHash"] != digest:
            raise IdempotencyConflict(
                f"{SYSTEM}: Idempotency-Key of sales order create was used with a different request"
            )
        booked = self._orders(company, request.external_id)
        if booked:
            order = _sales_order(booked[0])
            if used is None:
                self._remember(company, idempotency_key, digest, order.id, False)
            return order
        self._check_price_book(request)
        created: dict[str, Any] | None = None
        try:
            response = self.wire.send(
                "POST",
                f"{STANDARD}/companies({company})/salesOrders",
                json_body=_order_body(request),
            )
            self._raise_for_refusal(response, "INVALID_ORDER")
            created = self._expect(response, 201)
        except TransientError:
            # The create may have happened with its answer lost: the re-read tells.
            if not self._orders(company, request.external_id):
                raise
        kept = self._settle(company, request.external_id, created)
        order = _sales_order(kept)
        self._remember(company, idempotency_key, digest, order.id, True)
        return order

    def _settle(
        self, company: str, external_id: str, created: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The one order kept for ``external_id``: the oldest; the one this create made is
        deleted when another is older. Read twice, ``duplicate_settle_s`` apart, so an
        older order whose transaction committed after the first read is seen."""
        mine = str(created["id"]) if created is not None else None
        for round_ in range(2):
            booked = self._orders(company, external_id)
            if not booked:
                raise TransientError(f"{SYSTEM}: a sales order just created was not found")
            oldest = booked[0]
            if (
                mine is not None
                and str(oldest["id"]) != mine
                and any(str(o["id"]) == mine for o in booked)
            ):
                assert created is not None
                self._delete_order(company, mine, str(created.get("@odata.etag") or "*"))
                return oldest
            if round_ == 0 and self._config.duplicate_settle_s > 0 and mine is not None:
                time.sleep(self._config.duplicate_settle_s)
        return oldest

    def _delete_order(self, company: str, order_id: str, etag: str) -> None:
        path = f"{STANDARD}/companies({company})/salesOrders({_key(order_id)})"
        for attempt in range(2):
            response = self.wire.send("DELETE", path, headers={"If-Match": etag})
            if response.status_code in (204, 404):
                return
            if response.status_code == 412 and attempt == 0:
                etag = str(self._expect(self.wire.send("GET", path), 200)["@odata.etag"])
                continue
            self._raise_for_refusal(response, "INVALID_ORDER")
            raise BusinessCentralUnexpected(failed_call(SYSTEM, response, answered_code(response)))

    def cancel_sales_order(self, external_id: str, reason: str, idempotency_key: str) -> SalesOrder:
        found = self._order_anywhere(external_id)
        if found is None:
            raise ErpOrderMissing(f"{SYSTEM}: no sales order has external id {external_id!r}")
        company, state = found
        digest = request_hash("cancel_sales_order", {"external_id": external_id, "reason": reason})
        used = self._request_key(company, idempotency_key)
        if used is not None:
            if used["requestHash"] != digest:
                raise IdempotencyConflict(
                    f"{SYSTEM}: Idempotency-Key of sales order cancel was used with a "
                    "different request"
                )
            return _sales_order(state)
        if state.get("state") != "Canceled":
            response = self.wire.send(
                "POST",
                f"{self._extension}/companies({company})/salesOrderStates"
                f"({_key(str(state['id']))})/Microsoft.NAV.cancel",
                json_body={"reason": reason},
            )
            if response.status_code == 404:
                raise ErpOrderMissing(f"{SYSTEM}: no sales order has external id {external_id!r}")
            self._raise_for_refusal(response, "INVALID_ORDER")
            if response.status_code not in (200, 204):
                raise BusinessCentralUnexpected(
                    failed_call(SYSTEM, response, answered_code(response))
                )
            state = self._orders(company, external_id)[0]
        order = _sales_order(state)
        self._remember(company, idempotency_key, digest, order.id, False)
        return order

    def close(self) -> None:
        self.wire.close()

    # --- reading -------------------------------------------------------------------------

    @property
    def _extension(self) -> str:
        return self._config.extension_path.strip("/")

    def _company_of(self, legal_entity: str) -> str:
        company = self._company_ids().by_entity.get(legal_entity)
        if company is None:
            raise ErpRejected(
                "INVALID_ORDER",
                f"no company books for legal entity {legal_entity}",
                field="legal_entity",
            )
        return company

    def company_ids(self) -> dict[str, str]:
        """The company id of each configured legal entity, names looked up."""
        return dict(self._company_ids().by_entity)

    def _company_ids(self) -> _Companies:
        """The configured companies by id, names looked up once in ``companies``."""
        if self._companies is not None:
            return self._companies
        with self._companies_lock:
            if self._companies is not None:
                return self._companies
            wanted = dict(self._config.companies)
            resolved = _Companies()
            named = {e: v for e, v in wanted.items() if not GUID.fullmatch(v)}
            by_name: dict[str, str] = {}
            if named:
                for company in self._collection(f"{STANDARD}/companies", None):
                    by_name[str(company.get("name"))] = str(company.get("id"))
            for entity, value in wanted.items():
                company_id = value if GUID.fullmatch(value) else by_name.get(value)
                if company_id is None:
                    raise BusinessCentralUnexpected(
                        f"{SYSTEM}: no company is named {value!r} (legal entity {entity})"
                    )
                resolved.by_entity[entity] = company_id
                resolved.by_id[company_id] = entity
            self._companies = resolved
            return resolved

    def _ordered_companies(self, hint: str | None) -> Iterator[tuple[str, str]]:
        companies = self._company_ids()
        if hint is not None and hint in companies.by_id:
            yield companies.by_id[hint], hint
        for entity, company in companies.by_entity.items():
            if company != hint:
                yield entity, company

    def _link(self, customer_id: str) -> tuple[dict[str, Any], str] | None:
        """The customer's link record and its legal entity, asked company by company."""
        for entity, company in self._ordered_companies(self._customer_company.get(customer_id)):
            response = self.wire.send(
                "GET",
                f"{self._extension}/companies({company})/customerLinks({_key(customer_id)})",
            )
            if response.status_code == 404:
                continue
            self._customer_company[customer_id] = company
            return self._expect(response, 200), entity
        return None

    def _link_by_account(self, crm_account_id: str) -> tuple[dict[str, Any], str] | None:
        found: list[tuple[dict[str, Any], str]] = []
        for entity, company in self._company_ids().by_entity.items():
            found.extend(
                (link, entity)
                for link in self._collection(
                    f"{self._extension}/companies({company})/customerLinks",
                    {"$filter": f"crmAccountId eq {_text(crm_account_id)}"},
                )
            )
            if found:
                break
        if len(found) > 1:
            raise BusinessCentralUnexpected(
                f"{SYSTEM}: customerLinks answered {len(found)} customers for one CRM account"
            )
        return found[0] if found else None

    def _orders(self, company: str, external_id: str) -> list[dict[str, Any]]:
        """Every order for ``external_id`` in ``company``, oldest first."""
        return list(
            self._collection(
                f"{self._extension}/companies({company})/salesOrderStates",
                {
                    "$filter": f"externalDocumentNumber eq {_text(external_id)}",
                    "$orderby": "orderCreatedDateTime asc,number asc",
                },
            )
        )

    def _order_anywhere(self, external_id: str) -> tuple[str, dict[str, Any]] | None:
        for _entity, company in self._company_ids().by_entity.items():
            booked = self._orders(company, external_id)
            if booked:
                return company, booked[0]
        return None

    def _check_price_book(self, request: SalesOrderRequest) -> None:
        """The CRM's price book exists and is in the order's currency, as the books would
        refuse it; Business Central prices from its own price list."""
        book = self.price_book(request.price_book_id)
        if book is None:
            raise ErpRejected("UNKNOWN_PRICE_BOOK", f"no price book {request.price_book_id!r}")
        if book.currency != request.currency:
            raise ErpRejected(
                "UNSUPPORTED_CURRENCY",
                f"price book {book.id} is in {book.currency}, the order in {request.currency}",
            )

    def _request_key(self, company: str, key: str) -> dict[str, Any] | None:
        rows = list(
            self._collection(
                f"{self._extension}/companies({company})/requestKeys",
                {"$filter": f"key eq {_text(key)}"},
            )
        )
        return rows[0] if rows else None

    def _remember(
        self, company: str, key: str, digest: str, document_id: str, created: bool
    ) -> None:
        """Writes down the key of a request that succeeded; one already written is kept."""
        response = self.wire.send(
            "POST",
            f"{self._extension}/companies({company})/requestKeys",
            json_body={
                "key": key,
                "requestHash": digest,
                "documentId": document_id,
                "created": created,
            },
        )
        if response.status_code != 409:
            self._expect(response, 201)

    def _collection(self, path: str, params: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        """Every record of a collection, following ``@odata.nextLink``."""
        response = self.wire.send("GET", path, params=params)
        while True:
            document = self._expect(response, 200)
            values = document.get("value")
            if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                raise BusinessCentralUnexpected(
                    f"{SYSTEM}: GET {response.request.url.path} answered no list of records"
                )
            yield from values
            following = document.get("@odata.nextLink")
            if not following:
                return
            if not isinstance(following, str) or not following.startswith(
                self._config.environment_url + "/"
            ):
                raise BusinessCentralUnexpected(
                    f"{SYSTEM}: GET {response.request.url.path} answered a next link outside "
                    "the environment"
                )
            response = self.wire.send("GET", following)

    # --- answers -------------------------------------------------------------------------

    @staticmethod
    def _raise_for_refusal(response: httpx.Response, kind: str) -> None:
        """A 400 of revsync's validation extension as :class:`ErpRejected`; a 400 naming a
        field Business Central refused as ``kind`` (INVALID_ORDER, INVALID_CUSTOMER) with
        that field."""
        if response.status_code != 400:
            return
        error = answered_error(response)
        message = str(error.get("message") or "")
        refusal = REFUSAL.match(message)
        if refusal is not None:
            items = refusal["items"]
            skus = tuple(s.strip() for s in items.split(",")) if items else ()
            named = refusal["field"]
            raise ErpRejected(
                refusal["code"],
                refusal["text"] or "no reason given",
                skus,
                FIELDS.get(named, error_code(named)) if named else None,
            )
        named = next((f for f in FIELDS if re.search(rf"\b{f}\b", message)), None)
        if named is not None:
            raise ErpRejected(kind, message or "no reason given", field=FIELDS[named])
        raise BusinessCentralUnexpected(failed_call(SYSTEM, response, answered_code(response)))

    @staticmethod
    def _expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
        if response.status_code not in statuses:
            raise BusinessCentralUnexpected(failed_call(SYSTEM, response, answered_code(response)))
        return _json(response)


def request_hash(operation: str, request: Mapping[str, Any]) -> str:
    """What an idempotency key is bound to: the operation and its request, canonically."""
    canonical = json.dumps([operation, request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), PER_FILTER):
        yield values[start : start + PER_FILTER]


def _text(value: str) -> str:
    """An OData string literal."""
    return "'" + value.replace("'", "''") + "'"


def _key(value: str) -> str:
    """A record's key in a URL: a guid as it is, any other id quoted."""
    if GUID.fullmatch(value):
        return value
    return quote(_text(value), safe="")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = read_json(response.content, parse_float=Decimal)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise BusinessCentralUnexpected(
            f"{SYSTEM}: {response.request.method} {response.request.url.path} answered "
            f"HTTP {response.status_code} without a JSON object"
        )
    return document


def _parse(entity: str, build: Callable[[dict[str, Any]], T], document: dict[str, Any]) -> T:
    """``build(document)``, a shape error reported as Business Central's fault by the
    missing field's name or the kind of error alone, never the value."""
    try:
        return build(document)
    except KeyError as missing:
        problem = f"no field {missing.args[0]!r}"
    except (TypeError, ValueError, InvalidOperation) as failure:
        problem = f"a value of the wrong type or form ({type(failure).__name__})"
    raise BusinessCentralUnexpected(f"{SYSTEM}: malformed {entity} record: {problem}")


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise TypeError("an amount is a number")
    return Decimal(value).quantize(FOUR_PLACES)


def _known(values: Mapping[str, T], value: object, name: str) -> T:
    """``values[value]``; a value outside them is a ValueError naming the field alone."""
    if not isinstance(value, str) or value not in values:
        raise ValueError(f"{name} is none of {sorted(values)}")
    return values[value]


def _optional(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _customer(link: dict[str, Any], legal_entity: str) -> Customer:
    def build(d: dict[str, Any]) -> Customer:
        street, city = d["billingAddressLine1"], d["billingCity"]
        billing = None
        if street or city or d["billingCountryCode"]:
            billing = Address(
                street=str(street),
                city=str(city),
                state_province=_optional(d["billingState"]),
                postal_code=_optional(d["billingPostalCode"]),
                country_code=str(d["billingCountryCode"]),
            )
        return Customer(
            id=str(d["id"]),
            name=str(d["displayName"]),
            crm_account_id=_optional(d["crmAccountId"]),
            legal_entity=legal_entity,
            status=_known(STATUSES, d["creditStatus"], "creditStatus"),
            credit_limit=_amount(d["creditLimit"]),
            currency=str(d["currencyCode"]),
            number=_optional(d["customerNumber"]),
            payment_terms=_optional(d["paymentTermsCode"]),
            blocks=tuple(b for b in str(d["blocks"]).split(",") if b),
            tax_id=_optional(d["taxRegistrationNumber"]),
            duns=_optional(d["dunsNumber"]),
            country_code=_optional(d["countryCode"]),
            billing_address=billing,
        )

    return _parse("customerLinks", build, link)


def _link_body(draft: CustomerDraft) -> dict[str, Any]:
    address = draft.billing_address
    return {
        "displayName": draft.name,
        "countryCode": draft.country_code,
        "currencyCode": draft.currency,
        "taxRegistrationNumber": draft.tax_id or "",
        "dunsNumber": draft.duns or "",
        "billingAddressLine1": address.street if address else "",
        "billingCity": address.city if address else "",
        "billingState": (address.state_province or "") if address else "",
        "billingPostalCode": (address.postal_code or "") if address else "",
        "billingCountryCode": address.country_code if address else "",
    }


def _product(item: dict[str, Any], sold_by: set[str], everywhere: set[str]) -> Product:
    blocked = item["blocked"]
    if not isinstance(blocked, bool):
        raise TypeError("blocked is a boolean")
    return Product(
        sku=str(item["number"]),
        name=str(item["displayName"]),
        product_line=str(item["itemCategoryCode"]),
        unit_of_measure=str(item["baseUnitOfMeasureCode"]),
        active=not blocked,
        legal_entities=frozenset() if sold_by == everywhere else frozenset(sold_by),
    )


def _price_book(document: dict[str, Any], legal_entity: str) -> PriceBook:
    return PriceBook(
        id=str(document["code"]),
        name=str(document["description"]),
        currency=str(document["currencyCode"]),
        legal_entity=legal_entity,
        prices={
            str(line["assetNo"]): _amount(line["unitPrice"])
            for line in document["priceListLines"]
            if line.get("assetType", "Item") == "Item"
        },
    )


def _stock_level(row: dict[str, Any]) -> StockLevel:
    receipt = row["nextReceiptDate"]
    return StockLevel(
        sku=str(row["itemNumber"]),
        region=str(row["locationCode"]),
        quantity=_amount(row["quantityAvailable"]),
        available_on=datetime.fromisoformat(receipt).date() if receipt else None,
    )


def _sales_order(state: dict[str, Any]) -> SalesOrder:
    return _parse(
        "salesOrderStates",
        lambda d: SalesOrder(
            id=str(d["id"]),
            number=str(d["number"]),
            external_id=str(d["externalDocumentNumber"]),
            customer_id=str(d["customerId"]),
            status=_known(STATES, d["state"], "state"),
            currency=str(d["currencyCode"]),
            subtotal=_amount(d["totalAmountExcludingTax"]),
            tax_total=_amount(d["totalTaxAmount"]),
            grand_total=_amount(d["totalAmountIncludingTax"]),
            credit_check=CreditCheckOutcome(d["creditCheck"]),
            pricing_outcome=PricingOutcome(d["pricingOutcome"]),
            created_at=datetime.fromisoformat(
                str(d["orderCreatedDateTime"]).replace("Z", "+00:00")
            ),
        ),
        state,
    )


def _moment(value: object) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a moment without its zone")
    return moment


def _tax_percent(net: Decimal, tax: Decimal) -> Decimal:
    """A line's tax as the percentage of its net amount Business Central takes."""
    if net == 0:
        return Decimal(0)
    return (tax * 100 / net).quantize(Decimal("0.000001"))


def _order_body(request: SalesOrderRequest) -> dict[str, Any]:
    ship_to = request.ship_to
    return {
        "externalDocumentNumber": request.external_id,
        "customerId": request.customer_id,
        "currencyCode": request.currency,
        "requestedDeliveryDate": (
            request.requested_delivery_date.isoformat() if request.requested_delivery_date else None
        ),
        "shipToAddressLine1": ship_to.street,
        "shipToCity": ship_to.city,
        "shipToState": ship_to.state_province or "",
        "shipToPostCode": ship_to.postal_code or "",
        "shipToCountry": ship_to.country_code,
        "shortcutDimension1Code": request.region,
        "salesOrderLines": [
            {
                "sequence": line.line_number * 10000,
                "lineType": "Item",
                "lineObjectNumber": line.sku,
                "quantity": line.quantity,
                "unitPrice": line.unit_price,
                "discountAmount": line.discount_amount,
                "taxPercent": _tax_percent(
                    line.quantity * line.unit_price - line.discount_amount, line.tax_amount
                ),
            }
            for line in request.lines
        ],
    }


__all__ = [
    "BusinessCentralAdapter",
    "BusinessCentralAuthFailed",
    "BusinessCentralConfig",
    "BusinessCentralUnexpected",
    "request_hash",
]
