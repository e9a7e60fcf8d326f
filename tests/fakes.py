"""In-memory fakes of the CRM and ERP ports, for unit tests of the services' handlers.

Each keeps its system's state as the sandbox does and fails as the real adapter fails against
that sandbox; tests/port_contracts.py holds a fake and its real adapter to the same assertions.
Each also has the sandbox's control methods (seeding, a sales rep's actions, inspection), under
the sandbox's names, so a test arranges a fake and a sandbox alike.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sandbox.crm.model import (
    PREFIXES,
    SOBJECTS,
    SYSTEM_FIELDS,
    FieldError,
    SObjectType,
    check_rules,
    coerce,
    new_org,
    normalised_id,
    now,
    record_id,
    sobject_type,
)
from sandbox.crm.simulator import as_text
from sandbox.crm.soql import parse
from sandbox.erp.customers import (
    DEFAULT_CREDIT_LIMITS,
    DEFAULT_PAYMENT_TERMS,
    CustomerInvalid,
    check_fixed,
    validated,
)

from revsync.connectors.erp import customer_body
from revsync.connectors.salesforce import decode_json, encode_json
from revsync.contracts.events import CreditCheckOutcome, PricingOutcome, money
from revsync.errors import RevsyncError
from revsync.ports.crm import (
    CrmFieldError,
    CrmPort,
    RecordNotFound,
    RecordResult,
    UpsertResult,
    record_failure,
)
from revsync.ports.erp import (
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
)

T = TypeVar("T")

# --- the CRM ---------------------------------------------------------------------------------


def _wire(value: T) -> T:
    """``value`` as it comes out of a JSON round trip through the adapter's encoding: what the
    real adapter sends and reads back (Decimals exact, whole numbers as int, dates as text)."""
    decoded: T = decode_json(encode_json(value))
    return decoded


class FakeCrm(CrmPort):
    """A Salesforce org in memory, on the CRM sandbox's data model: the same sObjects, fields,
    field rules and SOQL subset (:mod:`sandbox.crm.model`, :mod:`sandbox.crm.soql`), without
    HTTP and without change events. Thread-safe, as the handlers call it from a pool.

    ``calls`` counts the port calls by name, as the sandbox counts its API routes.
    """

    def __init__(self) -> None:
        self._org = new_org()
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SOBJECTS}
        self._numbers = {name: itertools.count(1) for name in SOBJECTS}
        self._order_numbers = itertools.count(100)
        self.calls: Counter[str] = Counter()
        self.closed = False

    # --- the port ----------------------------------------------------------------------

    def get(
        self, sobject: str, record_id: str, fields: Sequence[str] | None = None
    ) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            kind = sobject_type(sobject)
            record = self._existing(kind, record_id)
            names = list(fields) if fields else list(kind.fields)
            kind.check_fields(names)
            return _wire({name: record[name] for name in names})

        return self._answer(
            "get", f"{sobject} {record_id}", RecordNotFound(sobject, record_id), read
        )

    def related(self, sobject: str, record_id: str, relationship: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            kind = sobject_type(sobject)
            parent = self._existing(kind, record_id)
            if (kind.name, relationship) != ("Order", "OrderItems"):
                raise FieldError("NOT_FOUND", "The requested resource does not exist")
            return _wire(self._items(parent["Id"]))

        subject = f"{sobject} {record_id} {relationship}"
        return self._answer("related", subject, RecordNotFound(sobject, record_id), read)

    def query(self, soql: str) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            query = parse(soql)
            return _wire(query.run(list(self._records[query.sobject.name].values())))

        return self._answer("query", f"query {soql!r}", None, run)

    def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        values = _wire(dict(fields))

        def write() -> None:
            kind = sobject_type(sobject)
            existing = str(self._existing(kind, record_id)["Id"])
            values.pop("Id", None)
            self._apply(kind, self._prepared(kind, values, existing, api=True), existing)

        self._answer("update", f"{sobject} {record_id}", RecordNotFound(sobject, record_id), write)

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        external_id: str,
        fields: Mapping[str, Any],
    ) -> UpsertResult:
        values = _wire({name: v for name, v in fields.items() if name != external_id_field})

        def write() -> UpsertResult:
            kind = sobject_type(sobject)
            if external_id_field != "Id" and external_id_field not in kind.external_ids:
                raise FieldError(
                    "NOT_FOUND",
                    "Provided external ID field does not exist or is not accessible: "
                    f"{external_id_field}",
                )
            existing, prepared = self._keyed(kind, external_id_field, external_id, values)
            return UpsertResult(self._apply(kind, prepared, existing), created=existing is None)

        by_id = external_id_field == "Id"
        return self._answer(
            "upsert",
            f"{sobject} {external_id_field}={external_id}",
            RecordNotFound(sobject, external_id) if by_id else None,
            write,
        )

    def upsert_many(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
    ) -> list[RecordResult]:
        if not records:
            return []  # the adapter sends no request for nothing
        batch = [_wire(dict(record)) for record in records]

        def write() -> list[RecordResult]:
            kind = sobject_type(sobject)
            if external_id_field != "Id" and external_id_field not in kind.external_ids:
                raise FieldError(
                    "INVALID_FIELD",
                    f"Field {external_id_field} is not an external id of {kind.name}",
                )
            # Each record is checked against the org as the records before it left it.
            return [self._collection_result(kind, external_id_field, values) for values in batch]

        return self._answer("upsert_many", f"{len(records)} {sobject} records", None, write)

    def close(self) -> None:
        self.closed = True

    # --- the sandbox's control methods ---------------------------------------------------

    def insert(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create records (Accounts, Product2, Pricebook2...) and return their ids."""

        def create() -> list[str]:
            kind = sobject_type(sobject)
            writes = [self._prepared(kind, _wire(dict(r)), None, api=False) for r in records]
            return [self._apply(kind, write, None) for write in writes]

        return self._controlled(create)

    def create_orders(
        self, orders: Sequence[Mapping[str, Any]], *, activate: bool = True
    ) -> list[str]:
        """Create Draft orders, each with its ``items``, then activate them, as a rep would."""

        def create() -> list[str]:
            order_kind, item_kind = SOBJECTS["Order"], SOBJECTS["OrderItem"]
            prepared = []
            for order in orders:
                values = _wire(dict(order))
                items = values.pop("items", [])
                values.setdefault("Status", "Draft")
                write = self._prepared(order_kind, values, None, api=False)
                # The order's id is taken now, so that its items can be validated against it.
                write["Id"] = self._new_id(order_kind)
                lines = [
                    self._prepared(
                        item_kind,
                        {**item, "OrderId": write["Id"]},
                        None,
                        api=False,
                        pending={write["Id"]},
                    )
                    for item in items
                ]
                prepared.append((write, lines))
            ids = []
            for write, lines in prepared:
                order_id = self._apply(order_kind, write, None)
                for line in lines:
                    self._apply(item_kind, line, None)
                if activate:
                    activation = {"Status": "Activated", "ActivatedDate": now()}
                    self._apply(order_kind, activation, order_id)
                ids.append(order_id)
            return ids

        return self._controlled(create)

    def cancel_order(self, order_id: str, reason: str) -> None:
        """Cancel an order in the UI, with the reason the rep gives."""

        def cancel() -> None:
            kind = SOBJECTS["Order"]
            existing = str(self._existing(kind, order_id)["Id"])
            values = {"Status": "Cancelled", "Cancel_Reason__c": reason}
            self._apply(kind, self._prepared(kind, values, existing, api=False), existing)

        self._controlled(cancel)

    def delete(self, sobject: str, record_id: str) -> None:
        """Delete a record (an Order with its items)."""

        def remove() -> None:
            kind = sobject_type(sobject)
            removed = str(self._existing(kind, record_id)["Id"])
            del self._records[kind.name][removed]
            if kind.name == "Order":
                items = self._records["OrderItem"]
                for item_id in [i for i, item in items.items() if item["OrderId"] == removed]:
                    del items[item_id]

        self._controlled(remove)

    def records(self, sobject: str, **equal_to: str) -> list[dict[str, Any]]:
        """Every record of ``sobject`` whose fields have these values (as text; "null")."""
        with self._lock:
            return _wire(
                [
                    dict(record)
                    for record in self._records[sobject_type(sobject).name].values()
                    if all(as_text(record.get(k)) == v for k, v in equal_to.items())
                ]
            )

    # --- the org -------------------------------------------------------------------------

    def _answer(
        self, call: str, subject: str, not_found: RevsyncError | None, work: Callable[[], T]
    ) -> T:
        """Run one port call under the org's lock, its refusal typed as the adapter types the
        sandbox's answer."""
        with self._lock:
            self.calls[call] += 1
            try:
                return work()
            except FieldError as error:
                reported = CrmFieldError(error.status_code, tuple(error.fields))
                raise record_failure(subject, [reported], not_found) from None

    def _controlled(self, work: Callable[[], T]) -> T:
        """Run one control call; a refusal is a test's mistake, raised as the sandbox does."""
        with self._lock:
            try:
                return work()
            except FieldError as error:
                raise RuntimeError(f"CRM fake refused the control call: {error}") from None

    def _existing(self, kind: SObjectType, wanted: str) -> dict[str, Any]:
        record = self._records[kind.name].get(normalised_id(wanted) or "")
        if record is None:
            raise FieldError("NOT_FOUND", "The requested resource does not exist")
        return record

    def _owner(self, kind: SObjectType, field: str, value: Any) -> str | None:
        """The id of the record whose external id ``field`` is ``value``."""
        return next(
            (rid for rid, record in self._records[kind.name].items() if record[field] == value),
            None,
        )

    def _keyed(
        self, kind: SObjectType, key_field: str, key: str, values: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """The record an upsert keyed by ``key_field`` = ``key`` writes (None: a new one), and
        its validated values."""
        values.pop(key_field, None)
        if key_field == "Id":
            existing = self._records[kind.name].get(normalised_id(key) or "")
            if existing is None:
                raise FieldError("NOT_FOUND", f"No {kind.name} with Id {key}", ["Id"])
            return existing["Id"], self._prepared(kind, values, existing["Id"], api=True)
        found = self._owner(kind, key_field, key)
        return found, self._prepared(kind, {**values, key_field: key}, found, api=True)

    def _collection_result(
        self, kind: SObjectType, key_field: str, values: dict[str, Any]
    ) -> RecordResult:
        key = values.get(key_field)
        named = {
            "sobject": kind.name,
            "external_id_field": key_field,
            "external_id": str(key or ""),
        }
        try:
            if not isinstance(key, str) or not key:
                raise FieldError("MISSING_ARGUMENT", f"{key_field} not specified", [key_field])
            existing, prepared = self._keyed(kind, key_field, key, values)
            saved = self._apply(kind, prepared, existing)
        except FieldError as error:
            reported = CrmFieldError(error.status_code, tuple(error.fields))
            return RecordResult(None, False, False, (reported,), **named)
        return RecordResult(saved, True, existing is None, (), **named)

    def _prepared(
        self,
        kind: SObjectType,
        values: Mapping[str, Any],
        existing: str | None,
        *,
        api: bool,
        pending: Collection[str] = (),
    ) -> dict[str, Any]:
        """Validate a write as the sandbox does: field names, types, writability, lookups, then
        the record's rules as it would be afterwards. ``pending`` ids count as existing."""
        coerced: dict[str, Any] = {}
        for name, value in values.items():
            coerced[name] = coerce(kind, name, value)
            spec = kind.fields[name]
            if name == "Id" or (api and not spec.writable) or (existing and name == "OrderId"):
                raise FieldError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}",
                    [name],
                )
            target = coerced[name]
            if spec.reference is not None and target is not None and target not in pending:
                if PREFIXES.get(target[:3]) != spec.reference:
                    raise FieldError(
                        "FIELD_INTEGRITY_EXCEPTION",
                        f"{name}: id value of incorrect type: {target}",
                        [name],
                    )
                if target not in self._records[spec.reference]:
                    raise FieldError(
                        "INVALID_CROSS_REFERENCE_KEY",
                        f"invalid cross reference id: {target}",
                        [name],
                    )
        for name in kind.external_ids:
            key = coerced.get(name)
            owner = self._owner(kind, name, key) if key else None
            if owner is not None and owner != existing:
                raise FieldError(
                    "DUPLICATE_VALUE", f"duplicate value found: {name} duplicates {owner}", [name]
                )
        before = self._records[kind.name][existing] if existing else {}
        check_rules(kind, {**before, **coerced})
        return coerced

    def _new_id(self, kind: SObjectType) -> str:
        return record_id(kind.prefix, self._org, next(self._numbers[kind.name]))

    def _apply(self, kind: SObjectType, values: dict[str, Any], existing: str | None) -> str:
        """Store a validated write; the id of the record written."""
        stamp = now()
        table = self._records[kind.name]
        if existing is None:
            new_id = values.pop("Id", None) or self._new_id(kind)
            record: dict[str, Any] = dict.fromkeys(kind.fields)
            record.update(values, Id=new_id)
            record.update(dict.fromkeys(SYSTEM_FIELDS, stamp))
            table[new_id] = record
        else:
            record = table[existing]
            record.update(values, LastModifiedDate=stamp, SystemModstamp=stamp)
        self._derive(kind, record)
        return str(record["Id"])

    def _derive(self, kind: SObjectType, record: dict[str, Any]) -> None:
        """The fields Salesforce computes: numbers, line totals and the order's total."""
        if kind.name == "Order":
            if record["OrderNumber"] is None:
                record["OrderNumber"] = f"{next(self._order_numbers):08d}"
            self._total(record)
        if kind.name == "OrderItem":
            if record["OrderItemNumber"] is None:
                siblings = len(self._items(record["OrderId"]))
                record["OrderItemNumber"] = f"{siblings:010d}"
            discount = record["Discount__c"] or Decimal(0)
            record["TotalPrice"] = record["Quantity"] * record["UnitPrice"] - discount
            self._total(self._records["Order"][record["OrderId"]])

    def _items(self, order_id: str) -> list[dict[str, Any]]:
        items = self._records["OrderItem"].values()
        return [item for item in items if item["OrderId"] == order_id]

    def _total(self, order: dict[str, Any]) -> None:
        order["TotalAmount"] = sum(
            (item["TotalPrice"] for item in self._items(order["Id"])), Decimal(0)
        )


