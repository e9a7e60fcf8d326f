"""Salesforce change events as the CDC bridge writes them: bare or wrapped payloads become a
RecordChange with a deterministic envelope, and every malformed value a typed decode error."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from revsync.connectors.cdc import ChangeType, decode_change
from revsync.contracts.events import SourceSystem
from revsync.errors import CorruptPayload, DecodeError, ErrorClass, PayloadInvalid, classify

TOPIC = "revsync.order.crm-change.v1"
ORDER_ID = "801AB00000Ord01AAA"
COMMITTED_MS = 1_764_583_200_123
"""2025-12-01T10:00:00.123Z"""


def header(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "entityName": "Order",
        "recordIds": [ORDER_ID],
        "changeType": "UPDATE",
        "changeOrigin": "com/salesforce/api/rest/62.0;client=dataloader",
        "transactionKey": "0002c3f4-1d2e-9a8b-7c6d-5e4f3a2b1c0d",
        "sequenceNumber": 2,
        "commitTimestamp": COMMITTED_MS,
        "commitNumber": 1_000_042,
        "commitUser": "005000000000002AAA",
        "changedFields": ["Status", "ActivatedDate"],
        "nulledFields": [],
        "diffFields": [],
    }
    return {**fields, **overrides}


def payload(**header_overrides: Any) -> dict[str, Any]:
    return {
        "ChangeEventHeader": header(**header_overrides),
        "Status": "Activated",
        "ActivatedDate": "2025-12-01T10:00:00.000Z",
    }


def wrapped(replay_id: Any = 4711, **header_overrides: Any) -> bytes:
    document = {"schema": "abc123", "replayId": replay_id, "payload": payload(**header_overrides)}
    return json.dumps(document).encode()


def test_a_bare_payload_decodes_to_its_header_and_fields() -> None:
    change = decode_change(TOPIC, json.dumps(payload()).encode())

    assert change.entity == "Order"
    assert change.header.changeType is ChangeType.UPDATE
    assert change.header.recordIds == [ORDER_ID]
    assert change.header.sequenceNumber == 2
    assert change.header.commitUser == "005000000000002AAA"
    assert change.header.changedFields == ["Status", "ActivatedDate"]
    assert change.header.committed_at == datetime(2025, 12, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert change.fields == {"Status": "Activated", "ActivatedDate": "2025-12-01T10:00:00.000Z"}
    assert change.replay_id is None


def test_a_wrapped_payload_keeps_its_replay_id_and_reads_the_same() -> None:
    bare = decode_change(TOPIC, json.dumps(payload()).encode())
    change = decode_change(TOPIC, wrapped(replay_id=4711))

    assert change.replay_id == 4711
    assert change.header == bare.header
    assert change.fields == bare.fields
    assert "schema" not in change.fields
    assert "replayId" not in change.fields


def test_a_pub_sub_replay_id_is_kept_as_the_bridge_wrote_it() -> None:
    # The Pub/Sub API's replay ids are opaque bytes; the bridge writes them in base64.
    assert decode_change(TOPIC, wrapped(replay_id="AAAAAAAAEmc=")).replay_id == "AAAAAAAAEmc="


def test_a_replay_id_that_is_neither_text_nor_a_number_is_dropped() -> None:
    assert decode_change(TOPIC, wrapped(replay_id=[4711])).replay_id is None


def test_the_envelope_says_what_salesforce_committed_and_when() -> None:
    envelope = decode_change(TOPIC, wrapped()).envelope

    assert envelope.event_type == "com.salesforce.cdc.OrderChangeEvent"
    assert envelope.source_system is SourceSystem.CRM
    assert envelope.occurred_at == datetime(2025, 12, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert envelope.correlation_id == "0002c3f4-1d2e-9a8b-7c6d-5e4f3a2b1c0d"
    assert envelope.causation_id is None
    assert envelope.schema_version == 1


def test_one_change_delivered_twice_has_one_event_id() -> None:
    # A duplicate delivery, even re-wrapped with another replay id and commit number.
    first = decode_change(TOPIC, wrapped(replay_id=1))
    again = decode_change(TOPIC, wrapped(replay_id=2, commitNumber=7))
    bare = decode_change(TOPIC, json.dumps(payload()).encode())

    assert first.envelope.event_id == again.envelope.event_id == bare.envelope.event_id
    assert isinstance(first.envelope.event_id, uuid.UUID)


@pytest.mark.parametrize(
    "difference",
    [
        {"transactionKey": "another-transaction"},
        {"sequenceNumber": 3},
        {"recordIds": ["801AB00000Ord02AAA"]},
        {"recordIds": [ORDER_ID, "801AB00000Ord02AAA"]},
    ],
    ids=["transaction", "sequence", "record", "more records"],
)
def test_different_changes_have_different_event_ids(difference: dict[str, Any]) -> None:
    original = decode_change(TOPIC, wrapped())
    other = decode_change(TOPIC, wrapped(**difference))

    assert other.envelope.event_id != original.envelope.event_id


@pytest.mark.parametrize(
    ("origin", "client"),
    [
        ("com/salesforce/api/rest/62.0;client=revsync", "revsync"),
        ("com/salesforce/api/soap/62.0;client=Data Loader ; other=1", "Data Loader"),
        ("com/salesforce/api/rest/62.0;mode=bulk; client = revsync", "revsync"),
        ("com/salesforce/api/rest/62.0;client=", None),
        ("com/salesforce/api/rest/62.0", None),
        ("client=revsync", None),
        ("", None),
    ],
    ids=["rest", "trimmed", "not first", "empty client", "no client", "no api part", "ui"],
)
def test_origin_client_is_the_client_the_api_call_named(origin: str, client: str | None) -> None:
    change = decode_change(TOPIC, wrapped(changeOrigin=origin))

    assert change.header.origin_client == client


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty value"),
        (b"", "empty value"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "a change event is a JSON object, not list"),
        (b'"just text"', "a change event is a JSON object, not str"),
    ],
    ids=["none", "empty", "not json", "not utf-8", "array", "string"],
)
def test_bytes_that_are_no_change_event_are_corrupt(value: bytes | None, reason: str) -> None:
    with pytest.raises(CorruptPayload) as raised:
        decode_change(TOPIC, value)

    assert raised.value.topic == TOPIC
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"{TOPIC}: ")
    assert classify(raised.value) is ErrorClass.DESERIALIZATION


@pytest.mark.parametrize(
    "document",
    [
        {"Status": "Activated"},
        {"replayId": 5, "payload": {"Status": "Activated"}},
        {"replayId": 5, "payload": None},
        {"replayId": 5, "payload": ["ChangeEventHeader"]},
    ],
    ids=["bare", "wrapped", "null payload", "payload array"],
)
def test_a_document_without_a_change_event_header_is_invalid(document: dict[str, Any]) -> None:
    with pytest.raises(PayloadInvalid) as raised:
        decode_change(TOPIC, json.dumps(document).encode())

    assert raised.value.field == "ChangeEventHeader"
    assert "missing" in raised.value.reason
    assert classify(raised.value) is ErrorClass.VALIDATION


@pytest.mark.parametrize(
    ("header_changes", "field"),
    [
        ({"changeType": "MERGE"}, "ChangeEventHeader.changeType"),
        ({"transactionKey": ""}, "ChangeEventHeader.transactionKey"),
        ({"transactionKey": None}, "ChangeEventHeader.transactionKey"),
        ({"sequenceNumber": -1}, "ChangeEventHeader.sequenceNumber"),
        ({"commitTimestamp": "yesterday"}, "ChangeEventHeader.commitTimestamp"),
        ({"entityName": ""}, "ChangeEventHeader.entityName"),
        ({"recordIds": "801AB00000Ord01AAA"}, "ChangeEventHeader.recordIds"),
        ({"recordIds": [ORDER_ID, 42]}, "ChangeEventHeader.recordIds.1"),
    ],
    ids=[
        "change type",
        "empty transaction",
        "null transaction",
        "negative sequence",
        "timestamp",
        "entity",
        "ids not a list",
        "id not text",
    ],
)
def test_an_invalid_header_field_is_named(header_changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadInvalid) as raised:
        decode_change(TOPIC, wrapped(**header_changes))

    assert raised.value.field == field
    assert str(raised.value).startswith(f"{TOPIC}: {field}: ")
    assert classify(raised.value) is ErrorClass.VALIDATION


def test_a_header_field_that_is_missing_is_named() -> None:
    document = payload()
    del document["ChangeEventHeader"]["sequenceNumber"]

    with pytest.raises(PayloadInvalid) as raised:
        decode_change(TOPIC, json.dumps(document).encode())

    assert raised.value.field == "ChangeEventHeader.sequenceNumber"
    assert "required" in raised.value.reason.lower()


def test_a_header_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(PayloadInvalid) as raised:
        decode_change(TOPIC, json.dumps({"ChangeEventHeader": "UPDATE"}).encode())

    assert raised.value.field == "ChangeEventHeader"


def test_every_decode_failure_is_a_decode_error_the_loop_dead_letters() -> None:
    failures: list[DecodeError] = []
    for value in (b"", b"[]", b"{}", wrapped(changeType="MERGE")):
        with pytest.raises(DecodeError) as raised:
            decode_change(TOPIC, value)
        failures.append(raised.value)

    assert [type(failure) for failure in failures] == [
        CorruptPayload,
        CorruptPayload,
        PayloadInvalid,
        PayloadInvalid,
    ]
