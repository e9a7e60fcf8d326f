"""customer_sync's decisions, free of I/O: when a CRM account is mastered in the ERP, what of it
the ERP gets (the CRM-owned fields), who it might already be (a duplicate for a steward), and
what of the ERP's record the CRM gets back (the ERP-owned fields). Field ownership comes from
the governed table (:mod:`revsync.contracts.ownership`); nothing is last-write-wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from revsync.connectors.cdc import ChangeType, Integration, RecordChange
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerMatch,
    CustomerUpserted,
    DuplicateCustomerSuspected,
    Envelope,
    MatchBasis,
    SourceSystem,
)
from revsync.contracts.ownership import ObjectOwnership, Owner
from revsync.ports.erp import Customer, CustomerDraft, CustomerQuery
from revsync.rules.customers import (
    ACCOUNT,
    SYNC_FLAG,
)
from revsync.runtime.handler import caused_envelope


class MatchRule(StrEnum):
    TAX_ID = "tax_id"
    DUNS = "duns"
    NAME_COUNTRY = "name_country"


BASIS = {
    MatchRule.TAX_ID: MatchBasis.TAX_ID,
    MatchRule.DUNS: MatchBasis.DUNS,
    MatchRule.NAME_COUNTRY: MatchBasis.NAME_COUNTRY,
}


def changed_fields(wanted: CustomerDraft, customer: Customer) -> list[str]:
    """The CRM-owned fields (by their names in the ownership table) the ERP customer does not
    have yet."""
    theirs, ours = customer.billing_address, wanted.billing_address
    current = {
        "name": (wanted.name, customer.name),
        "legal_entity": (wanted.legal_entity, customer.legal_entity),
        "currency": (wanted.currency, customer.currency),
        "country_code": (wanted.country_code, customer.country_code),
        "tax_id": (wanted.tax_id, customer.tax_id),
        "duns": (wanted.duns, customer.duns),
        "billing_street": (ours and ours.street, theirs and theirs.street),
        "billing_city": (ours and ours.city, theirs and theirs.city),
        "billing_state": (ours and ours.state_province, theirs and theirs.state_province),
        "billing_postal": (ours and ours.postal_code, theirs and theirs.postal_code),
    }
    return sorted(name for name, (want, have) in current.items() if want != have)


def query(wanted: CustomerDraft, rules: frozenset[MatchRule]) -> CustomerQuery:
    return CustomerQuery(
        tax_id=wanted.tax_id if MatchRule.TAX_ID in rules else None,
        duns=wanted.duns if MatchRule.DUNS in rules else None,
        name=wanted.name if MatchRule.NAME_COUNTRY in rules else None,
        country_code=wanted.country_code if MatchRule.NAME_COUNTRY in rules else None,
    )


def matches(
    wanted: CustomerDraft, candidates: Sequence[Customer], rules: frozenset[MatchRule]
) -> list[CustomerMatch]:
    """The ERP customers ``wanted`` would duplicate: another account's (or no account's)
    customer that a configured rule matches. The account's own customer is no duplicate."""
    found = []
    for customer in sorted(candidates, key=lambda c: c.id):
        if customer.crm_account_id == wanted.crm_account_id:
            continue
        basis = _basis(wanted, customer, rules)
        if basis is not None:
            found.append(
                CustomerMatch(
                    erp_customer_id=customer.id,
                    customer_number=customer.number or customer.id,
                    crm_account_id=customer.crm_account_id,
                    matched_on=basis,
                )
            )
    return found


def _basis(
    wanted: CustomerDraft, customer: Customer, rules: frozenset[MatchRule]
) -> MatchBasis | None:
    """The first configured rule by which ``customer`` is ``wanted`` (as the ERP's search
    compares them: :class:`~revsync.ports.erp.CustomerQuery`)."""
    for rule in MatchRule:
        if rule in rules and query(wanted, frozenset({rule})).matches(customer):
            return BASIS[rule]
    return None


def upsert_key(cause: Envelope, crm_account_id: str) -> str:
    """One key per causing event and account: a retry of the event is the same request."""
    return f"customer-sync:{cause.event_id}:{crm_account_id}"


def upserted(
    cause: Envelope, customer: Customer, created: bool, fields: Sequence[str], now: datetime
) -> CustomerUpserted:
    assert customer.crm_account_id is not None
    return CustomerUpserted(
        envelope=caused_envelope(
            cause,
            CustomerUpserted.event_type,
            source_system=SourceSystem.REVSYNC,
            occurred_at=now,
        ),
        crm_account_id=customer.crm_account_id,
        erp_customer_id=customer.id,
        created=created,
        legal_entity=customer.legal_entity,
        fields=list(fields),
        upserted_at=now,
    )


def duplicate(
    cause: Envelope, wanted: CustomerDraft, found: Sequence[CustomerMatch], now: datetime
) -> DuplicateCustomerSuspected:
    rules = sorted({match.matched_on.value.lower().replace("_", " ") for match in found})
    customers = ", ".join(match.customer_number for match in found)
    return DuplicateCustomerSuspected(
        envelope=caused_envelope(
            cause,
            DuplicateCustomerSuspected.event_type,
            source_system=SourceSystem.REVSYNC,
            occurred_at=now,
        ),
        crm_account_id=wanted.crm_account_id,
        legal_entity=wanted.legal_entity,
        matches=list(found),
        message=(
            f"matches ERP customer {customers} by {' and '.join(rules)}: no customer was "
            "created. Link the account to it in the ERP (its external id), or correct the "
            "account in the CRM, then retry"
        ),
        detected_at=now,
    )


# --- account change events -----------------------------------------------------------------


