"""Salesforce Change Data Capture events as the CDC bridge writes them to Kafka (JSON).

A record's value is the change event's payload, a ``ChangeEventHeader`` beside the changed
fields, either bare or wrapped as the Pub/Sub and Streaming APIs deliver it (``payload`` plus
``replayId`` and ``schema``). Decoding gives each change an envelope, so the runtime's inbox
recognises a change delivered twice: Salesforce identifies a change by its transaction and
its sequence number within that transaction.

Also the strict JSON reader behind every Salesforce document revsync reads (``read_json``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from revsync.contracts.events import Envelope, SourceSystem
from revsync.errors import CorruptPayload, MalformedJson, PayloadInvalid, invalid_fields

CHANGE_EVENT_NAMESPACE = uuid.UUID("0f3d5c8a-7b21-4e69-b0d4-6a1c2e9f8b37")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MILLISECOND = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last millisecond a datetime holds."""
LONG_MAX = 2**63 - 1
"""Salesforce's sequence and commit numbers are Java longs."""
MAX_JSON_DEPTH = 64
"""Deepest nesting read. Salesforce nests a few levels; the runtime and the dead-letter tools
walk documents recursively, so anything near Python's recursion limit is refused here."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def read_json(raw: bytes | str, *, parse_float: Callable[[str], Any] = float) -> Any:
    """A JSON document, or MalformedJson: for bytes that are not UTF-8, -16 or -32, NaN or
    Infinity, a number past Python's int digit limit or Decimal's exponent range, nesting
    deeper than MAX_JSON_DEPTH, or a string holding a lone surrogate (not Unicode text)."""
    try:
        if isinstance(raw, bytes):
            text = raw.decode(json.detect_encoding(raw))
        else:
            text = raw
            if not text.isascii():
                text.encode()  # text may hold a lone surrogate; strictly decoded bytes cannot
        document = json.loads(text, parse_float=parse_float, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedJson(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    # ValueError: not Unicode, not JSON, past the digit limit; ArithmeticError: Decimal's range.
    except (ValueError, ArithmeticError) as error:
        raise MalformedJson(f"not JSON: {error}") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(document):
        raise MalformedJson(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(document):
        raise MalformedJson("a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text")
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _too_deep(document: Any) -> bool:
    """Whether ``document`` nests more than MAX_JSON_DEPTH objects and arrays, walked a level
    at a time (no recursion) and no further than that."""
    level = [document] if isinstance(document, dict | list) else []
    for _ in range(MAX_JSON_DEPTH):
        if not level:
            return False
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return bool(level)


def _holds_lone_surrogate(document: Any) -> bool:
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending += value.keys()
            pending += value.values()
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return True
    return False


RETRY_PREFIX = "revsync-retry:"
"""How the transaction key of a change event revsync writes itself starts: a person asked for
its records to be read from the CRM again and run as a new attempt. (Salesforce's transaction
keys are its own ids and never start so.)"""


class ChangeType(StrEnum):
    """What happened to the records; the GAP_ types say Salesforce could not send the fields."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    UNDELETE = "UNDELETE"
    GAP_CREATE = "GAP_CREATE"
    GAP_UPDATE = "GAP_UPDATE"
    GAP_DELETE = "GAP_DELETE"
    GAP_UNDELETE = "GAP_UNDELETE"
    GAP_OVERFLOW = "GAP_OVERFLOW"
    """A transaction changed more records than Salesforce sends events for."""

    @property
    def is_gap(self) -> bool:
        return self.value.startswith("GAP_")


class ChangeEventHeader(BaseModel):
    """The header Salesforce puts on every change event (field names as Salesforce spells them)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    entityName: str = Field(min_length=1)  # noqa: N815 - Salesforce's names
    recordIds: list[str] = Field(default_factory=list)  # noqa: N815
    changeType: ChangeType  # noqa: N815
    changeOrigin: str = ""  # noqa: N815
    transactionKey: str = Field(min_length=1)  # noqa: N815
    sequenceNumber: int = Field(ge=0, le=LONG_MAX)  # noqa: N815
    commitTimestamp: int = Field(ge=0, le=LAST_MILLISECOND)  # noqa: N815
    commitNumber: int | None = Field(default=None, le=LONG_MAX)  # noqa: N815
    commitUser: str = ""  # noqa: N815
    changedFields: list[str] = Field(default_factory=list)  # noqa: N815
    nulledFields: list[str] = Field(default_factory=list)  # noqa: N815

    @property
    def committed_at(self) -> datetime:
        # Exact: a float of seconds rounds the last millisecond of 9999 into the year 10000.
        return EPOCH + timedelta(milliseconds=self.commitTimestamp)

    @property
    def retry(self) -> str | None:
        """For a change event revsync wrote itself to have its records read again (a person's
        retry, :data:`RETRY_PREFIX`), the attempt; None for Salesforce's own."""
        return self.transactionKey if self.transactionKey.startswith(RETRY_PREFIX) else None

    @property
    def origin_client(self) -> str | None:
        """The ``client`` the change's API call named in ``Sforce-Call-Options``, if any."""
        for part in self.changeOrigin.split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip() == "client":
                return value.strip() or None
        return None


