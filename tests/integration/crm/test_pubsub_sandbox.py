"""The CRM simulator's Pub/Sub API, with a real gRPC client: what a subscriber must cope with
from Salesforce — signing in with each call, replay presets and opaque replay ids, flow
control, keepalives, retention, schema changes, bitmaps for field names and merged events —
served as Salesforce serves it, so the CDC bridge can be tested against it."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import fastavro
import grpc
import pytest
from sandbox.crm import CrmSandbox, CrmSimulator

from crm_sandbox import (
    ACCOUNTS,
    ORDER_ITEMS,
    ORDERS,
    PubSubReader,
    Received,
    an_order,
    field_names,
)
from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.salesforce import SalesforceClient

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_ID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


@dataclass
class Org:
    """A simulator of its own, for a test that changes what every subscriber would see."""

    simulator: CrmSimulator
    sandbox: CrmSandbox
    reader: PubSubReader
    account: str
    product: str

    def orders(self, count: int, *, activate: bool = True) -> list[str]:
        return self.sandbox.create_orders(
            [an_order(self.account, self.product) for _ in range(count)], activate=activate
        )


@pytest.fixture
def org() -> Iterator[Org]:
    simulator = CrmSimulator(seed=3).start()
    try:
        with closing(CrmSandbox(simulator.url)) as sandbox:
            account = sandbox.insert("Account", [{"Name": "Acme", "ERP_Customer_Id__c": "C-1"}])
            product = sandbox.insert("Product2", [{"Name": "Widget", "ProductCode": "W-1"}])
            reader = PubSubReader(simulator)
            try:
                yield Org(simulator, sandbox, reader, account[0], product[0])
            finally:
                reader.close()
    finally:
        simulator.stop()


@pytest.fixture
def reader(simulator: CrmSimulator) -> Iterator[PubSubReader]:
    with closing(PubSubReader(simulator)) as client:
        yield client


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status of a failed call and its ``error-code`` trailer, once it names an rpc id."""
    assert isinstance(error, grpc.Call)
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("rpc-id")
    return error.code(), str(trailers.get("error-code"))


def details(error: grpc.RpcError) -> str:
    assert isinstance(error, grpc.Call)
    return error.details() or ""


def subscribed(simulator: CrmSimulator, topic: str, count: int = 1) -> None:
    """Wait until ``topic`` has ``count`` open subscriptions: the server holds their place."""
    deadline = time.monotonic() + 10
    while simulator.stats()["pubsub"]["channels"][topic]["subscribers"] < count:
        assert time.monotonic() < deadline, "the subscription never opened"
        time.sleep(0.02)


def schema_document(reader: PubSubReader, topic: str) -> tuple[str, dict[str, Any]]:
    info = reader.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=reader.metadata)
    return info.schema_id, reader.schema(info.schema_id)


# --- signing in ---------------------------------------------------------------------------


def test_calls_without_a_live_token_of_the_org_are_refused(
    simulator: CrmSimulator, sandbox: CrmSandbox, reader: PubSubReader
) -> None:
    token, instance, tenant = (value for _, value in reader.metadata)
    wrong = [
        (),
        (
            ("accesstoken", "00D000000000001!forged"),
            ("instanceurl", instance),
            ("tenantid", tenant),
        ),
        (("accesstoken", token), ("instanceurl", instance), ("tenantid", "00D000000000002AAA")),
        (("accesstoken", token), ("tenantid", tenant)),
    ]
    for metadata in wrong:
        with pytest.raises(grpc.RpcError) as refused:
            reader.stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=metadata)
        assert refusal(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR)

    assert reader.stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=reader.metadata)
    sandbox.expire_sessions()
    with pytest.raises(grpc.RpcError) as refused:
        reader.stub.GetTopic(pb.TopicRequest(topic_name=ORDERS), metadata=reader.metadata)
    assert refusal(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR)
    stream = reader.subscribe(ORDERS, 1)
    assert refusal(stream.error()) == (grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR)


