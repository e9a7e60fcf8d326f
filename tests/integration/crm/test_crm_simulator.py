"""The CRM simulator's change data capture: the change events a sales rep's and the
integration's edits publish, read back through the Pub/Sub API, its fault knobs, and the
simulator as a process. The Pub/Sub API itself is in test_pubsub_sandbox.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import grpc
from sandbox.crm import (
    INTEGRATION_USER_ID,
    SALES_REP_USER_ID,
    CrmSandbox,
    CrmSimulator,
)

from crm_sandbox import (
    ORDER_ITEMS,
    ORDERS,
    REST_ORIGIN,
    Received,
    access_token,
    an_order,
    change_events,
    retained_events,
)
from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.pubsub_api import pubsub_api_pb2_grpc as pb_grpc
from revsync.connectors.salesforce import SalesforceClient

EMPTY_RECORD_ID = "000000000000000AAA"


def test_a_rep_creating_activating_and_cancelling_an_order_sends_its_change_events(
    simulator: CrmSimulator,
    sandbox: CrmSandbox,
    crm: SalesforceClient,
    account: str,
    product: str,
) -> None:
    order = sandbox.create_orders([an_order(account, product)])[0]
    sandbox.cancel_order(order, "customer changed their mind")
    crm.update("Order", order, {"ERP_Status__c": "Cancelled"})

    created, activated, cancelled, acknowledged = change_events(simulator, {order})
    (item,) = items_of(simulator, {order})

    header = created.header
    assert header["entityName"] == "Order"
    assert header["recordIds"] == [order]
    assert (header["changeType"], header["changeOrigin"]) == ("CREATE", "")
    assert header["commitUser"] == SALES_REP_USER_ID
    assert (header["changedFields"], header["nulledFields"], header["diffFields"]) == ([], [], [])
    assert created.values["Status"] == "Draft"
    assert created.values["AccountId"] == account
    assert created.values["TotalAmount"] == 58.47
    assert "ActivatedDate" not in created.values
    # The order, then its item, then its activation: one transaction, numbered across entities.
    assert item.header["changeType"] == "CREATE"
    assert item.values["OrderId"] == order
    assert item.header["transactionKey"] == header["transactionKey"]
    assert [header["sequenceNumber"], item.header["sequenceNumber"]] == [1, 2]

    header = activated.header
    assert header["changeType"] == "UPDATE"
    assert set(activated.changed) == {"Status", "ActivatedDate", "LastModifiedDate"}
    assert set(activated.values) == {"Status", "ActivatedDate", "LastModifiedDate"}
    assert activated.values["Status"] == "Activated"
    assert header["transactionKey"] == created.header["transactionKey"]
    assert header["sequenceNumber"] == 3
    assert cancelled.values["Cancel_Reason__c"] == "customer changed their mind"

    header = acknowledged.header
    assert (header["changeOrigin"], header["commitUser"]) == (REST_ORIGIN, INTEGRATION_USER_ID)
    assert acknowledged.changed == ["ERP_Status__c", "LastModifiedDate"]
    replay_ids = [e.replay_id for e in (created, activated, cancelled, acknowledged)]
    assert replay_ids == sorted(replay_ids)
    assert len(set(replay_ids)) == 4


def test_cdc_knobs_publish_duplicates_gaps_and_an_overflow(
    simulator: CrmSimulator,
    sandbox: CrmSandbox,
    account: str,
    product: str,
) -> None:
    sandbox.set_cdc(duplicate_rate=1)
    doubled = sandbox.create_orders([an_order(account, product)], activate=False)[0]
    sandbox.set_cdc(duplicate_rate=0, gap_rate=1)
    gapped = sandbox.create_orders([an_order(account, product)])[0]
    sandbox.set_cdc(gap_rate=0, overflow_after=3)
    overflowed = sandbox.create_orders([an_order(account, product) for _ in range(3)])
    sandbox.set_cdc(overflow_off=True)
    sandbox.delete("Order", overflowed[0])

    events = change_events(simulator, {doubled, gapped, *overflowed, EMPTY_RECORD_ID})

    first, second, *rest = events
    # The same event delivered twice: one id and payload, two replay ids.
    assert (first.event_id, first.record) == (second.event_id, second.record)
    assert first.replay_id < second.replay_id
    assert first.header["changeType"] == "CREATE"
    gaps = rest[:2]
    assert [g.header["changeType"] for g in gaps] == ["GAP_CREATE", "GAP_UPDATE"]
    assert all(g.values == {} for g in gaps)
    assert all(g.header["changedFields"] == g.header["nulledFields"] == [] for g in gaps)
    assert all(g.header["recordIds"] == [gapped] for g in gaps)
    bulk = [e.header for e in rest[2:6]]
    assert [h["changeType"] for h in bulk] == ["CREATE", "CREATE", "CREATE", "GAP_OVERFLOW"]
    assert bulk[3]["recordIds"] == [EMPTY_RECORD_ID]
    assert bulk[3]["entityName"] == "Order"
    assert len({h["transactionKey"] for h in bulk}) == 1
    # Three items in that transaction: not past the threshold of their own channel.
    items = items_of(simulator, set(overflowed))
    assert [i.header["changeType"] for i in items] == ["CREATE"] * 3
    deleted = rest[6]
    assert deleted.header["changeType"] == "DELETE"
    assert deleted.values == {}
    assert len(rest) == 7
    counters = sandbox.stats()["cdc"]
    assert (counters["gaps"], counters["overflows"]) >= (2, 1)
    assert counters["duplicates"] >= 2  # the order's CREATE, and its item's


def test_a_thousand_orders_in_one_call_and_the_stats(
    simulator: CrmSimulator, sandbox: CrmSandbox, account: str, product: str
) -> None:
    before = simulator.cdc.counters.published
    ids = sandbox.create_orders([an_order(account, product) for _ in range(1000)])
    assert len(set(ids)) == 1000
    # Each order's CREATE and activation, and its item's CREATE.
    assert simulator.cdc.counters.published == before + 3000
    stats = sandbox.stats()
    assert stats["records"]["Order"] >= 1000
    assert stats["orders"]["Status"]["Activated"] >= 1000
    orders = stats["pubsub"]["channels"][ORDERS]
    assert orders["published"] == orders["retained"] >= 2000
    assert len(bytes.fromhex(orders["latest_replay_id"])) == 8
    assert sandbox.records("Order", Id=ids[0])[0]["Status"] == "Activated"


def test_the_simulator_runs_as_a_process_until_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.crm",
            "--port",
            "0",
            "--pubsub-port",
            "0",
            "--keepalive-s",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        assert announced["pubsub"].startswith("127.0.0.1:")
        token = access_token(announced["url"])
        with grpc.insecure_channel(announced["pubsub"]) as channel:
            topic = pb_grpc.PubSubStub(channel).GetTopic(
                pb.TopicRequest(topic_name=ORDERS),
                metadata=(
                    ("accesstoken", token),
                    ("instanceurl", announced["url"]),
                    ("tenantid", announced["org_id"]),
                ),
            )
        assert topic.can_subscribe
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def items_of(simulator: CrmSimulator, orders: set[str]) -> list[Received]:
    """The retained OrderItem change events of items of ``orders``."""
    return [
        event
        for event in retained_events(simulator, ORDER_ITEMS)
        if event.values.get("OrderId") in orders
    ]