class RecordChange(BaseModel):
    """One decoded change event: the header, the fields it carries, and its envelope."""

    model_config = ConfigDict(frozen=True)

    header: ChangeEventHeader
    fields: dict[str, Any]
    replay_id: str | int | None = None
    """Where the event stands in its channel: the Pub/Sub API's opaque bytes in base64, as
    the CDC bridge writes them (a number from the Streaming API)."""
    envelope: Envelope

    @property
    def entity(self) -> str:
        return self.header.entityName


@dataclass(frozen=True)
class Integration:
    """Who revsync is in the CRM, to recognise the changes it made itself (and not echo
    them back)."""

    client_name: str
    """What revsync sends as ``Sforce-Call-Options: client=``; it shows in changeOrigin."""
    user_id: str | None = None
    """The integration user; its commits are revsync's too."""

    def made(self, change: RecordChange) -> bool:
        header = change.header
        by_user = self.user_id is not None and header.commitUser == self.user_id
        return header.origin_client == self.client_name or by_user


def decode_change(topic: str, data: bytes | None) -> RecordChange:
    """Bytes to a change event, or the typed error that says what is wrong with them."""
    if not data:
        raise CorruptPayload(topic, "empty value: not a change event")
    try:
        document = read_json(data)
    except MalformedJson as error:
        raise CorruptPayload(topic, str(error)) from None
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise CorruptPayload(topic, f"a change event is a JSON object, not {kind}")
    replay_id = document.get("replayId")
    payload = document.get("payload", document)
    if not isinstance(payload, dict) or "ChangeEventHeader" not in payload:
        raise PayloadInvalid(topic, "ChangeEventHeader", "missing: not a change event")
    fields = {name: value for name, value in payload.items() if name != "ChangeEventHeader"}
    try:
        header = ChangeEventHeader.model_validate(payload["ChangeEventHeader"])
    except ValidationError as error:
        where, why = invalid_fields(error)[0]
        raise PayloadInvalid(
            topic, ".".join(filter(None, ["ChangeEventHeader", where])), why
        ) from None
    identity = f"{header.transactionKey}/{header.sequenceNumber}/{','.join(header.recordIds)}"
    envelope = Envelope(
        event_id=uuid.uuid5(CHANGE_EVENT_NAMESPACE, identity),
        event_type=f"com.salesforce.cdc.{header.entityName}ChangeEvent",
        occurred_at=header.committed_at,
        source_system=SourceSystem.CRM,
        correlation_id=header.transactionKey,
        schema_version=1,
    )
    return RecordChange(
        header=header,
        fields=fields,
        replay_id=replay_id if isinstance(replay_id, str | int) else None,
        envelope=envelope,
    )


def narrowed(change: RecordChange, record_id: str, *, refetch: bool = False) -> bytes:
    """``change`` as a change event of ``record_id`` alone: what a record of a merged change
    (one event naming several records) becomes when it fails on its own. It decodes to an
    envelope of its own (the record ids are part of a change's identity). With ``refetch``
    it is a gap event, whose fields the record itself has to say (for a record found by a
    reconciliation, which has no fields of its own)."""
    header = change.header.model_dump(mode="json") | {"recordIds": [record_id]}
    fields: dict[str, Any] = change.fields
    if refetch:
        header["changeType"] = ChangeType.GAP_UPDATE.value
        header["changedFields"] = []
        fields = {}
    document: dict[str, Any] = {"payload": {**fields, "ChangeEventHeader": header}}
    if change.replay_id is not None:
        document["replayId"] = change.replay_id
    return json.dumps(document, default=str).encode()
