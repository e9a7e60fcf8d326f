"""The CDC bridge's decisions: bitmaps read against the event's own schema (the lowest bit
is field 0, past 32 fields too, nested ones for compound fields), change events as one
record per record id in the shape order_sync reads, gap records, and the checkpoint rule:
never past an event whose records Kafka has not all acknowledged."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from crm_cdc_bridge import logic
from crm_cdc_bridge.logic import Position, Positions, UndecodableChangeEvent, field_names
from revsync.connectors.cdc import ChangeType, decode_change
from revsync.connectors.pubsub import EventSchema

HEADER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ChangeEventHeader",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": "string"},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}
ADDRESS = {
    "type": "record",
    "name": "Address",
    "fields": [
        {"name": name, "type": ["null", "string"], "default": None}
        for name in ("Street", "City", "State", "PostalCode", "Country")
    ],
}


def optional(name: str, kind: Any = "string") -> dict[str, Any]:
    return {"name": name, "type": ["null", kind], "default": None}


def order_schema(extra: int = 0) -> dict[str, Any]:
    """Header, then Name(1), Status(2), BillingAddress(3), TotalAmount(4), ShippingAddress(5)
    (the same named Address, referenced by name), then ``extra`` text fields F0.."""
    return {
        "type": "record",
        "name": "OrderChangeEvent",
        "namespace": "com.sforce.eventbus",
        "fields": [
            {"name": "ChangeEventHeader", "type": HEADER_SCHEMA},
            optional("Name"),
            optional("Status"),
            optional("BillingAddress", ADDRESS),
            optional("TotalAmount", "double"),
            optional("ShippingAddress", "Address"),
            *(optional(f"F{index}") for index in range(extra)),
        ],
    }


def schema_of(document: dict[str, Any], schema_id: str = "sch-1") -> EventSchema:
    return EventSchema.from_json(schema_id, json.dumps(document))


def header(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "entityName": "Order",
        "recordIds": ["801000000000001AAA"],
        "changeType": "UPDATE",
        "changeOrigin": "",
        "transactionKey": "tx-1",
        "sequenceNumber": 1,
        "commitTimestamp": 1_764_583_200_000,
        "commitNumber": 42,
        "commitUser": "005000000000002AAA",
        "nulledFields": [],
        "diffFields": [],
        "changedFields": [],
    }
    return values | overrides


def event(document: dict[str, Any], **fields: Any) -> bytes:
    """An event encoded with ``document``, as the Pub/Sub API delivers its payload."""
    record = {field["name"]: None for field in document["fields"]}
    record.update(fields)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(document), record)
    return buffer.getvalue()


# --- bitmaps ---------------------------------------------------------------------------------


def test_the_lowest_bit_is_the_schemas_first_field() -> None:
    schema = schema_of(order_schema())
    # 0b10110: fields 1 (Name), 2 (Status) and 4 (TotalAmount).
    assert field_names(["0x16"], schema) == ["Name", "Status", "TotalAmount"]


def test_a_bitmap_past_32_fields_names_fields_past_32() -> None:
    schema = schema_of(order_schema(extra=40))  # 46 fields: F0 is field 6, F39 field 45
    bits = (1 << 45) | (1 << 33) | (1 << 2)
    assert field_names([hex(bits).upper().replace("0X", "0x")], schema) == [
        "Status",
        "F27",
        "F39",
    ]


def test_a_compound_fields_own_bitmap_names_its_fields_under_it() -> None:
    schema = schema_of(order_schema())
    # BillingAddress is field 3: 0b00011 = Street, City; ShippingAddress (5) by name: Country.
    assert field_names(["0x4", "3-0x3", "5-0x10"], schema) == [
        "Status",
        "BillingAddress.Street",
        "BillingAddress.City",
        "ShippingAddress.Country",
    ]


def test_the_documented_example_decodes_field_by_field() -> None:
    # Salesforce's own example value, 0x650004E0: bits 5, 6, 7, 10, 24, 26, 29 and 30.
    schema = schema_of(order_schema(extra=30))
    names = field_names(["0x650004E0"], schema)
    assert names == ["ShippingAddress", "F0", "F1", "F4", "F18", "F20", "F23", "F24"]


def test_nulled_fields_read_like_changed_ones() -> None:
    schema = schema_of(order_schema())
    assert field_names(["0x2", "3-0x8"], schema) == ["Name", "BillingAddress.PostalCode"]


@pytest.mark.parametrize(
    ("bitmaps", "says"),
    [
        (["0x80"], "past the schema's 6 fields"),
        (["0x2", "2-0x1"], "no compound field"),
        (["0x2", "9-0x1"], "no compound field"),
        (["0x2", "3-0x40"], "past the schema's 5 fields"),
        (["changed"], "neither 0x<hex> nor <i>-0x<hex>"),
        (["0xZZ"], "neither"),
    ],
)
def test_a_bitmap_the_schema_cannot_hold_is_a_typed_error(bitmaps: list[str], says: str) -> None:
    with pytest.raises(UndecodableChangeEvent, match=says):
        field_names(bitmaps, schema_of(order_schema()))


def test_the_same_bitmap_names_other_fields_under_another_schema() -> None:
    # A field inserted at the front shifts every index: each event is read with its own schema.
    old = schema_of(order_schema(), "old")
    inserted = order_schema()
    inserted["fields"].insert(1, optional("Priority__c"))
    new = schema_of(inserted, "new")
    assert field_names(["0x4"], old) == ["Status"]
    assert field_names(["0x4"], new) == ["Name"]


# --- records ---------------------------------------------------------------------------------


def test_an_update_carries_its_changed_and_nulled_fields_in_the_shape_order_sync_reads() -> None:
    document = order_schema()
    schema = schema_of(document)
    payload = event(
        document,
        ChangeEventHeader=header(changedFields=["0x4", "3-0x2"], nulledFields=["0x2"]),
        Status="Activated",
        BillingAddress={
            "Street": None,
            "City": "Lyon",
            "State": None,
            "PostalCode": None,
            "Country": None,
        },
    )
    [record] = logic.change_records(
        schema.decode(payload), schema, b"\x00\x00\x00\x00\x00\x01\x02\x03"
    )

    assert record.key == "801000000000001AAA"
    assert record.entity == "Order"
    document_out = json.loads(record.value)
    assert document_out["replayId"] == "AAAAAAABAgM="
    assert document_out["payload"] == {
        "Status": "Activated",
        "BillingAddress": {"City": "Lyon"},
        "Name": None,
        "ChangeEventHeader": header(
            changedFields=["Status", "BillingAddress.City"], nulledFields=["Name"]
        ),
    }
    change = decode_change("revsync.order.crm-change.v1", record.value)
    assert change.fields["Status"] == "Activated"
    assert change.header.changedFields == ["Status", "BillingAddress.City"]


def test_a_create_carries_every_field_it_set() -> None:
    document = order_schema()
    schema = schema_of(document)
    payload = event(
        document,
        ChangeEventHeader=header(changeType="CREATE"),
        Name="A",
        Status="Draft",
        TotalAmount=10.5,
    )
    [record] = logic.change_records(schema.decode(payload), schema, b"\x01")
    assert json.loads(record.value)["payload"] == {
        "Name": "A",
        "Status": "Draft",
        "TotalAmount": 10.5,
        "ChangeEventHeader": header(changeType="CREATE"),
    }


def test_a_merged_change_becomes_one_record_per_record_id_each_with_its_own_event_id() -> None:
    document = order_schema()
    schema = schema_of(document)
    ids = ["801000000000001AAA", "801000000000002AAA", "801000000000003AAA"]
    payload = event(
        document,
        ChangeEventHeader=header(recordIds=ids, changedFields=["0x4"]),
        Status="Activated",
    )
    records = logic.change_records(schema.decode(payload), schema, b"\x07")

    assert [record.key for record in records] == ids
    changes = [decode_change("t", record.value) for record in records]
    assert [change.header.recordIds for change in changes] == [[i] for i in ids]
    assert {change.header.transactionKey for change in changes} == {"tx-1"}
    assert {change.header.sequenceNumber for change in changes} == {1}
    assert len({change.envelope.event_id for change in changes}) == 3
    # The same event bridged again (after a restart) gives the same event ids.
    again = logic.change_records(schema.decode(payload), schema, b"\x07")
    assert [decode_change("t", r.value).envelope.event_id for r in again] == [
        change.envelope.event_id for change in changes
    ]


def test_a_gap_event_carries_no_fields() -> None:
    document = order_schema()
    schema = schema_of(document)
    payload = event(document, ChangeEventHeader=header(changeType="GAP_UPDATE"), Status="x")
    [record] = logic.change_records(schema.decode(payload), schema, b"\x01")
    assert set(json.loads(record.value)["payload"]) == {"ChangeEventHeader"}


def test_an_event_naming_no_record_is_keyed_by_the_empty_id() -> None:
    document = order_schema()
    schema = schema_of(document)
    payload = event(document, ChangeEventHeader=header(changeType="GAP_OVERFLOW", recordIds=[]))
    [record] = logic.change_records(schema.decode(payload), schema, b"\x01")
    assert record.key == logic.EMPTY_RECORD_ID


def test_an_undecodable_event_is_passed_on_so_the_consumer_dead_letters_it() -> None:
    record = logic.undecodable_record("Order", "sch-9", b"\x05", b"\xff\x00", "bad bitmap")
    document = json.loads(record.value)
    assert document["undecodable"] == "bad bitmap"
    assert document["payloadBase64"] == "/wA="
    with pytest.raises(Exception, match="ChangeEventHeader"):
        decode_change("revsync.order.crm-change.v1", record.value)


def test_a_gap_record_reconciles_from_its_time_and_is_the_same_event_when_written_twice() -> None:
    since = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    record = logic.gap_record("Order", "/data/OrderChangeEvent", since, "replay-id-expired")
    change = decode_change("revsync.order.crm-change.v1", record.value)

    assert change.header.changeType is ChangeType.GAP_OVERFLOW
    assert change.header.committed_at == since
    assert change.entity == "Order"
    assert "reason=replay-id-expired" in change.header.changeOrigin
    again = logic.gap_record("Order", "/data/OrderChangeEvent", since, "replay-id-expired")
    assert decode_change("t", again.value).envelope.event_id == change.envelope.event_id


def test_standard_channels_name_their_entity_and_custom_ones_do_not() -> None:
    assert logic.channel_entity("/data/OrderChangeEvent") == "Order"
    assert logic.channel_entity("/data/OrderItemChangeEvent") == "OrderItem"
    assert logic.channel_entity("/data/Revsync_Orders__chn") is None


# --- positions -------------------------------------------------------------------------------

AT = datetime(2026, 12, 1, tzinfo=UTC)


def position(replay: int) -> Position:
    return Position(replay.to_bytes(8, "big"), AT)


def test_the_checkpoint_waits_for_every_record_of_every_earlier_event() -> None:
    positions = Positions()
    first = positions.received(position(10), records=2)
    second = positions.received(position(17), records=1)

    positions.delivered(second, ok=True)
    assert positions.acked is None  # the first event's records are not all in Kafka
    positions.delivered(first, ok=True)
    assert positions.acked is None
    positions.delivered(first, ok=True)
    assert positions.acked == position(17)
    assert positions.unacked_events == 0


def test_a_refused_record_holds_the_checkpoint_before_its_event() -> None:
    positions = Positions()
    first = positions.received(position(1), records=1)
    second = positions.received(position(2), records=1)
    positions.delivered(first, ok=True)
    positions.delivered(second, ok=False)
    assert positions.acked == position(1)
    assert positions.failed


def test_a_keepalive_moves_the_checkpoint_only_when_the_server_had_nothing_to_send() -> None:
    positions = Positions()
    entry = positions.received(position(5), records=1)
    positions.idle_at(position(9).replay_id, AT, waiting_for_more=True)
    assert positions.acked is None  # an event is still on its way to Kafka
    positions.delivered(entry, ok=True)
    positions.idle_at(position(9).replay_id, AT, waiting_for_more=False)
    assert positions.acked == position(5)  # nothing was requested: 9 may not be fetched yet
    later = AT + timedelta(hours=5)
    positions.idle_at(position(9).replay_id, later, waiting_for_more=True)
    # Event 9's commit time is not told: event 5's stands for it, never the keepalive's.
    assert positions.acked == Position(position(9).replay_id, AT)


def test_a_keepalive_naming_the_position_resumed_after_changes_nothing() -> None:
    positions = Positions(position(9))
    positions.idle_at(position(9).replay_id, AT + timedelta(days=2), waiting_for_more=True)
    assert positions.acked == position(9)


def test_a_first_keepalive_of_a_fresh_subscription_stands_at_its_own_time() -> None:
    positions = Positions()
    positions.idle_at(position(3).replay_id, AT, waiting_for_more=True)
    assert positions.acked == position(3)
