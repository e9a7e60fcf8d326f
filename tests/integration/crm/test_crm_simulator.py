"""The CRM simulator's change data capture: the change events a sales rep's and the
integration's edits send to Kafka, its fault knobs, and the simulator as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from decimal import Decimal

import httpx
from sandbox.crm import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    INTEGRATION_USER_ID,
    SALES_REP_USER_ID,
    CrmSandbox,
    CrmSimulator,
)

from crm_sandbox import REST_ORIGIN, an_order, change_events
from revsync.connectors.salesforce import SalesforceClient
from revsync.settings import Settings


def test_a_rep_creating_activating_and_cancelling_an_order_sends_its_change_events(
    settings: Settings,
    simulator: CrmSimulator,
    sandbox: CrmSandbox,
    crm: SalesforceClient,
    account: str,
    product: str,
) -> None:
    order = sandbox.create_orders([an_order(account, product)])[0]
    sandbox.cancel_order(order, "customer changed their mind")
    crm.update("Order", order, {"ERP_Status__c": "Cancelled"})

    created, activated, cancelled, acknowledged = change_events(settings, simulator, {order})

    header = created["payload"]["ChangeEventHeader"]
    assert header["entityName"] == "Order"
    assert header["recordIds"] == [order]
    assert (header["changeType"], header["changeOrigin"]) == ("CREATE", "")
    assert header["commitUser"] == SALES_REP_USER_ID
    assert header["changedFields"] == []
    assert created["payload"]["Status"] == "Draft"
    assert created["payload"]["AccountId"] == account
    assert created["payload"]["TotalAmount"] == Decimal("58.47")
    assert "ActivatedDate" not in created["payload"]

    header = activated["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE"
    assert set(header["changedFields"]) == {"Status", "ActivatedDate", "LastModifiedDate"}
    assert activated["payload"]["Status"] == "Activated"
    assert header["transactionKey"] == created["payload"]["ChangeEventHeader"]["transactionKey"]
    assert header["sequenceNumber"] == 2
    assert cancelled["payload"]["Cancel_Reason__c"] == "customer changed their mind"

    header = acknowledged["payload"]["ChangeEventHeader"]
    assert (header["changeOrigin"], header["commitUser"]) == (REST_ORIGIN, INTEGRATION_USER_ID)
    assert header["changedFields"] == ["ERP_Status__c", "LastModifiedDate"]
    replay_ids = [e["replayId"] for e in (created, activated, cancelled, acknowledged)]
    assert replay_ids == sorted(replay_ids)
    assert len(set(replay_ids)) == 4


def test_cdc_knobs_send_duplicates_gaps_and_an_overflow(
    settings: Settings,
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
    sandbox.delete("Order", overflowed[0])

    events = change_events(
        settings, simulator, {doubled, gapped, *overflowed, "000000000000000AAA"}
    )

    first, second, *rest = events
    assert first == second
    assert first["payload"]["ChangeEventHeader"]["changeType"] == "CREATE"
    gaps = rest[:2]
    assert [g["payload"]["ChangeEventHeader"]["changeType"] for g in gaps] == [
        "GAP_CREATE",
        "GAP_UPDATE",
    ]
    assert all(set(g["payload"]) == {"ChangeEventHeader"} for g in gaps)
    assert all(g["payload"]["ChangeEventHeader"]["recordIds"] == [gapped] for g in gaps)
    bulk = [e["payload"]["ChangeEventHeader"] for e in rest[2:6]]
    assert [h["changeType"] for h in bulk] == ["CREATE", "UPDATE", "CREATE", "GAP_OVERFLOW"]
    assert bulk[3]["recordIds"] == ["000000000000000AAA"]
    assert bulk[3]["entityName"] == "Order"
    assert len({h["transactionKey"] for h in bulk}) == 1
    deleted = rest[6]["payload"]
    assert deleted["ChangeEventHeader"]["changeType"] == "DELETE"
    assert set(deleted) == {"ChangeEventHeader"}
    assert len(rest) == 7


def test_a_thousand_orders_in_one_call_and_the_stats(
    simulator: CrmSimulator, sandbox: CrmSandbox, account: str, product: str
) -> None:
    before = simulator.cdc.counters.sent
    ids = sandbox.create_orders([an_order(account, product) for _ in range(1000)])
    assert len(set(ids)) == 1000
    assert simulator.cdc.counters.sent == before + 2000
    stats = sandbox.stats()
    assert stats["records"]["Order"] >= 1000
    assert stats["orders"]["Status"]["Activated"] >= 1000
    assert stats["cdc"]["failed"] == 0
    assert sandbox.records("Order", Id=ids[0])[0]["Status"] == "Activated"


def test_the_simulator_runs_as_a_process_until_sigterm(settings: Settings) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.crm",
            "--port",
            "0",
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--cdc-topic",
            "revsync.test.crm-change.unused",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        answer = httpx.post(
            url + "/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
            },
        )
        assert answer.json()["token_type"] == "Bearer"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
