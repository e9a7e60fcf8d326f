"""Customers as the simulated ERP masters them: the CRM-owned fields revsync writes (validated,
idempotent, one customer per CRM account), an ERP user's edits, the search for who a new
account might already be, the credit position, and the outbox rows of every change."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import pycountry
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import Field, ValidationError, field_validator

from revsync.ports.erp import CustomerQuery, normalised_identifier, normalised_name
from sandbox.erp.orders import StrictBody, amount
from sandbox.erp.store import Connection
from sandbox.http import HttpFailure

DEFAULT_CREDIT_LIMITS = {
    "US01": Decimal(50_000),
    "CA01": Decimal(60_000),
    "DE01": Decimal(45_000),
    "GB01": Decimal(40_000),
}
"""The legal entities the ERP masters customers under, and the credit limit a new customer
starts with there, in the customer's own currency."""
DEFAULT_PAYMENT_TERMS = "NET30"
COUNTRY = re.compile(r"[A-Z]{2}")
CURRENCY = re.compile(r"[A-Z]{3}")
TAX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ./-]{1,31}")
DUNS_DIGITS = 9
CREDIT_FIELDS = ("credit_limit", "status")
"""The columns whose change the ERP reports as a credit status change."""


class CustomerInvalid(Exception):
    """The ERP refuses a customer's values: ``field`` names the one at fault. The message
    says what is expected, never the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def refusal(self) -> HttpFailure:
        return HttpFailure(
            422, {"code": "INVALID_CUSTOMER", "message": self.message, "field": self.field}
        )


def _iso_country(value: str) -> str:
    if not COUNTRY.fullmatch(value) or pycountry.countries.get(alpha_2=value) is None:
        raise ValueError("expected an ISO 3166 alpha-2 code in capitals")
    return value


def _iso_currency(value: str) -> str:
    if not CURRENCY.fullmatch(value) or pycountry.currencies.get(alpha_3=value) is None:
        raise ValueError("expected an ISO 4217 code in capitals")
    return value


class BillingAddress(StrictBody):
    street: str = Field(min_length=1, max_length=255)
    city: str = Field(min_length=1, max_length=255)
    state_province: str | None = Field(default=None, max_length=255)
    postal_code: str | None = Field(default=None, max_length=32)
    country_code: str

    @field_validator("country_code")
    @classmethod
    def _country(cls, value: str) -> str:
        return _iso_country(value)


class CustomerBody(StrictBody):
    """The body of ``PUT /api/v1/customers/by-external-id/{crm_account_id}``: every field the
    CRM owns; an optional one left out or null is cleared."""

    name: str = Field(max_length=255)
    legal_entity: str
    currency: str
    country_code: str
    tax_id: str | None = None
    duns: str | None = None
    billing_address: BillingAddress | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a name, not blanks")
        return value

    @field_validator("legal_entity")
    @classmethod
    def _legal_entity(cls, value: str) -> str:
        if value not in DEFAULT_CREDIT_LIMITS:
            raise ValueError(f"expected one of {', '.join(sorted(DEFAULT_CREDIT_LIMITS))}")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return _iso_currency(value)

    @field_validator("country_code")
    @classmethod
    def _country(cls, value: str) -> str:
        return _iso_country(value)

    @field_validator("tax_id")
    @classmethod
    def _tax_id(cls, value: str | None) -> str | None:
        if value is not None and not TAX_ID.fullmatch(value):
            raise ValueError("expected 2 to 32 letters and digits, spaces, dots, dashes, slashes")
        return value

    @field_validator("duns")
    @classmethod
    def _duns(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = normalised_identifier(value) or ""
        if not (digits.isdigit() and len(digits) == DUNS_DIGITS):
            raise ValueError(f"expected {DUNS_DIGITS} digits (dashes and spaces aside)")
        return value

    def columns(self) -> dict[str, Any]:
        """The customer's columns these values set."""
        address = self.billing_address
        return {
            "name": self.name,
            "country_code": self.country_code,
            "tax_id": self.tax_id,
            "duns": self.duns,
            "billing_street": address.street if address else None,
            "billing_city": address.city if address else None,
            "billing_state_province": address.state_province if address else None,
            "billing_postal_code": address.postal_code if address else None,
            "billing_country_code": address.country_code if address else None,
        }


