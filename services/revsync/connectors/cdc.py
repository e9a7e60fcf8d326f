"""Salesforce Change Data Capture events as a CDC bridge writes them to Kafka (JSON).

A record's value is the change event's payload, a ``ChangeEventHeader`` beside the changed
fields, either bare or wrapped as the Pub/Sub and Streaming APIs deliver it (``payload`` plus
``replayId`` and ``schema``). Decoding gives each change an envelope, so the runtime's inbox
recognises a change delivered twice: Salesforce identifies a change by its transaction and
its sequence number within that transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from revsync.contracts.events import Envelope, SourceSystem
from revsync.errors import CorruptPayload, PayloadInvalid

CHANGE_EVENT_NAMESPACE = uuid.UUID("0f3d5c8a-7b21-4e69-b0d4-6a1c2e9f8b37")


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
    sequenceNumber: int = Field(ge=0)  # noqa: N815
    commitTimestamp: int = Field(ge=0)  # noqa: N815
    commitNumber: int | None = None  # noqa: N815
    commitUser: str = ""  # noqa: N815
    changedFields: list[str] = Field(default_factory=list)  # noqa: N815
    nulledFields: list[str] = Field(default_factory=list)  # noqa: N815

    @property
    def committed_at(self) -> datetime:
        return datetime.fromtimestamp(self.commitTimestamp / 1000, UTC)

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
    replay_id: int | None = None
    envelope: Envelope

    @property
    def entity(self) -> str:
        return self.header.entityName


def decode_change(topic: str, data: bytes | None) -> RecordChange:
    """Bytes to a change event, or the typed error that says what is wrong with them."""
    if not data:
        raise CorruptPayload(topic, "empty value: not a change event")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptPayload(topic, f"not JSON: {error}") from None
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
        first = error.errors()[0]
        where = ".".join(["ChangeEventHeader", *(str(part) for part in first["loc"])])
        raise PayloadInvalid(topic, where, first["msg"]) from None
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
        replay_id=replay_id if isinstance(replay_id, int) else None,
        envelope=envelope,
    )
