"""How the Salesforce adapter writes numbers and dates, and which error class each answer
becomes; no HTTP here (the integration tests provoke the same answers over the wire)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from revsync.connectors.salesforce import decode_json, encode_json
from revsync.errors import TransientError
from revsync.ports.crm import (
    CrmFieldError,
    CrmReferenceMissing,
    CrmRejected,
    RecordNotFound,
    RecordResult,
)


def test_decimals_are_written_as_json_numbers_digit_for_digit() -> None:
    value = {"Total__c": Decimal("12345678901234567.8901"), "Quantity": 3, "Paid": False}
    raw = encode_json(value)
    assert raw == b'{"Total__c":12345678901234567.8901,"Quantity":3,"Paid":false}'
    assert decode_json(raw) == value


def test_dates_and_datetimes_are_iso_strings_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    raw = encode_json([date(2025, 12, 1), datetime(2025, 12, 1, 11, 0, tzinfo=berlin)])
    assert raw == b'["2025-12-01","2025-12-01T10:00:00.000Z"]'


@pytest.mark.parametrize(
    "value", [Decimal("NaN"), datetime(2025, 12, 1), object()], ids=["nan", "naive", "object"]
)
def test_values_salesforce_cannot_read_are_refused_before_sending(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_json({"Field__c": value})


def result(
    *errors: tuple[str, tuple[str, ...]], key_field: str = "ERP_Invoice_Id__c"
) -> RecordResult:
    return RecordResult(
        id=None,
        success=False,
        created=False,
        errors=tuple(CrmFieldError(code, fields) for code, fields in errors),
        sobject="Invoice__c",
        external_id_field=key_field,
        external_id="INV-1",
    )


def test_a_lock_contention_is_transient_even_beside_a_refusal() -> None:
    failure = result(("REQUIRED_FIELD_MISSING", ("Total__c",)), ("UNABLE_TO_LOCK_ROW", ())).error()
    assert isinstance(failure, TransientError)


def test_a_missing_lookup_target_waits_and_names_the_lookup() -> None:
    failure = result(("INVALID_CROSS_REFERENCE_KEY", ("Order__c",))).error()
    assert isinstance(failure, CrmReferenceMissing)
    assert failure.fields == ("Order__c",)


def test_not_found_is_a_missing_record_only_when_keyed_by_id() -> None:
    assert isinstance(result(("NOT_FOUND", ()), key_field="Id").error(), RecordNotFound)
    assert isinstance(result(("NOT_FOUND", ())).error(), CrmRejected)


def test_an_unknown_code_is_refused_and_named() -> None:
    failure = result(("SOMETHING_NEW", ("Due_Date__c",))).error()
    assert isinstance(failure, CrmRejected)
    assert str(failure) == (
        "Salesforce refused Invoice__c ERP_Invoice_Id__c=INV-1: SOMETHING_NEW on Due_Date__c"
    )


def test_a_successful_record_has_no_error() -> None:
    ok = RecordResult("a0X000000000001AAA", True, True, ())
    assert ok.error() is None
    ok.raise_for_failure()
