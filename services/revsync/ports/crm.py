"""The CRM port: the calls revsync's services make to the CRM, their results, and the errors
a caller tells apart.

The CRM is Salesforce, and the port speaks its language: sObjects and their fields, records
keyed by id or by an external id field, child relationships, SOQL, and Salesforce's error
codes. How a failed record's codes become revsync's error taxonomy lives here, so every
implementation (the REST adapter in :mod:`revsync.connectors.salesforce`, the test fake)
fails alike.

A failure is told by the record, Salesforce's error code and the fields at fault. Salesforce's
own messages are not kept: a validation rule's or a trigger's message may quote the record's
values (an address, an email, a phone number), and error text ends up in dead-letter headers
and logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from revsync.errors import BusinessRuleViolation, DependencyNotReady, RevsyncError, TransientError

SYSTEM = "salesforce"
NOT_FOUND = "NOT_FOUND"
REFERENCE_MISSING = "INVALID_CROSS_REFERENCE_KEY"
TRANSIENT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"})
"""Error codes that say "try again later" whatever the HTTP status (the API limit is a 403)."""


# --- Errors -------------------------------------------------------------------------------


class CrmRejected(BusinessRuleViolation):
    """Salesforce refused a record for good (validation rule, missing field, unknown field).
    ``detail`` is revsync's own account of an answer it could not use, if that is the case."""

    def __init__(
        self, subject: str, status_code: str, fields: Sequence[str] = (), detail: str = ""
    ) -> None:
        where = f" on {', '.join(fields)}" if fields else ""
        why = f": {detail}" if detail else ""
        super().__init__(f"Salesforce refused {subject}: {status_code}{where}{why}")
        self.subject = subject
        self.status_code = status_code
        self.fields = tuple(fields)


class RecordNotFound(DependencyNotReady):
    """The record does not exist (yet) in Salesforce."""

    def __init__(self, sobject: str, record_id: str) -> None:
        super().__init__(f"Salesforce has no {sobject} {record_id}")
        self.sobject = sobject
        self.record_id = record_id


class CrmReferenceMissing(DependencyNotReady):
    """A lookup (such as ``Order__c``) points at a record Salesforce does not have yet."""

    def __init__(self, subject: str, fields: Sequence[str]) -> None:
        super().__init__(
            f"Salesforce cannot link {subject}: {', '.join(fields) or 'a lookup'} references "
            "a record that does not exist yet"
        )
        self.subject = subject
        self.fields = tuple(fields)


# --- Results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrmFieldError:
    """One error Salesforce reported for a record: its code and the fields it names."""

    status_code: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpsertResult:
    id: str
    created: bool


@dataclass(frozen=True)
class RecordResult:
    """The outcome of one record of an sObject Collections request."""

    id: str | None
    success: bool
    created: bool
    errors: tuple[CrmFieldError, ...]
    sobject: str = ""
    external_id_field: str = ""
    external_id: str = ""
    """Which record this is: the sObject, and the key it was upserted by."""

    @property
    def subject(self) -> str:
        """The record as error messages name it, e.g. ``Invoice__c ERP_Invoice_Id__c=INV-1``."""
        return f"{self.sobject} {self.external_id_field}={self.external_id}"

    def error(self) -> RevsyncError | None:
        """The typed exception for a failed record (None when it succeeded)."""
        if self.success:
            return None
        not_found = (
            RecordNotFound(self.sobject, self.external_id)
            if self.external_id_field == "Id"
            else None
        )
        return record_failure(self.subject, self.errors, not_found)

    def raise_for_failure(self) -> None:
        """Raise :meth:`error`, if there is one."""
        failure = self.error()
        if failure is not None:
            raise failure


def record_failure(
    subject: str,
    errors: Sequence[CrmFieldError],
    not_found: RevsyncError | None,
    retry_after: float | None = None,
) -> RevsyncError:
    """The most actionable exception for a record's errors: try-again-later beats not-yet,
    which beats refused. ``not_found`` is what NOT_FOUND means here (None: a refusal, as when
    an upsert names an external id field the sObject does not have)."""
    for error in errors:
        if error.status_code in TRANSIENT_CODES:
            return TransientError(
                f"{SYSTEM}: {error.status_code} for {subject}", retry_after=retry_after
            )
    for error in errors:
        if error.status_code == NOT_FOUND and not_found is not None:
            return not_found
    for error in errors:
        if error.status_code == REFERENCE_MISSING:
            return CrmReferenceMissing(subject, error.fields)
    if not errors:
        return CrmRejected(subject, "UNKNOWN_EXCEPTION", detail="no error detail in the answer")
    first = errors[0]
    return CrmRejected(subject, first.status_code, first.fields)


# --- The port -----------------------------------------------------------------------------


class CrmPort(Protocol):
    """What revsync's services do in the CRM.

    Numbers come back as :class:`~decimal.Decimal` (whole ones as int) and dates and datetimes
    as ISO 8601 strings, so money never passes through a float. A missing record is
    :class:`RecordNotFound`, a lookup to a record the CRM lacks :class:`CrmReferenceMissing`
    (both dependency-not-ready), a refused value :class:`CrmRejected`; an implementation's
    transport adds only :class:`~revsync.errors.TransientError`.
    """

    def get(
        self, sobject: str, record_id: str, fields: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """One record by id, all fields unless ``fields`` names some."""
        ...

    def related(self, sobject: str, record_id: str, relationship: str) -> list[dict[str, Any]]:
        """The records of a child relationship, e.g. an Order's ``OrderItems``."""
        ...

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query selects, its selected fields only."""
        ...

    def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Change some fields of an existing record."""
        ...

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        external_id: str,
        fields: Mapping[str, Any],
    ) -> UpsertResult:
        """Create or update the record whose ``external_id_field`` is ``external_id``."""
        ...

    def upsert_many(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
    ) -> list[RecordResult]:
        """Upsert records by ``external_id_field`` (each carries it), each on its own: one
        result per record, in input order; a failed record's :meth:`RecordResult.error`
        says what to do about it."""
        ...

    def close(self) -> None: ...
