"""Which CRM accounts become ERP customers, and with what: the rule order_sync waits by (an
order of an account that will be mastered waits for it; one that cannot be is rejected) and
customer_sync masters by. The fields come from the governed ownership table."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from revsync.contracts.ownership import ObjectOwnership, Owner
from revsync.errors import BusinessRuleViolation
from revsync.ports.erp import Address, Customer, CustomerDraft

ACCOUNT = "Account"
SYNC_FLAG = "Sync_To_ERP__c"
C = TypeVar("C", bound=StrEnum)


class Qualify(StrEnum):
    """What makes a CRM account one the ERP must have."""

    FLAG = "flag"
    """Its ``Sync_To_ERP__c`` checkbox is ticked."""
    FIRST_ORDER = "first-order"
    """An order of it was activated."""


def parse_choices(text: str, kind: type[C]) -> frozenset[C]:
    """Comma-separated choices of a setting (validated by the setting's pattern)."""
    return frozenset(kind(part.strip()) for part in text.split(",") if part.strip())


class AccountNotMasterable(BusinessRuleViolation):
    """The account lacks what an ERP customer needs; the message names the CRM fields, never
    their values."""


def account_fields(ownership: ObjectOwnership) -> list[str]:
    """What to read of an account: every field the table names, and the qualifying flag."""
    return ["Id", SYNC_FLAG, *(field.crm for field in ownership.fields.values())]


def draft(
    account: Mapping[str, Any], ownership: ObjectOwnership, existing: Customer | None = None
) -> CustomerDraft:
    """The CRM-owned fields of ``account`` as the ERP customer's; refused, naming the CRM
    fields, when one the ERP needs is empty. For a customer the ERP has already
    (``existing``), an empty required field keeps the ERP's value: an account linked before
    its CRM held them is not refused."""
    crm = ownership.crm_fields(Owner.CRM)
    required = ("name", "legal_entity", "currency", "country_code")

    def value(name: str) -> str | None:
        field = crm.get(name)
        raw = account.get(field) if field else None
        text = str(raw).strip() if raw is not None else ""
        if not text and existing is not None and name in required:
            return getattr(existing, name, None) or None
        return text or None

    missing = [crm.get(name, name) for name in required if value(name) is None]
    if missing:
        raise AccountNotMasterable(
            f"account {account.get('Id')}: {', '.join(missing)} empty; an ERP customer needs them"
        )
    street, city = value("billing_street"), value("billing_city")
    address = (
        Address(
            street=street,
            city=city,
            state_province=value("billing_state"),
            postal_code=value("billing_postal"),
            country_code=str(value("country_code")),
        )
        if street and city
        else None
    )
    return CustomerDraft(
        crm_account_id=str(account["Id"]),
        name=str(value("name")),
        legal_entity=str(value("legal_entity")),
        currency=str(value("currency")).upper(),
        country_code=str(value("country_code")).upper(),
        tax_id=value("tax_id"),
        duns=value("duns"),
        billing_address=address,
    )


def qualifies(account: Mapping[str, Any], rules: frozenset[Qualify], by_order: bool) -> bool:
    """Whether the ERP must have this account's customer: flagged, or an order of it was
    activated (``by_order``), as configured."""
    flagged = Qualify.FLAG in rules and account.get(SYNC_FLAG) is True
    return flagged or (Qualify.FIRST_ORDER in rules and by_order)