def test_a_stream_whose_token_is_revoked_ends_before_its_next_response(
    simulator: CrmSimulator, sandbox: CrmSandbox, reader: PubSubReader
) -> None:
    sandbox.set_pubsub(keepalive_s=0.2)
    stream = reader.subscribe(ORDERS, 1, pb.LATEST)
    assert not stream.next().events  # a keepalive: the stream is up

    sandbox.expire_sessions()

    assert refusal(stream.error()) == (grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR)


def test_publishing_to_a_change_event_channel_is_refused(reader: PubSubReader) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        reader.stub.Publish(pb.PublishRequest(topic_name=ORDERS), metadata=reader.metadata)
    assert refusal(refused.value)[0] is grpc.StatusCode.PERMISSION_DENIED


# --- topics and schemas -------------------------------------------------------------------


def test_each_entity_has_a_channel_and_a_schema(
    reader: PubSubReader, simulator: CrmSimulator
) -> None:
    for topic, entity in ((ORDERS, "Order"), (ORDER_ITEMS, "OrderItem"), (ACCOUNTS, "Account")):
        info = reader.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=reader.metadata)
        assert (info.topic_name, info.tenant_guid) == (topic, simulator.org_id)
        assert (info.can_subscribe, info.can_publish) == (True, False)
        assert info.rpc_id

        schema = reader.stub.GetSchema(
            pb.SchemaRequest(schema_id=info.schema_id), metadata=reader.metadata
        )
        assert schema.schema_id == info.schema_id
        # The id is the schema's fingerprint: 16 bytes of its SHA-256, base64url, unpadded.
        digest = hashlib.sha256(schema.schema_json.encode()).digest()[:16]
        assert info.schema_id == base64.urlsafe_b64encode(digest).decode().rstrip("=")
        assert len(info.schema_id) == 22
        document = json.loads(schema.schema_json)
        fastavro.parse_schema(document)
        assert (document["name"], document["namespace"]) == (
            f"{entity}ChangeEvent",
            "com.sforce.eventbus",
        )
        header = document["fields"][0]
        assert header["name"] == "ChangeEventHeader"
        assert [field["name"] for field in header["type"]["fields"]] == [
            "entityName",
            "recordIds",
            "changeType",
            "changeOrigin",
            "transactionKey",
            "sequenceNumber",
            "commitTimestamp",
            "commitNumber",
            "commitUser",
            "nulledFields",
            "diffFields",
            "changedFields",
        ]
        assert "GAP_OVERFLOW" in header["type"]["fields"][2]["type"]["symbols"]
        assert all(field.get("doc") for field in document["fields"])
        assert all(
            field["type"][0] == "null" and field["default"] is None
            for field in document["fields"][1:]
        )
        assert "Id" not in [field["name"] for field in document["fields"]]


def test_addresses_are_compound_fields_of_one_named_record(reader: PubSubReader) -> None:
    _, document = schema_document(reader, ORDERS)
    fields = {field["name"]: field for field in document["fields"]}
    names = list(fields)

    assert "BillingCity" not in fields
    assert names.index("BillingAddress") == names.index("Requested_Delivery_Date__c") + 1
    billing, shipping = fields["BillingAddress"]["type"][1], fields["ShippingAddress"]["type"][1]
    assert billing["name"] == "Address"
    assert [part["name"] for part in billing["fields"]][:5] == [
        "Street",
        "City",
        "State",
        "PostalCode",
        "Country",
    ]
    assert shipping == "Address"  # defined once, then referred to by name
    types = {field["name"]: field["type"][1] for field in document["fields"][1:]}
    assert types["TotalAmount"] == "double"
    assert types["EffectiveDate"] == types["ActivatedDate"] == "long"


