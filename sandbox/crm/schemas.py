"""The Avro schemas of the simulated org's change events, as the Pub/Sub API serves them, and
the encoding of one event against one of them: values in Avro types, changed and nulled
fields as the bitmaps Salesforce sends instead of names."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import fastavro

from sandbox.crm.model import Kind, SObjectType

if TYPE_CHECKING:
    from sandbox.crm.cdc import ChangeEvent

NAMESPACE = "com.sforce.eventbus"
HEADER = "ChangeEventHeader"
CHANGE_TYPES = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
)
ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode")
"""The fields of Salesforce's compound Address, in the order its record declares them."""
ADDRESS_PREFIXES = ("Billing", "Shipping")
FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOT_IN_EVENTS = frozenset({"Id", "SystemModstamp"})
"""sObject fields no change event carries: the id travels in the header."""
AVRO_TYPES = {
    Kind.ID: "string",
    Kind.TEXT: "string",
    Kind.NUMBER: "double",
    Kind.BOOLEAN: "boolean",
    # The Pub/Sub API sends dates and datetimes as epoch milliseconds.
    Kind.DATE: "long",
    Kind.DATETIME: "long",
}


@dataclass(frozen=True)
class EventField:
    """One top-level field of a change event after its header: an sObject field, or a
    compound field standing for several (``parts``: sObject field -> nested field)."""

    name: str
    kind: Kind = Kind.TEXT
    parts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ChangeEventSchema:
    """One version of an entity's change event schema; its id is its fingerprint, so a
    schema id names exactly one schema for good."""

    entity: str
    fields: tuple[EventField, ...]
    """Field 1 onwards: field 0 is always the ChangeEventHeader."""
    schema_json: str = field(init=False)
    schema_id: str = field(init=False)
    _parsed: Any = field(init=False, repr=False)
    _positions: dict[str, tuple[int, int | None]] = field(init=False, repr=False)
    """sObject field -> (top-level index, index inside its compound field or None)."""

    def __post_init__(self) -> None:
        document = _document(self.entity, self.fields)
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).digest()[:16]
        positions: dict[str, tuple[int, int | None]] = {}
        for index, event_field in enumerate(self.fields, start=1):
            if not event_field.parts:
                positions[event_field.name] = (index, None)
            for source, part in event_field.parts:
                positions[source] = (index, ADDRESS_PARTS.index(part))
        # A frozen dataclass's derived fields can only be set through object.__setattr__.
        object.__setattr__(self, "schema_json", canonical)
        object.__setattr__(self, "schema_id", base64.urlsafe_b64encode(digest).decode().rstrip("="))
        object.__setattr__(self, "_parsed", fastavro.parse_schema(document))
        object.__setattr__(self, "_positions", positions)

    @classmethod
    def of(cls, sobject: SObjectType) -> ChangeEventSchema:
        """The schema of ``sobject``'s change events: its fields in model order, each address
        group as one compound field where the group's first field would be."""
        compounds = {
            prefix: tuple(
                (prefix + part, part) for part in ADDRESS_PARTS if prefix + part in sobject.fields
            )
            for prefix in ADDRESS_PREFIXES
        }
        grouped = {source: prefix for prefix, parts in compounds.items() for source, _ in parts}
        fields: list[EventField] = []
        for name, spec in sobject.fields.items():
            if name in NOT_IN_EVENTS:
                continue
            prefix = grouped.get(name)
            if prefix is None:
                fields.append(EventField(name, spec.kind))
            elif compounds[prefix][0][0] == name:
                fields.append(EventField(f"{prefix}Address", parts=compounds[prefix]))
        return cls(sobject.name, tuple(fields))

    def with_field(self, name: str) -> ChangeEventSchema:
        """This schema with a new text field right after the header, as an admin adding a
        field can produce: every other field's index (and so every bitmap) moves."""
        taken = {HEADER} | {f.name for f in self.fields} | set(self._positions)
        if name in taken:
            raise ValueError(f"{self.entity} change events already have a field {name}")
        if not FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid field name")
        return ChangeEventSchema(self.entity, (EventField(name), *self.fields))

    def encode(self, event: ChangeEvent) -> bytes:
        """``event`` as the Avro payload of a ProducerEvent: fields it does not carry (every
        unchanged field of an UPDATE) are null."""
        header = {
            "entityName": event.entity,
            "recordIds": list(event.record_ids),
            "changeType": event.change_type,
            "changeOrigin": event.commit.origin,
            "transactionKey": event.commit.transaction_key,
            "sequenceNumber": event.sequence,
            "commitTimestamp": event.commit.timestamp_ms,
            "commitNumber": event.commit.number,
            "commitUser": event.commit.user,
            "nulledFields": self.bitmaps(event.nulled),
            "diffFields": [],
            "changedFields": self.bitmaps(event.changed),
        }
        record: dict[str, Any] = {HEADER: header}
        for event_field in self.fields:
            if not event_field.parts:
                record[event_field.name] = _avro(
                    event.fields.get(event_field.name), event_field.kind
                )
                continue
            carried = [(s, p) for s, p in event_field.parts if s in event.fields]
            record[event_field.name] = (
                {
                    **dict.fromkeys(ADDRESS_PARTS),
                    **{part: event.fields[source] for source, part in carried},
                }
                if carried
                else None
            )
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self._parsed, record)
        return out.getvalue()

    def bitmaps(self, names: Iterable[str]) -> list[str]:
        """The sObject fields ``names`` as Salesforce's bitmap list: first the top-level
        bitmap (bit i for field i), then ``"<i>-0x.."`` for the fields inside compound field
        i, whose own bit stays clear. Empty when no field is named."""
        top = 0
        nested: dict[int, int] = {}
        for name in names:
            index, part = self._positions[name]
            if part is None:
                top |= 1 << index
            else:
                nested[index] = nested.get(index, 0) | 1 << part
        if not top and not nested:
            return []
        return [f"0x{top:X}", *(f"{index}-0x{bits:X}" for index, bits in sorted(nested.items()))]


