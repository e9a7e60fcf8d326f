"""The simulated org's data model: the sObjects revsync uses, their fields, and Salesforce's
record ids and field rules."""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

ID_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
MAX_TEXT_LENGTH = 255
SYSTEM_FIELDS = ("CreatedDate", "LastModifiedDate", "SystemModstamp")


class Kind(StrEnum):
    """How a field's value is written and compared."""

    ID = "id"
    TEXT = "text"
    NUMBER = "number"
    """Stored as Decimal, exactly as sent."""
    BOOLEAN = "boolean"
    DATE = "date"
    """``YYYY-MM-DD``."""
    DATETIME = "datetime"
    """Stored as Salesforce REST writes it: ``2025-12-01T10:00:00.000+0000``."""


@dataclass(frozen=True)
class Field:
    kind: Kind = Kind.TEXT
    reference: str | None = None
    """The sObject a lookup (Kind.ID) points at."""
    writable: bool = True
    required: bool = False
    choices: frozenset[str] = frozenset()
    """A restricted picklist's values."""


@dataclass(frozen=True)
class SObjectType:
    name: str
    prefix: str
    """The three-character key prefix every id of this sObject starts with."""
    fields: dict[str, Field]
    external_ids: frozenset[str] = frozenset()
    """Fields an upsert may key on (besides ``Id``); unique per record."""
    non_negative: frozenset[str] = frozenset()
    """Fields a validation rule keeps at zero or above."""

    def check_fields(self, names: Iterable[str]) -> None:
        """INVALID_FIELD for the first name this sObject has no field of."""
        for name in names:
            if name not in self.fields:
                reason = f"No such column '{name}' on sobject of type {self.name}"
                raise FieldError("INVALID_FIELD", reason, [name])


@dataclass
class FieldError(Exception):
    """A record-level error, shaped as Salesforce reports it."""

    status_code: str
    message: str
    fields: list[str] = field(default_factory=list)

    def rest(self) -> dict[str, Any]:
        """As a single-record REST answer writes it."""
        return {"message": self.message, "errorCode": self.status_code, "fields": self.fields}

    def collection_result(self) -> dict[str, Any]:
        """As an sObject Collections result for a failed record writes it."""
        error = {"statusCode": self.status_code, "message": self.message, "fields": self.fields}
        return {"success": False, "errors": [error]}


def _system() -> dict[str, Field]:
    return {name: Field(Kind.DATETIME, writable=False) for name in SYSTEM_FIELDS}


def _text(*names: str) -> dict[str, Field]:
    return {name: Field() for name in names}


def _numbers(*names: str) -> dict[str, Field]:
    return {name: Field(Kind.NUMBER) for name in names}


def _picklist(*values: str) -> Field:
    return Field(choices=frozenset(values))


READ_ONLY_ID = Field(Kind.ID, writable=False)