def test_unknown_topics_and_schemas_are_not_found(reader: PubSubReader) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        reader.stub.GetTopic(
            pb.TopicRequest(topic_name="/data/ContactChangeEvent"), metadata=reader.metadata
        )
    code, error_code = refusal(refused.value)
    assert code is grpc.StatusCode.NOT_FOUND
    assert error_code.startswith("sfdc.platform.eventbus.grpc.")
    with pytest.raises(grpc.RpcError) as refused:
        reader.stub.GetSchema(pb.SchemaRequest(schema_id="nope"), metadata=reader.metadata)
    assert refusal(refused.value)[0] is grpc.StatusCode.NOT_FOUND
    stream = reader.subscribe("/data/ContactChangeEvent", 1)
    assert refusal(stream.error())[0] is grpc.StatusCode.NOT_FOUND


# --- where a subscription starts ------------------------------------------------------------


def test_latest_delivers_only_what_is_published_after_it(org: Org) -> None:
    org.orders(1)
    stream = org.reader.subscribe(ORDERS, 10, pb.LATEST)
    subscribed(org.simulator, ORDERS)

    later = org.orders(1, activate=False)[0]

    response = stream.next()
    assert [org.reader.decode(e).header["recordIds"] for e in response.events] == [[later]]
    assert response.latest_replay_id == response.events[-1].replay_id
    assert response.pending_num_requested == 9
    assert response.rpc_id


def test_earliest_delivers_everything_retained_in_order(org: Org) -> None:
    first, second = org.orders(2)

    events = org.reader.read(ORDERS, 4)

    assert [(e.header["changeType"], e.header["recordIds"]) for e in events] == [
        ("CREATE", [first]),
        ("CREATE", [second]),
        ("UPDATE", [first]),
        ("UPDATE", [second]),
    ]
    replay_ids = [int.from_bytes(e.replay_id, "big") for e in events]
    assert all(len(e.replay_id) == 8 for e in events)
    # Opaque: increasing, but far from zero and not one apart, so no client can compute them.
    assert replay_ids == sorted(replay_ids)
    assert replay_ids[0] > 1 << 32
    assert any(b - a > 1 for a, b in itertools.pairwise(replay_ids))


def test_custom_delivers_the_events_after_the_replay_id(org: Org) -> None:
    org.orders(2)
    events = org.reader.read(ORDERS, 4)

    after_second = org.reader.read(ORDERS, 2, pb.CUSTOM, events[1].replay_id)

    assert [e.replay_id for e in after_second] == [e.replay_id for e in events[2:]]


def test_a_replay_id_the_channel_never_had_is_refused(org: Org) -> None:
    org.orders(1)
    (event, _) = org.reader.read(ORDERS, 2)
    unknown = (int.from_bytes(event.replay_id, "big") + (1 << 20)).to_bytes(8, "big")
    for replay_id in (unknown, b"\xde\xad", b""):
        error = org.reader.subscribe(ORDERS, 1, pb.CUSTOM, replay_id).error()
        assert refusal(error) == (grpc.StatusCode.INVALID_ARGUMENT, REPLAY_ID_CORRUPTED)
        assert "Replay ID" in details(error)


def test_a_replay_id_past_retention_is_refused_or_silently_taken_as_latest(org: Org) -> None:
    created = org.orders(1, activate=False)[0]
    (old,) = org.reader.read(ORDERS, 1)
    org.sandbox.set_pubsub(retention_s=0.2)
    time.sleep(0.4)
    # What the short retention dropped stays dropped once it is long again.
    org.sandbox.set_pubsub(retention_s=3600)
    assert org.sandbox.stats()["pubsub"]["channels"][ORDERS]["retained"] == 0

    stream = org.reader.subscribe(ORDERS, 1, pb.CUSTOM, old.replay_id)
    assert refusal(stream.error()) == (grpc.StatusCode.INVALID_ARGUMENT, REPLAY_ID_CORRUPTED)

    org.sandbox.set_pubsub(expired_replay="silent", keepalive_s=0.2)
    stream = org.reader.subscribe(ORDERS, 5, pb.CUSTOM, old.replay_id)
    subscribed(org.simulator, ORDERS)
    later = org.orders(1, activate=False)[0]
    (event,) = [org.reader.decode(e) for e in stream.next_events().events]
    assert event.header["recordIds"] == [later]
    assert later != created