class CustomerEdit(StrictBody):
    """An ERP user's edit of a customer (``PATCH /__sandbox/customers/{id}``): the fields the
    ERP owns, and the CRM account a data steward links it to; those left out stay as they
    are."""

    credit_limit: Decimal | None = Field(
        default=None, ge=0, max_digits=18, decimal_places=4, allow_inf_nan=False
    )
    status: Literal["active", "blocked", "credit_hold"] | None = None
    payment_terms: str | None = Field(default=None, min_length=1, max_length=32)
    blocks: list[Literal["order", "delivery", "billing"]] | None = None
    crm_account_id: str | None = Field(default=None, min_length=1)


def validated(body: Any) -> CustomerBody:
    """``body`` as a customer's CRM-owned fields, or :class:`CustomerInvalid` naming the
    first field at fault."""
    try:
        return CustomerBody.model_validate(body if body is not None else {})
    except ValidationError as error:
        first = error.errors(include_url=False, include_context=False, include_input=False)[0]
        field = ".".join(map(str, first["loc"])) or "body"
        raise CustomerInvalid(field, str(first["msg"])) from None


def keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """The search keys of a customer with ``values`` (name, tax id, DUNS number)."""
    return {
        "name_key": normalised_name(values["name"]),
        "tax_id_key": normalised_identifier(values["tax_id"]),
        "duns_key": normalised_identifier(values["duns"]),
    }


def upsert(
    connection: Connection, crm_account_id: str, body: CustomerBody
) -> tuple[int, dict[str, Any]]:
    """Creates the customer of CRM account ``crm_account_id`` (201), or writes ``body`` over
    the one it has (200), in the open transaction, with the outbox row of any change.

    The unique external id makes a concurrent create of the same account wait for this one
    and then update what it created, so an account never has two customers."""
    existing = _by_account(connection, crm_account_id)
    if existing is None:
        created = _create(connection, crm_account_id, body)
        if created is not None:
            _mastered(connection, created)
            return 201, {"created": True, "customer": document(created)}
        existing = _by_account(connection, crm_account_id)
        assert existing is not None, "the conflicting customer is committed before it is seen"
    check_fixed(existing, body)
    wanted = body.columns()
    if any(existing[name] != value for name, value in wanted.items()):
        columns = {**wanted, **keys(wanted)}
        assignments = ", ".join(f"{name} = %({name})s" for name in columns)
        updated = connection.execute(
            f"UPDATE customers SET {assignments}, updated_at = now() "  # noqa: S608 - fixed names
            "WHERE id = %(id)s RETURNING *",
            {**columns, "id": existing["id"]},
        ).fetchone()
        assert updated is not None
        _mastered(connection, updated)
        existing = updated
    return 200, {"created": False, "customer": document(existing)}


def check_fixed(existing: Mapping[str, Any], body: CustomerBody) -> None:
    """What an upsert may not change of an ``existing`` customer: its legal entity and its
    currency (the credit limit is in it)."""
    if existing["legal_entity"] != body.legal_entity:
        raise CustomerInvalid("legal_entity", "a customer stays with its legal entity")
    if existing["currency"] != body.currency:
        raise CustomerInvalid("currency", "a customer's currency does not change")


def _by_account(connection: Connection, crm_account_id: str) -> DictRow | None:
    return connection.execute(
        "SELECT * FROM customers WHERE crm_account_id = %s FOR UPDATE", (crm_account_id,)
    ).fetchone()