SOBJECTS: dict[str, SObjectType] = {
    sobject.name: sobject
    for sobject in (
        SObjectType(
            "Account",
            "001",
            {
                "Id": READ_ONLY_ID,
                "Name": Field(required=True),
                **_text(
                    "ERP_Customer_Id__c",
                    "Phone",
                    "Tax_Id__c",
                    "DUNS__c",
                    "BillingStreet",
                    "BillingCity",
                    "BillingState",
                    "BillingPostalCode",
                    "BillingCountryCode",
                    "CurrencyIsoCode",
                    "Legal_Entity__c",
                ),
                "Sync_To_ERP__c": Field(Kind.BOOLEAN),
                # What the ERP owns of its customer, written back by revsync.
                "ERP_Customer_Number__c": Field(),
                "Credit_Limit__c": Field(Kind.NUMBER),
                "ERP_Customer_Status__c": _picklist("Active", "Credit Hold", "Blocked", "Other"),
                **_text("Payment_Terms__c", "ERP_Blocks__c"),
                **_system(),
            },
            external_ids=frozenset({"ERP_Customer_Id__c"}),
        ),
        SObjectType(
            "Product2",
            "01t",
            {
                "Id": READ_ONLY_ID,
                "ProductCode": Field(),
                "Name": Field(required=True),
                "Family": Field(),
                "IsActive": Field(Kind.BOOLEAN),
                **_system(),
            },
        ),
        SObjectType(
            "Pricebook2",
            "01s",
            {
                "Id": READ_ONLY_ID,
                "Name": Field(required=True),
                "IsActive": Field(Kind.BOOLEAN),
                **_system(),
            },
        ),
        SObjectType(
            "Order",
            "801",
            {
                "Id": READ_ONLY_ID,
                "OrderNumber": Field(writable=False),
                "AccountId": Field(Kind.ID, "Account", required=True),
                "Pricebook2Id": Field(Kind.ID, "Pricebook2"),
                "CurrencyIsoCode": Field(),
                "Status": Field(
                    required=True, choices=frozenset({"Draft", "Activated", "Cancelled"})
                ),
                "EffectiveDate": Field(Kind.DATE, required=True),
                "ActivatedDate": Field(Kind.DATETIME),
                **_text("PoNumber", "Legal_Entity__c", "Region__c"),
                "Requested_Delivery_Date__c": Field(Kind.DATE),
                **_text(
                    "BillingStreet",
                    "BillingCity",
                    "BillingState",
                    "BillingPostalCode",
                    "BillingCountryCode",
                    "ShippingStreet",
                    "ShippingCity",
                    "ShippingState",
                    "ShippingPostalCode",
                    "ShippingCountryCode",
                    "BillingEmailAddress",
                    "BillingPhoneNumber",
                ),
                "TotalAmount": Field(Kind.NUMBER, writable=False),
                **_text("Cancel_Reason__c", "ERP_Order_Id__c", "ERP_Order_Number__c"),
                "ERP_Status__c": _picklist("Accepted", "Rejected", "Cancelled"),
                "ERP_Message__c": Field(),
                "Billing_Status__c": _picklist("Invoiced", "Partially Paid", "Paid"),
                "Delivery_Status__c": _picklist("Partially Shipped", "Shipped"),
                **_system(),
            },
        ),
        SObjectType(
            "OrderItem",
            "802",
            {
                "Id": READ_ONLY_ID,
                "OrderId": Field(Kind.ID, "Order", required=True),
                "OrderItemNumber": Field(writable=False),
                "Product2Id": Field(Kind.ID, "Product2"),
                **_text("SKU__c", "Product_Name__c", "Product_Line__c"),
                "Quantity": Field(Kind.NUMBER, required=True),
                "UnitPrice": Field(Kind.NUMBER, required=True),
                **_numbers("Discount__c", "Tax__c"),
                "TotalPrice": Field(Kind.NUMBER, writable=False),
                "Unit_Of_Measure__c": Field(),
                **_system(),
            },
        ),
        SObjectType(
            "Invoice__c",
            "a0X",
            {
                "Id": READ_ONLY_ID,
                "Name": Field(required=True),
                "ERP_Invoice_Id__c": Field(),
                "Order__c": Field(Kind.ID, "Order", required=True),
                "Account__c": Field(Kind.ID, "Account"),
                "CurrencyIsoCode": Field(),
                **_numbers("Subtotal__c", "Tax__c"),
                "Total__c": Field(Kind.NUMBER, required=True),
                "Amount_Due__c": Field(Kind.NUMBER),
                "Posting_Date__c": Field(Kind.DATE),
                "Due_Date__c": Field(Kind.DATE),
                "Payment_Terms__c": Field(),
                "Status__c": _picklist("Posted", "Partially Paid", "Paid"),
                **_system(),
            },
            external_ids=frozenset({"ERP_Invoice_Id__c"}),
            non_negative=frozenset({"Total__c", "Amount_Due__c"}),
        ),
        SObjectType(
            "Shipment__c",
            "a0Y",
            {
                "Id": READ_ONLY_ID,
                "Name": Field(),
                "ERP_Shipment_Id__c": Field(),
                "Order__c": Field(Kind.ID, "Order", required=True),
                "Carrier__c": Field(),
                "Tracking_Number__c": Field(required=True),
                "Tracking_Url__c": Field(),
                "Shipped_At__c": Field(Kind.DATETIME),
                **_text("Completeness__c", "Warehouse__c"),
                **_system(),
            },
            external_ids=frozenset({"ERP_Shipment_Id__c"}),
        ),
    )
}
PREFIXES = {sobject.prefix: sobject.name for sobject in SOBJECTS.values()}


def sobject_type(name: str) -> SObjectType:
    """The sObject called ``name``, or NOT_FOUND as Salesforce answers for an unknown one."""
    try:
        return SOBJECTS[name]
    except KeyError:
        raise FieldError("NOT_FOUND", "The requested resource does not exist") from None


def record_id(prefix: str, org: str, number: int) -> str:
    """The 18-character id of the ``number``-th record with this key prefix in org ``org``
    (five characters, as a real id carries its pod and instance), so two simulated orgs, or
    two runs, never hand out the same id."""
    return full_id(f"{prefix}{org}{number:07d}")