@dataclass(frozen=True)
class AccountStep:
    """What an account change asks for: ``sync`` its CRM-owned fields to the ERP (when it
    qualifies or is mastered already); ``overruled``: ERP-owned CRM fields a person edited,
    to report and set back."""

    account_id: str
    sync: bool
    overruled: tuple[str, ...] = ()
    asked: bool = False
    """A person's retry (from the worklist): mastered whether or not it qualifies."""


RECONCILE_MARGIN = timedelta(minutes=1)
"""A transaction's records are stamped before it commits; reach back this far before it."""


def overflowed(change: RecordChange) -> bool:
    """Salesforce dropped the details of a large transaction (or named its records only by a
    wildcard): every account changed since must be read."""
    header = change.header
    wildcard = any(record_id.endswith("*") for record_id in header.recordIds)
    return change.entity == ACCOUNT and (header.changeType is ChangeType.GAP_OVERFLOW or wildcard)


def reconcile_query(since: datetime) -> str:
    stamp = (since - RECONCILE_MARGIN).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # SOQL, not SQL: every part is a constant or a formatted timestamp.
    return (
        f"SELECT Id FROM {ACCOUNT} WHERE SystemModstamp >= {stamp} "  # noqa: S608
        "ORDER BY SystemModstamp"
    )


def plan(
    change: RecordChange, integration: Integration, ownership: ObjectOwnership
) -> list[AccountStep]:
    """Each account of a change event and what it asks for; revsync's own writes (the ERP's
    fields written back) ask for nothing, so nothing echoes. (An overflow is
    :func:`overflowed`'s.)"""
    header = change.header
    if change.entity != ACCOUNT or header.changeType in (ChangeType.DELETE, ChangeType.UNDELETE):
        return []
    if integration.made(change):
        return []
    if header.changeType.is_gap:
        # Salesforce sent no fields: read each account and sync what it says.
        asked = header.retry is not None
        return [
            AccountStep(record_id, True, asked=asked) for record_id in header.recordIds if record_id
        ]
    changed = _field_names(change)
    overruled = tuple(
        sorted(name for name in changed if ownership.owner_of_crm_field(name) is Owner.ERP)
    )
    if header.changeType is ChangeType.CREATE:
        # A new account: ERP-owned values set on it are a person's too.
        overruled = tuple(
            sorted(
                name
                for name, value in change.fields.items()
                if value is not None and ownership.owner_of_crm_field(name) is Owner.ERP
            )
        )
    synced = any(ownership.owner_of_crm_field(name) is Owner.CRM for name in changed)
    sync = synced or SYNC_FLAG.lower() in {name.lower() for name in changed}
    return [AccountStep(record_id, sync, overruled) for record_id in header.recordIds]


def _field_names(change: RecordChange) -> set[str]:
    """The account fields a change names, a compound address's parts by their own names:
    Salesforce lists ``BillingAddress.City`` (and sends ``BillingAddress: {City: …}``) for
    what the REST API calls ``BillingCity``."""
    names = set()
    for name in header_and_payload(change):
        compound, _, part = name.partition(".")
        if part and compound.endswith("Address"):
            names.add(compound.removesuffix("Address") + part)
        else:
            names.add(name)
    return names - {"LastModifiedDate", "SystemModstamp"}


def header_and_payload(change: RecordChange) -> list[str]:
    """Every field name a change carries: its header's lists and its payload's, a compound
    field's parts as ``Compound.Part``."""
    names = list(change.header.changedFields) + list(change.header.nulledFields)
    for name, value in change.fields.items():
        if isinstance(value, Mapping):
            names += [f"{name}.{part}" for part in value]
        else:
            names.append(name)
    return names


# --- ERP customer -> CRM account --------------------------------------------------------------


def erp_values(
    event: CustomerMastered | CreditStatusChanged, ownership: ObjectOwnership
) -> dict[str, Any]:
    """The ERP-owned CRM fields ``event`` carries, as the CRM stores them."""
    values: dict[str, Any] = {
        "erp_customer_id": event.erp_customer_id,
        "status": _status(event.status.value),
        "credit_limit": event.credit_limit,
    }
    if isinstance(event, CustomerMastered):
        values["customer_number"] = event.customer_number
        values["payment_terms"] = event.payment_terms
        values["blocks"] = ";".join(event.blocks) or None
    return _as_crm(values, ownership)


def customer_values(customer: Customer, ownership: ObjectOwnership) -> dict[str, Any]:
    """The ERP-owned CRM fields of ``customer`` as the ERP holds it now."""
    return _as_crm(
        {
            "erp_customer_id": customer.id,
            "customer_number": customer.number,
            "status": _status(customer.status.value),
            "credit_limit": customer.credit_limit,
            "payment_terms": customer.payment_terms,
            "blocks": ";".join(customer.blocks) or None,
        },
        ownership,
    )


def _as_crm(values: Mapping[str, Any], ownership: ObjectOwnership) -> dict[str, Any]:
    crm = ownership.crm_fields(Owner.ERP)
    return {crm[name]: value for name, value in values.items() if name in crm}


STATUS_LABELS = {"ACTIVE": "Active", "BLOCKED": "Blocked", "CREDIT_HOLD": "Credit Hold"}
"""The ERP's customer status as the CRM's picklist shows it."""


def _status(status: str) -> str:
    return STATUS_LABELS.get(status.upper(), "Other")


def differing(wanted: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``wanted`` the account does not hold yet (numbers compared as numbers):
    a write of nothing new is no write, so an echo stops here."""
    return {name: value for name, value in wanted.items() if not _same(value, account.get(name))}


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, Decimal) and theirs is not None:
        try:
            return ours == Decimal(str(theirs))
        except ArithmeticError:
            return False
    return bool(ours == theirs or (ours in (None, "") and theirs in (None, "")))
