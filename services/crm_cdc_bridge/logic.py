"""The CDC bridge's decisions, free of I/O: a decoded change event as the records the CDC
topics carry (bitmaps expanded into field names, one record per record id), the gap record
that stands for events no longer to be had, and which positions may be checkpointed."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from revsync.connectors.pubsub import EventSchema
from revsync.errors import ErrorClass, RevsyncError

HEADER = "ChangeEventHeader"
BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
EMPTY_RECORD_ID = "000000000000000AAA"
"""What a record-less event (an overflow, a gap record) is keyed by: Salesforce's empty id."""
GAP_NAMESPACE = uuid.UUID("5b0e4d0a-31c6-4f5e-9a57-0c1d4b8e2f61")
STANDARD_CHANNEL = re.compile(r"^/data/(?P<entity>[A-Za-z0-9_]+?)ChangeEvent$")
_TOP_LEVEL = re.compile(r"^0x(?P<bits>[0-9A-Fa-f]+)$")
_NESTED = re.compile(r"^(?P<parent>[0-9]+)-0x(?P<bits>[0-9A-Fa-f]+)$")


class UndecodableChangeEvent(RevsyncError):
    """A change event that cannot be read against its own schema (a payload that is not
    Avro, a bitmap naming fields the schema does not have). It is not dropped: it is passed
    on as it is, so the consumer's dead-letter topic shows it to an operator."""

    error_class = ErrorClass.DESERIALIZATION


class UnroutedEntity(RevsyncError):
    """A change event of an sObject that no CDC topic of the catalog carries: a channel was
    configured without a topic for its entities. The subscription stops rather than skip it."""

    error_class = ErrorClass.UNKNOWN


def channel_entity(channel: str) -> str | None:
    """The sObject of a standard change event channel (``/data/OrderChangeEvent``); None
    for a custom channel (``/data/Revsync__chn``), whose events name their own."""
    match = STANDARD_CHANNEL.match(channel)
    return match["entity"] if match else None


def field_names(bitmaps: Sequence[str], schema: EventSchema) -> list[str]:
    """The field names a bitmap list says: the first element's bit i is the schema's field i
    (lowest bit first); ``"<i>-0x.."`` is compound field i's own bitmap, naming its fields
    ``Parent.Child``."""
    names: list[str] = []
    for element in bitmaps:
        top = _TOP_LEVEL.match(element)
        if top:
            names += _set_bits(int(top["bits"], 16), schema.fields, element)
            continue
        nested = _NESTED.match(element)
        if not nested:
            raise UndecodableChangeEvent(f"bitmap {element!r} is neither 0x<hex> nor <i>-0x<hex>")
        parent = int(nested["parent"])
        children = schema.nested.get(parent)
        if children is None:
            raise UndecodableChangeEvent(
                f"bitmap {element!r} names field {parent}, which is no compound field of "
                f"schema {schema.schema_id}"
            )
        prefix = schema.fields[parent]
        names += [
            f"{prefix}.{child}" for child in _set_bits(int(nested["bits"], 16), children, element)
        ]
    return names


def _set_bits(bits: int, fields: Sequence[str], element: str) -> list[str]:
    if bits >> len(fields):
        raise UndecodableChangeEvent(
            f"bitmap {element!r} sets a bit past the schema's {len(fields)} fields"
        )
    return [name for index, name in enumerate(fields) if bits >> index & 1]


@dataclass(frozen=True)
class ChangeRecord:
    """One record for a CDC topic: its entity (which picks the topic), key and JSON value."""

    entity: str
    key: str
    value: bytes


def change_records(
    record: Mapping[str, Any], schema: EventSchema, replay_id: bytes
) -> list[ChangeRecord]:
    """A decoded change event as the records the CDC topics carry, in the shape order_sync
    reads (``{"schema", "replayId", "payload": {ChangeEventHeader, fields}}``): the bitmaps
    as field names, the fields the change carries, and one record per record id, so that a
    merged change of many records holds back none of them and each record's changes stay
    in its own partition, in order."""
    header = record.get(HEADER)
    if not isinstance(header, Mapping):
        raise UndecodableChangeEvent(f"schema {schema.schema_id} carries no {HEADER}")
    names = {name: field_names(header.get(name) or (), schema) for name in BITMAP_FIELDS}
    change_type = str(header.get("changeType", ""))
    fields = _carried_fields(record, change_type, names["changedFields"] + names["nulledFields"])
    entity = str(header.get("entityName") or "")
    if not entity:
        raise UndecodableChangeEvent("the ChangeEventHeader names no entity")
    record_ids = [str(record_id) for record_id in header.get("recordIds") or ()] or [
        EMPTY_RECORD_ID
    ]
    return [
        ChangeRecord(
            entity,
            record_id,
            encode_json(
                {
                    "schema": schema.schema_id,
                    "replayId": replay_text(replay_id),
                    "payload": {
                        **fields,
                        HEADER: {**header, **names, "recordIds": [record_id]},
                    },
                }
            ),
        )
        for record_id in record_ids
    ]