# --- the ERP ---------------------------------------------------------------------------------

PRICE_TOLERANCE = Decimal("0.01")
"""A line priced within 1% of the price book is accepted (and reported as adjusted)."""
CREDIT_TOLERANCE = Decimal("1.10")
"""Up to 110% of the credit limit is approved over limit; beyond that, refused."""


def _fingerprint(operation: str, body: object) -> str:
    """What an idempotency key is bound to: the operation and its request."""
    return hashlib.sha256(repr((operation, body)).encode()).hexdigest()


class FakeErp(ErpPort):
    """The reference ERP in memory, booking and refusing sales orders as the ERP sandbox does
    (:mod:`sandbox.erp.orders`): the same checks in the same order, amounts at four places,
    one order per external id, idempotency keys bound to their request, and a refused request
    leaving its key unused. Customers are mastered by CRM account with the sandbox's own
    validation (:mod:`sandbox.erp.customers`), and found by the port's matching rule. It
    writes no outbox. Thread-safe.

    Its clock does not run: :meth:`invoice` and :meth:`ship` move an order on when a test
    says, and no invoice is ever paid, so a customer's exposure is every order of it that is
    not cancelled. ``create_requests`` counts the creates asked for, replays included.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._customers: dict[str, Customer] = {}
        self._products: dict[str, Product] = {}
        self._price_books: dict[str, PriceBook] = {}
        self._stock: dict[tuple[str, str], StockLevel] = {}
        """By (SKU, region)."""
        self._orders: dict[str, SalesOrder] = {}
        """By external id."""
        self._cancel_reasons: dict[str, str] = {}
        self._keys: dict[str, tuple[str, object]] = {}
        """Idempotency key -> (fingerprint of its request, the answer given)."""
        self._numbers = itertools.count(1)
        self._customer_numbers = itertools.count(100001)
        self.create_requests = 0
        self.closed = False

    # --- the port ----------------------------------------------------------------------

    def customer(self, customer_id: str) -> Customer | None:
        with self._lock:
            return self._customers.get(customer_id)

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        with self._lock:
            return {sku: self._products[sku] for sku in sorted(set(skus)) if sku in self._products}

    def price_book(self, price_book_id: str) -> PriceBook | None:
        with self._lock:
            return self._price_books.get(price_book_id)

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        with self._lock:
            self.create_requests += 1
            fingerprint = _fingerprint("create", request)
            replay = self._replay(idempotency_key, fingerprint, SalesOrder)
            if replay is not None:
                return replay
            order = self._book(request)
            booked = self._orders.setdefault(request.external_id, order)
            if booked is not order:
                # Another key already booked the external id: that order is the answer, and
                # this key stays unused (the sandbox's 409 rolls its claim back).
                return booked
            self._keys[idempotency_key] = (fingerprint, order)
            return order

    def cancel_sales_order(self, external_id: str, reason: str, idempotency_key: str) -> SalesOrder:
        with self._lock:
            fingerprint = _fingerprint(f"cancel {external_id}", reason)
            replay = self._replay(idempotency_key, fingerprint, SalesOrder)
            if replay is not None:
                return replay
            order = self._orders.get(external_id)
            if order is None:
                raise ErpOrderMissing(f"erp: no sales order has external id {external_id!r}")
            if order.status in (SalesOrderStatus.INVOICED, SalesOrderStatus.SHIPPED):
                raise ErpRejected(
                    "ORDER_NOT_CANCELLABLE",
                    f"the order for {external_id!r} is already {order.status.value}",
                )
            if order.status is SalesOrderStatus.OPEN:
                order = self._orders[external_id] = replace(
                    order, status=SalesOrderStatus.CANCELLED
                )
                self._cancel_reasons[external_id] = reason
            self._keys[idempotency_key] = (fingerprint, order)
            return order

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        with self._lock:
            return self._by_account(crm_account_id)

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        with self._lock:
            found = [c for c in self._customers.values() if query.matches(c)]
        return sorted(found, key=lambda c: (len(c.number or ""), c.number or ""))

    def upsert_customer(self, draft: CustomerDraft, idempotency_key: str) -> CustomerUpsert:
        with self._lock:
            fingerprint = _fingerprint(f"customer {draft.crm_account_id}", draft)
            replay = self._replay(idempotency_key, fingerprint, CustomerUpsert)
            if replay is not None:
                return replay
            existing = self._by_account(draft.crm_account_id)
            try:
                body = validated(customer_body(draft))
                if existing is not None:
                    check_fixed(
                        {"legal_entity": existing.legal_entity, "currency": existing.currency},
                        body,
                    )
            except CustomerInvalid as invalid:
                raise ErpRejected(
                    "INVALID_CUSTOMER", invalid.message, field=invalid.field
                ) from None
            created = existing is None
            if existing is None:
                number = str(next(self._customer_numbers))
                existing = Customer(
                    id=f"C-{number}",
                    name=draft.name,
                    crm_account_id=draft.crm_account_id,
                    legal_entity=draft.legal_entity,
                    status=CustomerStatus.ACTIVE,
                    credit_limit=money(DEFAULT_CREDIT_LIMITS[draft.legal_entity]),
                    currency=draft.currency,
                    number=number,
                    payment_terms=DEFAULT_PAYMENT_TERMS,
                )
            customer = replace(
                existing,
                name=draft.name,
                country_code=draft.country_code,
                tax_id=draft.tax_id,
                duns=draft.duns,
                billing_address=draft.billing_address,
            )
            self._customers[customer.id] = customer
            result = CustomerUpsert(customer, created=created)
            self._keys[idempotency_key] = (fingerprint, result)
            return result

    def credit(self, customer_id: str) -> CreditPosition | None:
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None:
                return None
            exposure = sum(
                (
                    order.grand_total
                    for order in self._orders.values()
                    if order.customer_id == customer_id
                    and order.status is not SalesOrderStatus.CANCELLED
                ),
                Decimal(0),
            )
        return CreditPosition(
            customer_id=customer.id,
            status=customer.status,
            currency=customer.currency,
            credit_limit=customer.credit_limit,
            exposure=money(exposure),
        )

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        with self._lock:
            return {
                sku: self._stock[sku, region]
                for sku in sorted(set(skus))
                if (sku, region) in self._stock
            }

    def close(self) -> None:
        self.closed = True

    # --- the sandbox's control methods, and the clock ------------------------------------

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        """Creates or replaces customers as the sandbox does: one without a number keeps its
        own or takes the next, one without payment terms gets NET30; a number or CRM account
        another customer has is refused."""
        with self._lock:
            seeded = {}
            for customer in customers:
                before = self._customers.get(customer.id)
                number = customer.number or (before.number if before else None)
                seeded[customer.id] = replace(
                    customer,
                    credit_limit=money(customer.credit_limit),
                    number=number or str(next(self._customer_numbers)),
                    payment_terms=customer.payment_terms or DEFAULT_PAYMENT_TERMS,
                )
            after = {**self._customers, **seeded}
            for field in ("number", "crm_account_id"):
                values = [getattr(c, field) for c in after.values() if getattr(c, field)]
                if len(values) != len(set(values)):
                    raise RuntimeError(f"ERP fake refused the seed: a {field} is another's")
            self._customers = after
        return len(seeded)

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        payment_terms: str | None = None,
        blocks: Iterable[str] | None = None,
        crm_account_id: str | None = None,
    ) -> None:
        """An ERP user changes the given fields of a customer, or links it to a CRM account
        (refused when another customer has it)."""
        changes: dict[str, Any] = {
            "credit_limit": None if credit_limit is None else money(credit_limit),
            "status": status,
            "payment_terms": payment_terms,
            "blocks": None if blocks is None else tuple(blocks),
            "crm_account_id": crm_account_id,
        }
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None:
                raise RuntimeError(f"ERP fake: no customer {customer_id!r}")
            holder = self._by_account(crm_account_id) if crm_account_id else None
            if holder is not None and holder.id != customer_id:
                raise RuntimeError("ERP fake refused the edit: the CRM account is another's")
            given = {name: value for name, value in changes.items() if value is not None}
            self._customers[customer_id] = replace(customer, **given)

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        """Creates or replaces stock levels by SKU and region; returns how many."""
        seeded = [replace(level, quantity=money(level.quantity)) for level in levels]
        with self._lock:
            self._stock.update(((level.sku, level.region), level) for level in seeded)
        return len(seeded)

    def seed_products(self, products: Iterable[Product]) -> int:
        """Creates or replaces products; returns how many."""
        seeded = list(products)
        with self._lock:
            self._products.update((product.sku, product) for product in seeded)
        return len(seeded)

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        """Creates or replaces price books with all their entries; returns how many books."""
        seeded = [
            replace(book, prices={sku: money(price) for sku, price in book.prices.items()})
            for book in price_books
        ]
        with self._lock:
            self._price_books.update((book.id, book) for book in seeded)
        return len(seeded)

    def booked(self, external_id: str) -> list[str]:
        """The ids of the sales orders booked for ``external_id`` (at most one)."""
        with self._lock:
            order = self._orders.get(external_id)
            return [] if order is None else [order.id]

    def sales_order(self, external_id: str) -> SalesOrder | None:
        """The sales order for ``external_id`` as it is now."""
        with self._lock:
            return self._orders.get(external_id)

    def cancel_reason(self, external_id: str) -> str | None:
        with self._lock:
            return self._cancel_reasons.get(external_id)

    def invoice(self, external_id: str) -> None:
        """The ERP invoices the open order for ``external_id``."""
        self._move(external_id, SalesOrderStatus.OPEN, SalesOrderStatus.INVOICED)

    def ship(self, external_id: str) -> None:
        """The ERP ships the invoiced order for ``external_id``."""
        self._move(external_id, SalesOrderStatus.INVOICED, SalesOrderStatus.SHIPPED)

    # --- booking -------------------------------------------------------------------------

    def _move(self, external_id: str, before: SalesOrderStatus, after: SalesOrderStatus) -> None:
        with self._lock:
            order = self._orders.get(external_id)
            if order is None or order.status is not before:
                raise RuntimeError(f"ERP fake: no {before.value} order for {external_id!r}")
            self._orders[external_id] = replace(order, status=after)

    def _replay(self, key: str, fingerprint: str, kind: type[T]) -> T | None:
        """The stored answer to a repeat of the request ``key`` was first used for."""
        stored = self._keys.get(key)
        if stored is None:
            return None
        if stored[0] != fingerprint:
            raise IdempotencyConflict(
                f"erp: Idempotency-Key {key!r} was used with a different request"
            )
        answer = stored[1]
        assert isinstance(answer, kind), "one fingerprint, one operation, one kind of answer"
        return answer

    def _by_account(self, crm_account_id: str) -> Customer | None:
        return next(
            (c for c in self._customers.values() if c.crm_account_id == crm_account_id), None
        )

    def _book(self, request: SalesOrderRequest) -> SalesOrder:
        """The order the request books, or the ERP's refusal, checked in the sandbox's order."""
        customer = self._customers.get(request.customer_id)
        if customer is None:
            raise ErpRejected("CUSTOMER_NOT_MASTERED", f"no customer {request.customer_id!r}")
        if customer.status is CustomerStatus.BLOCKED:
            raise ErpRejected("CUSTOMER_BLOCKED", f"customer {customer.id} is blocked")
        if customer.status is CustomerStatus.CREDIT_HOLD:
            raise ErpRejected("CREDIT_HOLD", f"customer {customer.id} is on credit hold")
        if customer.currency != request.currency:
            raise ErpRejected(
                "UNSUPPORTED_CURRENCY",
                f"customer {customer.id} is billed in {customer.currency}, not {request.currency}",
            )
        numbers = [line.line_number for line in request.lines]
        if len(set(numbers)) != len(numbers):
            raise ErpRejected("INVALID_ORDER", f"line numbers repeat: {sorted(numbers)}")
        self._check_products(request)
        line_totals, pricing = self._price(request)
        subtotal = sum(line_totals, Decimal(0))
        tax_total = sum((line.tax_amount for line in request.lines), Decimal(0))
        grand_total = subtotal + tax_total
        return SalesOrder(
            id=f"SO-{uuid.uuid4()}",
            number=f"SO-{next(self._numbers):06d}",
            external_id=request.external_id,
            customer_id=customer.id,
            status=SalesOrderStatus.OPEN,
            currency=request.currency,
            subtotal=money(subtotal),
            tax_total=money(tax_total),
            grand_total=money(grand_total),
            credit_check=_credit_check(customer, grand_total),
            pricing_outcome=pricing,
            created_at=datetime.now(UTC),
        )

    def _check_products(self, request: SalesOrderRequest) -> None:
        skus = sorted({line.sku for line in request.lines})
        known = {sku: self._products[sku] for sku in skus if sku in self._products}
        unknown = tuple(sku for sku in skus if sku not in known or not known[sku].active)
        if unknown:
            raise ErpRejected("UNKNOWN_PRODUCT", "unknown or inactive products", unknown)
        unsold = tuple(sku for sku in skus if not known[sku].sold_by(request.legal_entity))
        if unsold:
            raise ErpRejected(
                "UNKNOWN_PRODUCT", f"not sold by legal entity {request.legal_entity}", unsold
            )

    def _price(self, request: SalesOrderRequest) -> tuple[list[Decimal], PricingOutcome]:
        """Each line's total, and the pricing outcome."""
        book = self._price_books.get(request.price_book_id)
        if book is None:
            raise ErpRejected("UNKNOWN_PRICE_BOOK", f"no price book {request.price_book_id!r}")
        if book.currency != request.currency:
            raise ErpRejected(
                "UNSUPPORTED_CURRENCY",
                f"price book {book.id} is in {book.currency}, the order in {request.currency}",
            )
        mismatched: list[str] = []
        adjusted = False
        totals = []
        for line in request.lines:
            list_price = book.prices.get(line.sku)
            if list_price is None or abs(line.unit_price - list_price) > list_price * (
                PRICE_TOLERANCE
            ):
                mismatched.append(line.sku)
                continue
            adjusted |= line.unit_price != list_price
            gross = line.quantity * line.unit_price
            if line.discount_amount > gross:
                raise ErpRejected(
                    "INVALID_ORDER",
                    f"line {line.line_number}: discount {line.discount_amount} exceeds "
                    f"{money(gross)}",
                    (line.sku,),
                )
            totals.append(money(gross - line.discount_amount))
        if mismatched:
            raise ErpRejected(
                "PRICING_MISMATCH",
                "prices differ from the price book by more than 1%",
                tuple(sorted(mismatched)),
            )
        outcome = PricingOutcome.ADJUSTED_WITHIN_TOLERANCE if adjusted else PricingOutcome.MATCHED
        return totals, outcome


def _credit_check(customer: Customer, grand_total: Decimal) -> CreditCheckOutcome:
    limit = customer.credit_limit
    if grand_total == 0:
        return CreditCheckOutcome.NOT_REQUIRED
    if grand_total <= limit:
        return CreditCheckOutcome.APPROVED
    if grand_total <= limit * CREDIT_TOLERANCE:
        return CreditCheckOutcome.APPROVED_OVER_LIMIT
    raise ErpRejected(
        "CREDIT_LIMIT_EXCEEDED",
        f"order total {grand_total} exceeds customer {customer.id}'s credit limit {limit}",
    )