def _document(entity: str, fields: Iterable[EventField]) -> dict[str, Any]:
    address_defined = False
    avro_fields: list[dict[str, Any]] = [
        {"name": HEADER, "type": _header_type(), "doc": "Data:ComplexValueType"}
    ]
    for event_field in fields:
        if not event_field.parts:
            avro_fields.append(_nullable(event_field.name, AVRO_TYPES[event_field.kind], "Data"))
            continue
        # Avro allows a named type one definition: later uses name it.
        address: Any = "Address" if address_defined else _address_type()
        address_defined = True
        avro_fields.append(_nullable(event_field.name, address, "Compound:Address"))
    return {
        "type": "record",
        "name": f"{entity}ChangeEvent",
        "namespace": NAMESPACE,
        "doc": f"Change event of {entity} records",
        "fields": avro_fields,
    }


def _nullable(name: str, avro_type: Any, doc: str) -> dict[str, Any]:
    kind = avro_type if isinstance(avro_type, str) else avro_type["name"]
    return {"name": name, "type": ["null", avro_type], "default": None, "doc": f"{doc}:{kind}"}


def _address_type() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Address",
        "doc": "Compound field of an address",
        "fields": [_nullable(part, "string", "Data") for part in ADDRESS_PARTS],
    }


def _header_type() -> dict[str, Any]:
    def required(name: str, avro_type: Any, doc: str) -> dict[str, Any]:
        return {"name": name, "type": avro_type, "doc": doc}

    def strings(name: str, doc: str) -> dict[str, Any]:
        return required(name, {"type": "array", "items": "string"}, doc)

    return {
        "type": "record",
        "name": HEADER,
        "doc": "What changed, in which transaction, by whom",
        "fields": [
            required("entityName", "string", "The sObject of the changed records"),
            strings("recordIds", "The changed records: several when one change was merged"),
            required(
                "changeType",
                {"type": "enum", "name": "ChangeType", "symbols": list(CHANGE_TYPES)},
                "What happened to the records",
            ),
            required("changeOrigin", "string", "The API and client that made the change"),
            required("transactionKey", "string", "The transaction, shared by its events"),
            required("sequenceNumber", "int", "The change's place in its transaction, from 1"),
            required("commitTimestamp", "long", "When the transaction committed, epoch ms"),
            required("commitNumber", "long", "The transaction's commit number"),
            required("commitUser", "string", "The user who made the change"),
            strings("nulledFields", "Bitmaps of the fields set to null"),
            strings("diffFields", "Bitmaps of the text fields sent as diffs"),
            strings("changedFields", "Bitmaps of the changed fields"),
        ],
    }


def _avro(value: Any, kind: Kind) -> Any:
    """A stored field value as its Avro type carries it."""
    if value is None:
        return None
    match kind:
        case Kind.NUMBER:
            return float(value)
        case Kind.DATE:
            midnight = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
            return _epoch_ms(midnight)
        case Kind.DATETIME:
            return _epoch_ms(datetime.fromisoformat(value))
        case _:
            return value


def _epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)