def _carried_fields(
    record: Mapping[str, Any], change_type: str, named: Sequence[str]
) -> dict[str, Any]:
    """What the change says of the record's fields. The Pub/Sub API sends every field, null
    where unchanged; a created (or undeleted) record's non-null fields are its values, an
    update's are the changed and nulled ones, and deletes and gaps carry none."""
    if change_type in ("CREATE", "UNDELETE"):
        return {
            name: _without_nulls(value)
            for name, value in record.items()
            if name != HEADER and value is not None
        }
    if change_type != "UPDATE":
        return {}
    fields: dict[str, Any] = {}
    for name in named:
        parent, _, child = name.partition(".")
        if not child:
            fields[name] = record.get(name)
            continue
        compound = record.get(parent)
        fields.setdefault(parent, {})[child] = (
            compound.get(child) if isinstance(compound, Mapping) else None
        )
    return fields


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {name: item for name, item in value.items() if item is not None}
    return value


def undecodable_record(
    entity: str, schema_id: str, replay_id: bytes, payload: bytes, reason: str
) -> ChangeRecord:
    """An event that could not be decoded, as a record with no ChangeEventHeader: the
    consumer dead-letters it (PayloadInvalid), where the tooling shows the reason, the
    schema id and the replay id, and the raw payload is kept."""
    return ChangeRecord(
        entity,
        EMPTY_RECORD_ID,
        encode_json(
            {
                "schema": schema_id,
                "replayId": replay_text(replay_id),
                "undecodable": reason,
                "payloadBase64": base64.b64encode(payload).decode(),
            }
        ),
    )


def gap_record(entity: str, channel: str, since: datetime, reason: str) -> ChangeRecord:
    """A GAP_OVERFLOW change of ``entity`` committed at ``since``: the consumer reconciles
    every record changed since then, as it does when Salesforce overflows a transaction.
    Its identity derives from channel, time and reason, so writing it twice is one event."""
    since_ms = int(since.astimezone(UTC).timestamp() * 1000)
    identity = uuid.uuid5(GAP_NAMESPACE, f"{channel}/{entity}/{since_ms}/{reason}")
    header = {
        "entityName": entity,
        "recordIds": [EMPTY_RECORD_ID],
        "changeType": "GAP_OVERFLOW",
        "changeOrigin": f"com/revsync/crm-cdc-bridge;reason={reason}",
        "transactionKey": f"revsync-gap-{identity}",
        "sequenceNumber": 0,
        "commitTimestamp": since_ms,
        "commitNumber": 0,
        "commitUser": "",
        "changedFields": [],
        "nulledFields": [],
        "diffFields": [],
    }
    return ChangeRecord(entity, EMPTY_RECORD_ID, encode_json({"payload": {HEADER: header}}))


def encode_json(document: Mapping[str, Any]) -> bytes:
    """A record's JSON. Avro decodes to JSON's own types (Salesforce's numbers are doubles),
    so the standard encoder suffices; what it refuses (NaN, bytes) is no change event."""
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


def replay_text(replay_id: bytes) -> str:
    """A replay id as the records carry it: opaque, so its bytes in base64, never a number."""
    return base64.b64encode(replay_id).decode()


@dataclass(frozen=True)
class Position:
    """A place in a channel to resume after: a replay id and when its event committed."""

    replay_id: bytes
    committed_at: datetime


@dataclass
class _Received:
    position: Position
    outstanding: int
    failed: bool = False


@dataclass
class Positions:
    """Which received events Kafka has every record of, in the order they came: the replay
    id that may be checkpointed is the last of an unbroken run of acknowledged events from
    the oldest, so no checkpoint ever passes an event whose records are not all in Kafka.
    It starts at the position the stream resumed after, if any."""

    _acked: Position | None = None
    _pending: deque[_Received] = field(default_factory=deque)
    unacked_events: int = 0

    def received(self, position: Position, records: int) -> _Received:
        """An event whose ``records`` records are on their way; a handle for their outcomes."""
        entry = _Received(position, records)
        self._pending.append(entry)
        self.unacked_events += 1
        self._settle()
        return entry

    def delivered(self, entry: _Received, ok: bool) -> None:
        """One record of ``entry`` was acknowledged (or refused) by Kafka."""
        if not ok:
            entry.failed = True
        entry.outstanding -= 1
        self._settle()

    def idle_at(self, replay_id: bytes, at: datetime, *, waiting_for_more: bool) -> None:
        """A keepalive received ``at``: the channel's latest event is ``replay_id``. Only when
        the server had requested events to send and sent none (``waiting_for_more``) is that
        latest event one this bridge has; then, with nothing pending, it is where a restart
        resumes. A keepalive while nothing was requested says nothing of events not fetched.

        Its commit time is not told: the last known event's stands for it (older, so the
        retention check and a gap's reconciliation err on the safe side), else ``at``."""
        acked = self._acked
        if not waiting_for_more or self._pending or not replay_id:
            return
        if acked is None or acked.replay_id != replay_id:
            self._acked = Position(replay_id, acked.committed_at if acked else at)

    @property
    def failed(self) -> bool:
        return any(entry.failed for entry in self._pending)

    @property
    def acked(self) -> Position | None:
        """The furthest position with everything up to it in Kafka."""
        return self._acked

    def _settle(self) -> None:
        while self._pending and self._pending[0].outstanding <= 0 and not self._pending[0].failed:
            self._acked = self._pending.popleft().position
            self.unacked_events -= 1