def _create(connection: Connection, crm_account_id: str, body: CustomerBody) -> DictRow | None:
    """The new customer, or None when a concurrent create of the account came first."""
    values = body.columns()
    return connection.execute(
        "WITH numbered AS (SELECT nextval('customer_numbers')::text AS number) "
        "INSERT INTO customers (id, number, name, crm_account_id, legal_entity, status, "
        "credit_limit, currency, payment_terms, country_code, tax_id, duns, billing_street, "
        "billing_city, billing_state_province, billing_postal_code, billing_country_code, "
        "name_key, tax_id_key, duns_key) "
        "SELECT 'C-' || number, number, %(name)s, %(crm_account_id)s, %(legal_entity)s, "
        "'active', %(credit_limit)s, %(currency)s, %(payment_terms)s, %(country_code)s, "
        "%(tax_id)s, %(duns)s, %(billing_street)s, %(billing_city)s, "
        "%(billing_state_province)s, %(billing_postal_code)s, %(billing_country_code)s, "
        "%(name_key)s, %(tax_id_key)s, %(duns_key)s FROM numbered "
        "ON CONFLICT (crm_account_id) WHERE crm_account_id IS NOT NULL DO NOTHING RETURNING *",
        {
            **values,
            **keys(values),
            "crm_account_id": crm_account_id,
            "legal_entity": body.legal_entity,
            "currency": body.currency,
            "credit_limit": DEFAULT_CREDIT_LIMITS[body.legal_entity],
            "payment_terms": DEFAULT_PAYMENT_TERMS,
        },
    ).fetchone()


def edit(connection: Connection, customer_id: str, changes: CustomerEdit) -> dict[str, Any]:
    """An ERP user's edit (or a data steward's link to a CRM account), in the open
    transaction: the customer's document afterwards. A change writes CustomerMastered, and
    CreditStatusChanged too when the credit limit or status moved."""
    before = connection.execute(
        "SELECT * FROM customers WHERE id = %s FOR UPDATE", (customer_id,)
    ).fetchone()
    if before is None:
        raise HttpFailure(404, {"code": "not_found", "message": f"no customer {customer_id!r}"})
    wanted = changes.model_dump(exclude_none=True)
    changed = [name for name, value in wanted.items() if before[name] != value]
    if not changed:
        return document(before)
    assignments = ", ".join(f"{name} = %({name})s" for name in changed)
    after = connection.execute(
        f"UPDATE customers SET {assignments}, updated_at = now() "  # noqa: S608 - fixed names
        "WHERE id = %(id)s RETURNING *",
        {**wanted, "id": customer_id},
    ).fetchone()
    assert after is not None
    _mastered(connection, after)
    if any(name in CREDIT_FIELDS for name in changed):
        _credit_changed(connection, after)
    return document(after)


