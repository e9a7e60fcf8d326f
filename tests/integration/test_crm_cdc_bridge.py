"""The CDC bridge against the CRM sandbox's Pub/Sub API, the real Kafka and PostgreSQL: every
change reaches its topic decoded with its own schema, a restart resumes after the checkpoint,
a lost position becomes a gap record, flow control never asks for more than 100 events, and a
token refused mid-stream is refreshed without losing an event."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from sandbox.crm import CrmSandbox, CrmSimulator
from sandbox.crm.cdc import CdcKnobs

from crm_cdc_bridge.checkpoints import TABLES, Checkpoints
from crm_cdc_bridge.logic import Position
from crm_cdc_bridge.options import Options, Preset
from crm_cdc_bridge.service import CdcBridge
from crm_cdc_bridge.subscriber import ChannelSubscriber, State
from crm_sandbox import an_order, config
from revsync.connectors.cdc import ChangeType, RecordChange, decode_change
from revsync.connectors.pubsub import PubSubClient, PubSubConfig
from revsync.connectors.salesforce import SalesforceClient
from revsync.migrations import ensure
from revsync.runtime.observability import Liveness
from revsync.settings import Settings
from revsync_devstack.stack_check import ensure_topic
from runtime_support import read_topic, wait_for

ORDERS = "/data/OrderChangeEvent"


@pytest.fixture
def simulator() -> Iterator[CrmSimulator]:
    """An org of its own per test: its checkpoints are its own."""
    # Keepalives every second, not every 270 s: an idle stream answers quickly.
    crm = CrmSimulator(seed=11, knobs=CdcKnobs(keepalive_s=1)).start()
    yield crm
    crm.stop()


@pytest.fixture
def sandbox(simulator: CrmSimulator) -> Iterator[CrmSandbox]:
    with closing(CrmSandbox(simulator.url)) as control:
        yield control


@pytest.fixture
def master(sandbox: CrmSandbox) -> tuple[str, str]:
    account = sandbox.insert("Account", [{"Name": "Acme", "ERP_Customer_Id__c": "C-1"}])[0]
    product = sandbox.insert("Product2", [{"Name": "Widget", "ProductCode": "W-1"}])[0]
    return account, product


@dataclass
class Org:
    """A sandbox org, CDC topics of its own and the bridges started on them, stopped at the
    end."""

    settings: Settings
    simulator: CrmSimulator
    sandbox: CrmSandbox
    master: tuple[str, str]
    topics: dict[str, str]
    bridges: list[tuple[CdcBridge, threading.Thread, SalesforceClient]] = field(
        default_factory=list
    )

    def bridge(self, channels: tuple[str, ...] = (ORDERS,), **options: Any) -> CdcBridge:
        defaults = Options(initial=Preset.EARLIEST, after_gap=Preset.EARLIEST, stall_timeout_s=10)
        crm = SalesforceClient(config(self.simulator))
        pubsub = PubSubClient(
            PubSubConfig(self.simulator.pubsub_address, self.simulator.url, tls=False),
            crm.session,
        )
        bridge = CdcBridge(
            channels=channels,
            pubsub=pubsub,
            dsn=self.settings.postgres_dsn.get_secret_value(),
            kafka_config=self.settings.kafka_config(),
            topics=self.topics,
            options=replace(defaults, **options),
            liveness=Liveness(timeout_s=60),
        )
        thread = threading.Thread(target=bridge.run, name="bridge")
        thread.start()
        self.bridges.append((bridge, thread, crm))
        return bridge

    def stop(self, bridge: CdcBridge) -> None:
        for running, thread, crm in self.bridges:
            if running is bridge:
                bridge.stop()
                thread.join(timeout=60)
                crm.close()

    def orders(self, count: int) -> list[str]:
        """Orders created and activated (two change events each), as a sales rep would."""
        account, product = self.master
        return self.sandbox.create_orders([an_order(account, product) for _ in range(count)])

    def changes(self, entity: str = "Order", expect: int = 1) -> list[RecordChange]:
        topic = self.topics[entity]
        return [
            decode_change(topic, message.value())
            for message in read_topic(self.settings, topic, expect, timeout_s=30)
        ]

    def checkpoint(self) -> Position | None:
        with psycopg.connect(self.settings.postgres_dsn.get_secret_value()) as connection:
            row = connection.execute(
                "SELECT replay_id, committed_at FROM revsync_cdc_checkpoint "
                "WHERE org_id = %s AND channel = %s",
                (self.simulator.org_id, ORDERS),
            ).fetchone()
        return Position(bytes(row[0]), row[1]) if row and row[0] is not None else None


@pytest.fixture
def org(
    settings: Settings, simulator: CrmSimulator, sandbox: CrmSandbox, master: tuple[str, str]
) -> Iterator[Org]:
    tag = uuid.uuid4().hex[:8]
    topics = {
        entity: f"revsync.test-{entity.lower()}-{tag}.crm-change.v1"
        for entity in ("Order", "Account")
    }
    for topic in topics.values():
        ensure_topic(settings, topic, partitions=3)
    here = Org(settings, simulator, sandbox, master, topics)
    yield here
    for bridge, thread, crm in here.bridges:
        bridge.stop()
        thread.join(timeout=60)
        crm.close()


def activations(changes: list[RecordChange]) -> dict[str, RecordChange]:
    return {
        change.header.recordIds[0]: change
        for change in changes
        if change.fields.get("Status") == "Activated"
    }


# --- delivery --------------------------------------------------------------------------------


def test_every_change_reaches_the_topic_of_its_entity_with_its_field_names(org: Org) -> None:
    ids = org.orders(5)
    bridge = org.bridge()

    changes = org.changes(expect=10)
    bridge.report_health()
    assert bridge.liveness.serving()

    activated = activations(changes)
    assert set(activated) == set(ids)
    for record_id, change in activated.items():
        assert change.header.changeType is ChangeType.UPDATE
        assert change.header.recordIds == [record_id]
        assert "Status" in change.header.changedFields
        assert change.replay_id is not None
    created = [c for c in changes if c.header.changeType is ChangeType.CREATE]
    assert {c.header.recordIds[0] for c in created} == set(ids)
    assert all(c.fields.get("OrderNumber") for c in created)


def test_each_channel_goes_to_its_own_topic(org: Org, sandbox: CrmSandbox) -> None:
    org.bridge(channels=(ORDERS, "/data/AccountChangeEvent"))
    (account,) = sandbox.insert("Account", [{"Name": "Beta", "ERP_Customer_Id__c": "C-2"}])
    org.orders(1)

    accounts = org.changes("Account", expect=1)
    assert any(change.header.recordIds == [account] for change in accounts)
    assert {change.entity for change in accounts} == {"Account"}
    assert {change.entity for change in org.changes("Order", expect=2)} == {"Order"}


def test_a_restarted_bridge_resumes_after_its_checkpoint(org: Org) -> None:
    first = org.bridge()
    org.orders(3)
    wait_for(lambda: len(org.changes(expect=6)) == 6)
    wait_for(lambda: org.checkpoint() is not None)
    org.stop(first)

    later = org.orders(3)
    org.bridge()

    changes = org.changes(expect=12)
    assert len(changes) == 12  # a clean stop: nothing delivered twice, nothing skipped
    assert set(later) <= set(activations(changes))


def test_a_merged_change_is_one_record_per_order(org: Org, sandbox: CrmSandbox) -> None:
    sandbox.set_cdc(merge_rate=1.0)
    try:
        account, product = org.master
        ids = sandbox.create_orders([an_order(account, product) for _ in range(4)])
    finally:
        sandbox.set_cdc(merge_rate=0.0)
    org.bridge()

    activated = activations(org.changes(expect=8))
    assert set(activated) == set(ids)
    # One event named the four orders: one transaction key and sequence number, four records.
    assert (
        len({(c.header.transactionKey, c.header.sequenceNumber) for c in activated.values()}) == 1
    )
    assert len({c.envelope.event_id for c in activated.values()}) == 4


# --- lost positions --------------------------------------------------------------------------


def gaps(changes: list[RecordChange]) -> list[RecordChange]:
    return [c for c in changes if c.header.changeType is ChangeType.GAP_OVERFLOW]


def test_a_corrupted_replay_id_is_a_gap_record_from_the_checkpoints_time(
    org: Org, settings: Settings
) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        store = Checkpoints(db, org.simulator.org_id, ORDERS)
        ensure(db, TABLES)
        store.save(Position(b"\x00\x00\x00\x00\xde\xad\xbe\xef", since))
    ids = org.orders(2)
    org.bridge()

    changes = org.changes(expect=5)
    (gap,) = gaps(changes)
    assert gap.header.committed_at == since.replace(microsecond=since.microsecond // 1000 * 1000)
    assert "reason=replay-id-refused" in gap.header.changeOrigin
    # Then it resumes from the earliest retained event: the orders are there too.
    assert set(ids) <= set(activations(changes))


def test_a_checkpoint_past_retention_is_a_gap_even_when_the_server_would_ignore_it(
    org: Org, sandbox: CrmSandbox
) -> None:
    # This server treats an expired replay id as "latest" without a word: only the bridge's
    # own check of the checkpoint's age can tell.
    sandbox.set_pubsub(expired_replay="silent")
    first = org.bridge()
    org.orders(2)
    wait_for(lambda: org.checkpoint() is not None)
    org.stop(first)
    stored = org.checkpoint()
    assert stored is not None
    later = org.orders(2)
    time.sleep(1)  # the checkpointed event is past a retention of half a second

    org.bridge(retention=timedelta(seconds=0.5))

    changes = org.changes(expect=9)
    (gap,) = gaps(changes)
    assert "reason=replay-id-expired" in gap.header.changeOrigin
    assert abs(gap.header.committed_at - stored.committed_at) < timedelta(milliseconds=1)
    assert set(later) <= set(activations(changes))


def test_a_first_start_since_a_time_reconciles_from_it(org: Org) -> None:
    since = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    org.bridge(initial=since)

    (gap,) = gaps(org.changes(expect=1))
    assert gap.header.committed_at == since
    assert "reason=first-start-since" in gap.header.changeOrigin


# --- the stream ------------------------------------------------------------------------------


def test_flow_control_never_asks_for_more_than_100_events(org: Org, sandbox: CrmSandbox) -> None:
    org.orders(400)
    org.bridge()

    org.changes(expect=800)
    pubsub = sandbox.stats()["pubsub"]
    assert 0 < pubsub["max_pending_requested"] <= 100


def test_a_schema_change_mid_stream_is_read_with_the_new_schema(
    org: Org, sandbox: CrmSandbox
) -> None:
    org.bridge()
    before = org.orders(2)
    wait_for(lambda: len(org.changes(expect=4)) == 4)

    sandbox.evolve_schema("Order", "Priority__c")  # inserted first: every index moves
    after = org.orders(2)

    changes = org.changes(expect=8)
    activated = activations(changes)
    for record_id in before + after:
        assert "Status" in activated[record_id].header.changedFields
        assert "Priority__c" not in activated[record_id].header.changedFields
    topic = org.topics["Order"]
    schemas = {
        (message.key() or b"").decode(): json.loads(message.value() or b"{}")["schema"]
        for message in read_topic(org.settings, topic, 8)
    }
    assert len({schemas[i] for i in before} | {schemas[i] for i in after}) == 2


def test_a_token_refused_mid_stream_is_refreshed_and_nothing_is_lost(
    org: Org, sandbox: CrmSandbox, simulator: CrmSimulator
) -> None:
    org.bridge()
    first = org.orders(5)
    wait_for(lambda: len(org.changes(expect=10)) == 10)
    tokens = simulator.server.counters.get("oauth.token", 0)

    sandbox.expire_sessions()
    second = org.orders(5)

    changes = org.changes(expect=20)
    assert set(first + second) == set(activations(changes))
    assert simulator.server.counters.get("oauth.token", 0) > tokens


def test_a_standby_takes_over_when_the_leader_stops(org: Org) -> None:
    leader = org.bridge()
    wait_for(lambda: leader.subscribers[0].state is State.SUBSCRIBED)
    standby = org.bridge()
    wait_for(lambda: standby.subscribers[0].state is State.STANDBY)
    org.orders(2)
    wait_for(lambda: len(org.changes(expect=4)) == 4)

    org.stop(leader)
    wait_for(lambda: standby.subscribers[0].state is State.SUBSCRIBED)
    later = org.orders(2)

    assert set(later) <= set(activations(org.changes(expect=8)))


def test_a_channel_the_org_does_not_have_keeps_the_bridge_unready_and_says_so(
    org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = org.bridge(channels=("/data/Revsync_Orders__chn",))

    wait_for(lambda: bridge.subscribers[0].state is State.FAILING)
    bridge.report_health()
    assert not bridge.liveness.serving()
    assert "NOT_FOUND" in caplog.text
    assert "/data/Revsync_Orders__chn" in caplog.text


class HeldKafka:
    """A producer whose acknowledgements are held back until :meth:`release`: Kafka as slow
    as it gets. Records are kept, and handed to Kafka once released."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(settings.kafka_config())
        self._held: list[tuple[str, bytes, bytes, Any]] = []
        self._released = threading.Event()
        self.produced = 0

    def produce(self, topic: str, *, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.produced += 1
        if self._released.is_set():
            self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        else:
            self._held.append((topic, key, value, on_delivery))

    def release(self) -> None:
        self._released.set()

    def poll(self, timeout: float = 0) -> int:
        if self._released.is_set():
            while self._held:
                topic, key, value, on_delivery = self._held.pop(0)
                self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return self._producer.poll(timeout)
        time.sleep(min(timeout, 0.01))
        return 0

    def flush(self, timeout: float = 30) -> int:
        self.poll(0)
        return self._producer.flush(timeout) if self._released.is_set() else len(self._held)


def test_a_slow_kafka_stops_the_requests_at_100_events_in_flight(
    org: Org, settings: Settings, simulator: CrmSimulator
) -> None:
    ids = org.orders(300)  # 600 change events waiting
    kafka = HeldKafka(settings)
    stopping = threading.Event()
    crm = SalesforceClient(config(simulator))
    subscriber = ChannelSubscriber(
        channel=ORDERS,
        pubsub=PubSubClient(
            PubSubConfig(simulator.pubsub_address, simulator.url, tls=False), crm.session
        ),
        dsn=settings.postgres_dsn.get_secret_value(),
        producer=kafka,  # type: ignore[arg-type]
        topics=org.topics,
        options=Options(initial=Preset.EARLIEST, after_gap=Preset.EARLIEST),
        stopping=stopping,
    )
    thread = threading.Thread(target=subscriber.run)
    thread.start()
    try:
        wait_for(lambda: kafka.produced == 100)
        time.sleep(2)  # room for more requests, were any made
        assert kafka.produced == 100  # nothing acknowledged, nothing more fetched or held

        kafka.release()
        assert set(ids) <= set(activations(org.changes(expect=600)))
    finally:
        stopping.set()
        thread.join(timeout=60)
        crm.close()