# --- the stream -----------------------------------------------------------------------------


def test_never_more_events_than_requested_and_never_more_than_100_pending(org: Org) -> None:
    org.sandbox.set_pubsub(keepalive_s=0.2)
    org.orders(5)  # 10 Order events
    stream = org.reader.subscribe(ORDERS, 3)

    response = stream.next()
    assert len(response.events) == 3
    assert response.pending_num_requested == 0
    assert stream.silent_for(0.6)  # keepalives only: nothing more was requested

    org.sandbox.set_pubsub(batch=2)
    stream.request(4)
    assert [len(stream.next_events().events) for _ in range(2)] == [2, 2]
    stream.request(100)
    responses = [stream.next_events() for _ in range(2)]
    assert [(len(r.events), r.pending_num_requested) for r in responses] == [(2, 98), (1, 97)]

    stream.request(4)  # 101 pending
    code, error_code = refusal(stream.error())
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "flow.control" in error_code
    pubsub = org.sandbox.stats()["pubsub"]
    assert pubsub["max_pending_requested"] == 100
    assert pubsub["channels"][ORDERS]["max_pending_requested"] == 100


def test_more_than_100_requested_at_once_is_refused(reader: PubSubReader) -> None:
    stream = reader.subscribe(ORDERS, 101)
    assert refusal(stream.error())[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_a_quiet_stream_gets_keepalives_naming_the_latest_replay_id(org: Org) -> None:
    org.sandbox.set_pubsub(keepalive_s=0.3)
    # A channel that has never had an event has no latest replay id.
    assert org.reader.subscribe(ORDER_ITEMS, 7, pb.LATEST).next().latest_replay_id == b""
    org.orders(1, activate=False)
    (latest,) = org.reader.read(ORDERS, 1)
    idle = org.reader.subscribe(ORDERS, 7, pb.LATEST)

    keepalive = idle.next()

    assert not keepalive.events
    assert keepalive.latest_replay_id == latest.replay_id
    assert keepalive.pending_num_requested == 7
    assert keepalive.rpc_id


def test_disconnecting_ends_every_open_stream(org: Org) -> None:
    streams = [org.reader.subscribe(ORDERS, 1, pb.LATEST) for _ in range(2)]
    subscribed(org.simulator, ORDERS, 2)

    assert org.sandbox.disconnect_subscribers() == 2

    for stream in streams:
        assert refusal(stream.error())[0] is grpc.StatusCode.UNAVAILABLE
    assert org.sandbox.stats()["pubsub"]["channels"][ORDERS]["subscribers"] == 0


def test_stopping_the_simulator_ends_its_streams() -> None:
    simulator = CrmSimulator().start()
    reader = PubSubReader(simulator)
    try:
        stream = reader.subscribe(ORDERS, 1, pb.LATEST)
        subscribed(simulator, ORDERS)
        started = time.monotonic()
        simulator.stop()
        assert refusal(stream.error())[0] is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
    finally:
        reader.close()


# --- what an event says ---------------------------------------------------------------------


def test_bitmaps_name_the_changed_and_nulled_fields(
    simulator: CrmSimulator,
    sandbox: CrmSandbox,
    crm: SalesforceClient,
    reader: PubSubReader,
    account: str,
    product: str,
) -> None:
    order = an_order(account, product, BillingCity="Berlin", ShippingStreet="Alexanderplatz 1")
    (order_id,) = sandbox.create_orders([order], activate=False)
    stream = reader.subscribe(ORDERS, 1, pb.LATEST)
    subscribed(simulator, ORDERS)

    crm.update("Order", order_id, {"BillingCity": "Hamburg", "PoNumber": None})
    crm.update("Order", order_id, {"ShippingStreet": None})

    (first,) = stream.next().events
    stream.request(1)
    (second,) = stream.next().events
    _, document = schema_document(reader, ORDERS)
    names = [field["name"] for field in document["fields"]]
    update = reader.decode(first)
    header = update.header
    top = int(header["changedFields"][0], 16)
    assert top == 1 << names.index("PoNumber") | 1 << names.index("LastModifiedDate")
    assert header["changedFields"][0] == f"0x{top:X}"
    # The compound field's own bit stays clear: its nested bitmap says which part changed.
    billing = names.index("BillingAddress")
    assert header["changedFields"][1:] == [f"{billing}-0x2"]
    assert sorted(update.changed) == ["BillingAddress.City", "LastModifiedDate", "PoNumber"]
    assert update.nulled == ["PoNumber"]
    assert header["diffFields"] == []
    # Only the changed fields carry values; the rest are null, as the Pub/Sub API sends them.
    assert set(update.values) == {"BillingAddress", "LastModifiedDate"}
    assert update.values["BillingAddress"]["City"] == "Hamburg"

    nulled = reader.decode(second)
    shipping = names.index("ShippingAddress")
    assert nulled.header["nulledFields"] == ["0x0", f"{shipping}-0x1"]
    assert nulled.nulled == ["ShippingAddress.Street"]


def test_each_entity_publishes_its_own_changes(
    sandbox: CrmSandbox, crm: SalesforceClient, reader: PubSubReader, product: str
) -> None:
    (account,) = sandbox.insert("Account", [{"Name": "Beta", "ERP_Customer_Id__c": "C-99"}])
    crm.update("Account", account, {"Name": "Beta GmbH"})
    (order,) = sandbox.create_orders([an_order(account, product)])
    (item,) = crm.related("Order", order, "OrderItems")
    crm.update("OrderItem", item["Id"], {"Quantity": 5})
    sandbox.delete("Account", account)

    accounts = [e for e in reader.read(ACCOUNTS, retained(sandbox, ACCOUNTS)) if account in ids(e)]
    items = [
        e for e in reader.read(ORDER_ITEMS, retained(sandbox, ORDER_ITEMS)) if item["Id"] in ids(e)
    ]

    assert [e.header["changeType"] for e in accounts] == ["CREATE", "UPDATE", "DELETE"]
    assert accounts[1].changed == ["Name", "LastModifiedDate"]
    assert [e.header["changeType"] for e in items] == ["CREATE", "UPDATE"]
    assert items[1].values["Quantity"] == 5.0
    assert "TotalPrice" in items[1].changed


def test_an_accounts_customer_fields_travel_in_its_change_events(
    sandbox: CrmSandbox, crm: SalesforceClient, reader: PubSubReader
) -> None:
    _, document = schema_document(reader, ACCOUNTS)
    types = {field["name"]: field["type"][1] for field in document["fields"][1:]}
    (account,) = sandbox.insert(
        "Account",
        [
            {
                "Name": "Quill Supplies",
                "Sync_To_ERP__c": True,
                "Tax_Id__c": "12-3456789",
                "DUNS__c": "150483782",
                "Legal_Entity__c": "US01",
                "CurrencyIsoCode": "USD",
                "BillingStreet": "1 Harbour Road",
                "BillingCity": "Boston",
                "BillingState": "MA",
                "BillingPostalCode": "02110",
                "BillingCountryCode": "US",
            }
        ],
    )
    crm.update(
        "Account",
        account,
        {
            "ERP_Customer_Id__c": "C-100042",
            "ERP_Customer_Number__c": "100042",
            "Credit_Limit__c": 50000,
            "ERP_Customer_Status__c": "Credit Hold",
            "Payment_Terms__c": "NET30",
            "ERP_Blocks__c": "order;delivery",
        },
    )

    created, updated = (
        e for e in reader.read(ACCOUNTS, retained(sandbox, ACCOUNTS)) if account in ids(e)
    )

    assert (types["Sync_To_ERP__c"], types["Credit_Limit__c"], types["DUNS__c"]) == (
        "boolean",
        "double",
        "string",
    )
    assert types["BillingAddress"]["name"] == "Address"
    for name in ("Tax_Id__c", "CurrencyIsoCode", "Legal_Entity__c", "ERP_Customer_Status__c"):
        assert types[name] == "string", name
    assert created.values["Sync_To_ERP__c"] is True
    assert (created.values["Tax_Id__c"], created.values["Legal_Entity__c"]) == (
        "12-3456789",
        "US01",
    )
    assert created.values["BillingAddress"]["City"] == "Boston"
    assert created.values["BillingAddress"]["CountryCode"] == "US"
    assert sorted(updated.changed) == [
        "Credit_Limit__c",
        "ERP_Blocks__c",
        "ERP_Customer_Id__c",
        "ERP_Customer_Number__c",
        "ERP_Customer_Status__c",
        "LastModifiedDate",
        "Payment_Terms__c",
    ]
    assert updated.values["Credit_Limit__c"] == 50000.0
    assert updated.values["ERP_Customer_Status__c"] == "Credit Hold"


def ids(event: Received) -> list[str]:
    return list(event.header["recordIds"])


def retained(sandbox: CrmSandbox, topic: str) -> int:
    return int(sandbox.stats()["pubsub"]["channels"][topic]["retained"])


def test_identical_changes_to_several_records_are_merged_into_one_event(
    simulator: CrmSimulator, sandbox: CrmSandbox, reader: PubSubReader, account: str, product: str
) -> None:
    stream = reader.subscribe(ORDERS, 100, pb.LATEST)
    subscribed(simulator, ORDERS)
    sandbox.set_cdc(merge_rate=1)

    ids = sandbox.create_orders([an_order(account, product) for _ in range(3)])

    events: list[Received] = []
    while len(events) < 4:
        events += [reader.decode(e) for e in stream.next().events]
    creates, (activation,) = events[:3], events[3:]
    assert [e.header["recordIds"] for e in creates] == [[i] for i in ids]
    assert activation.header["changeType"] == "UPDATE"
    assert activation.header["recordIds"] == ids
    assert activation.values["Status"] == "Activated"
    assert sandbox.stats()["cdc"]["merges"] >= 1


def test_each_event_is_written_with_the_schema_current_when_it_was_published(org: Org) -> None:
    before = org.orders(1)[0]
    old_id, old = schema_document(org.reader, ORDERS)

    new_id = org.sandbox.evolve_schema("Order", "Priority__c")
    after = org.orders(1)[0]

    assert new_id != old_id
    assert schema_document(org.reader, ORDERS)[0] == new_id
    new = org.reader.schema(new_id)
    assert org.reader.schema(old_id) == old  # still served: events written with it remain
    assert [f["name"] for f in new["fields"]][:2] == ["ChangeEventHeader", "Priority__c"]
    assert [f["name"] for f in new["fields"]][2:] == [f["name"] for f in old["fields"]][1:]

    events = org.reader.read(ORDERS, 4)
    by_record = {(e.header["recordIds"][0], e.header["changeType"]): e for e in events}
    assert {e.schema_id for e in events if before in e.header["recordIds"]} == {old_id}
    assert {e.schema_id for e in events if after in e.header["recordIds"]} == {new_id}
    for record_id in (before, after):
        activation = by_record[(record_id, "UPDATE")]
        assert set(activation.changed) == {"Status", "ActivatedDate", "LastModifiedDate"}
        assert activation.record.get("Priority__c") is None
    # Read with the wrong schema, the same bitmap names other fields: every index moved.
    bitmaps = by_record[(after, "UPDATE")].header["changedFields"]
    assert set(field_names(bitmaps, old)) != {"Status", "ActivatedDate", "LastModifiedDate"}


def test_bitmaps_wider_than_64_bits_are_hex_of_any_length(org: Org) -> None:
    for number in range(45):
        org.sandbox.evolve_schema("Order", f"Extra_{number}__c")
    (order,) = org.orders(1)

    creation, activation = org.reader.read(ORDERS, 2)

    assert creation.header["recordIds"] == activation.header["recordIds"] == [order]
    assert int(activation.header["changedFields"][0], 16) >= 1 << 64
    assert set(activation.changed) == {"Status", "ActivatedDate", "LastModifiedDate"}