def seed_keys(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seeded customers with their search keys."""
    return [{**seed, **keys(seed)} for seed in seeds]


def find(connection: Connection, query: CustomerQuery) -> list[dict[str, Any]]:
    """Customers matching any criterion of ``query``, by number, each with the criteria it
    met (``matched_on``: ``tax_id``, ``duns``, ``name_country``)."""
    name_key = normalised_name(query.name) if query.name is not None else None
    rows = connection.execute(
        "SELECT c.*, array_remove(ARRAY["
        "CASE WHEN c.tax_id_key = %(tax_id)s THEN 'tax_id' END, "
        "CASE WHEN c.duns_key = %(duns)s THEN 'duns' END, "
        "CASE WHEN c.name_key = %(name)s AND c.country_code = %(country)s "
        "THEN 'name_country' END], NULL) AS matched_on "
        "FROM customers c WHERE c.tax_id_key = %(tax_id)s OR c.duns_key = %(duns)s "
        "OR (c.name_key = %(name)s AND c.country_code = %(country)s) "
        "ORDER BY length(c.number), c.number",
        {
            "tax_id": normalised_identifier(query.tax_id),
            "duns": normalised_identifier(query.duns),
            "name": name_key or None,
            "country": query.country_code.upper() if query.country_code else None,
        },
    ).fetchall()
    return [{**document(row), "matched_on": row["matched_on"]} for row in rows]


def by_account(connection: Connection, crm_account_id: str) -> list[dict[str, Any]]:
    """The customer of CRM account ``crm_account_id``, if it has one."""
    row = connection.execute(
        "SELECT * FROM customers WHERE crm_account_id = %s", (crm_account_id,)
    ).fetchone()
    return [] if row is None else [document(row)]


EXPOSURE = (
    "(SELECT coalesce(sum(grand_total), 0) FROM sales_orders "
    " WHERE customer_id = c.id AND status = 'open') + "
    "(SELECT coalesce(sum(i.amount_due), 0) FROM invoices i "
    " JOIN sales_orders o ON o.id = i.sales_order_id "
    " WHERE o.customer_id = c.id AND i.status = 'posted')"
)
"""A customer's exposure: its open (not invoiced, not cancelled) orders and unpaid invoices."""


def credit(connection: Connection, customer_id: str) -> dict[str, Any] | None:
    """The customer's credit position now, or None when there is no such customer."""
    row = connection.execute(
        f"SELECT c.id, c.status, c.currency, c.credit_limit, {EXPOSURE} AS exposure "  # noqa: S608 - fixed SQL
        "FROM customers c WHERE c.id = %s",
        (customer_id,),
    ).fetchone()
    if row is None:
        return None
    return {
        "customer_id": row["id"],
        "status": row["status"],
        "currency": row["currency"],
        "credit_limit": amount(row["credit_limit"]),
        "exposure": amount(row["exposure"]),
        "available": amount(row["credit_limit"] - row["exposure"]),
    }


def document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's JSON form of a customer: its whole master record."""
    address = (
        None
        if row["billing_street"] is None
        else {
            "street": row["billing_street"],
            "city": row["billing_city"],
            "state_province": row["billing_state_province"],
            "postal_code": row["billing_postal_code"],
            "country_code": row["billing_country_code"],
        }
    )
    return {
        "id": row["id"],
        "number": row["number"],
        "name": row["name"],
        "crm_account_id": row["crm_account_id"],
        "legal_entity": row["legal_entity"],
        "status": row["status"],
        "credit_limit": amount(row["credit_limit"]),
        "currency": row["currency"],
        "payment_terms": row["payment_terms"],
        "blocks": list(row["blocks"]),
        "tax_id": row["tax_id"],
        "duns": row["duns"],
        "country_code": row["country_code"],
        "billing_address": address,
        "updated_at": row["updated_at"].isoformat(),
    }


INSERT_OUTBOX = (
    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
    "VALUES (%s, 'customer', %s, %s, %s)"
)


def _mastered(connection: Connection, row: DictRow) -> None:
    """The CustomerMastered outbox row of a created or changed customer; none for a customer
    no CRM account masters (there is nothing to key it by)."""
    if row["crm_account_id"] is None:
        return
    payload = {"customer": document(row), "changed_at": row["updated_at"].isoformat()}
    connection.execute(
        INSERT_OUTBOX, (uuid.uuid4(), row["crm_account_id"], "CustomerMastered", Jsonb(payload))
    )


def _credit_changed(connection: Connection, row: DictRow) -> None:
    """The CreditStatusChanged outbox row of a customer whose credit limit or status moved."""
    if row["crm_account_id"] is None:
        return
    position = credit(connection, row["id"])
    assert position is not None
    payload = {
        "customer": document(row),
        "credit": {
            "status": position["status"],
            "currency": position["currency"],
            "credit_limit": position["credit_limit"],
            "exposure": position["exposure"],
            "available_credit": position["available"],
        },
        "changed_at": row["updated_at"].isoformat(),
    }
    connection.execute(
        INSERT_OUTBOX, (uuid.uuid4(), row["crm_account_id"], "CreditStatusChanged", Jsonb(payload))
    )