def new_org() -> str:
    """A random five-character org part for :func:`record_id`."""
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(5))


def full_id(short: str) -> str:
    """A 15-character id with its case-safe three-character suffix."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, char in enumerate(short[start : start + 5]) if char.isupper())
        suffix += ID_SUFFIX_ALPHABET[bits]
    return short + suffix


def normalised_id(value: str) -> str | None:
    """``value`` as an 18-character id, or None when it is not an id at all."""
    if not value.isalnum() or not value.isascii():
        return None
    if len(value) == 15:
        return full_id(value)
    return value if len(value) == 18 else None


def rest_datetime(moment: datetime) -> str:
    """A datetime as Salesforce REST writes it."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "+0000"


def now() -> str:
    return rest_datetime(datetime.now(UTC))


def coerce(sobject: SObjectType, name: str, value: Any) -> Any:
    """A field value as the org stores it; raises FieldError when it cannot be one."""
    sobject.check_fields([name])
    spec = sobject.fields[name]
    if value is None:
        return None
    wrong_type = FieldError(
        "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}", [name]
    )
    match spec.kind:
        case Kind.NUMBER:
            if isinstance(value, bool) or not isinstance(value, int | Decimal):
                raise wrong_type
            return Decimal(value)
        case Kind.BOOLEAN:
            if not isinstance(value, bool):
                raise wrong_type
            return value
        case Kind.DATE:
            try:
                return date.fromisoformat(value).isoformat()
            except (TypeError, ValueError):
                raise wrong_type from None
        case Kind.DATETIME:
            try:
                moment = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise wrong_type from None
            return rest_datetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        case Kind.ID:
            if not isinstance(value, str):
                raise wrong_type
            normalised = normalised_id(value)
            if normalised is None:
                raise FieldError(
                    "MALFORMED_ID", f"{name}: id value of incorrect type: {value}", [name]
                )
            return normalised
        case Kind.TEXT:
            if not isinstance(value, str):
                raise wrong_type
            if len(value) > MAX_TEXT_LENGTH:
                raise FieldError(
                    "STRING_TOO_LONG",
                    f"{name}: data value too large: {value[:40]}... (max length={MAX_TEXT_LENGTH})",
                    [name],
                )
            if spec.choices and value not in spec.choices:
                raise FieldError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    [name],
                )
            return value


@dataclass(frozen=True)
class Trigger:
    """An Apex trigger refusing API writes to the records of ``sobject`` whose ``field`` is
    ``equals``, its message ``message`` filled from the record's fields (``{Field}``), as an
    ``addError`` concatenated from them would be: a Salesforce error quoting the record back,
    customer data and all."""

    sobject: str
    field: str
    equals: Any
    message: str

    @classmethod
    def parse(cls, document: Any) -> Trigger:
        """A trigger as the control API takes it; FieldError if it names no sObject or field."""
        if not isinstance(document, Mapping) or not isinstance(document.get("message"), str):
            raise FieldError("JSON_PARSER_ERROR", "a trigger is {sobject, field, equals, message}")
        sobject = sobject_type(str(document.get("sobject")))
        message = document["message"]
        quoted = [name for _, name, _, _ in string.Formatter().parse(message) if name]
        sobject.check_fields([str(document.get("field")), *quoted])
        return cls(sobject.name, str(document["field"]), document.get("equals"), message)

    def fire(self, sobject: SObjectType, record: Mapping[str, Any]) -> None:
        """FIELD_CUSTOM_VALIDATION_EXCEPTION if ``record`` (as the write would leave it) is
        one this trigger refuses."""
        if sobject.name == self.sobject and record.get(self.field) == self.equals:
            values = {name: "" if record.get(name) is None else record[name] for name in record}
            raise FieldError("FIELD_CUSTOM_VALIDATION_EXCEPTION", self.message.format_map(values))


def check_rules(sobject: SObjectType, record: Mapping[str, Any]) -> None:
    """The record-level rules: required fields, then validation rules."""
    missing = [
        name for name, spec in sobject.fields.items() if spec.required and record.get(name) is None
    ]
    if missing:
        raise FieldError(
            "REQUIRED_FIELD_MISSING",
            f"Required fields are missing: [{', '.join(missing)}]",
            missing,
        )
    for name in sorted(sobject.non_negative):
        value = record.get(name)
        if value is not None and value < 0:
            raise FieldError(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION", f"{name} must not be negative", [name]
            )
