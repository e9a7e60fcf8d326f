"""The shared runtime against the real stack: idempotency, crash safety, retries, dead letters,
poison records, per-key order, rebalances, and the metrics that count them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from revsync.contracts.events import Event, OrderCancelled, OrderCreated
from revsync.errors import BusinessRuleViolation
from revsync.runtime import headers as h
from revsync.runtime.handler import Decision, FailedPart, Inbound, caused_envelope
from revsync.runtime.holds import RELEASED, release
from revsync.runtime.observability import HealthServer, Liveness
from runtime_support import (
    Fault,
    RecordingHandler,
    RuntimeWorld,
    read_topic,
    wait_for,
)
from samples import sample_envelope, sample_event, sample_order

TESTS = Path(__file__).parents[1]


def order(number: int) -> OrderCreated:
    return sample_order(f"8015g0000{number:09d}")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_event_delivered_three_times_has_one_effect(world: RuntimeWorld) -> None:
    event = order(1)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    world.produce([event, event, event], headers=[("traceparent", traceparent.encode())])
    duplicates_before = metric("revsync_duplicates_skipped_total", consumer=world.consumer)

    world.loop(world.handler()).run(max_idle_s=2)

    assert world.effects() == [(event.crm_order_id, str(event.envelope.event_id))]
    assert world.outbox_rows() == 1
    # The emitted event: CloudEvents headers, the trace carried on, ids derived from the cause.
    [headers] = world.outbox_headers()
    assert h.get(headers, "ce_type") == "io.revsync.order.accepted"
    assert h.get(headers, "ce_specversion") == "1.0"
    assert h.get(headers, "ce_source") == "/revsync/order_sync"
    assert h.get(headers, "traceparent") == traceparent
    accepted_id = caused_envelope(event.envelope, "io.revsync.order.accepted").event_id
    assert h.get(headers, "ce_id") == str(accepted_id)
    assert metric("revsync_duplicates_skipped_total", consumer=world.consumer) == (
        duplicates_before + 2
    )


def test_a_transient_failure_that_recovers_is_retried_in_process_and_processed_once(
    world: RuntimeWorld,
) -> None:
    flaky = order(2)
    handler = world.handler(
        faults={flaky.crm_order_id: Fault(transient_failures=2, retry_after=0.05)}
    )
    world.produce([flaky, order(3)])

    world.loop(handler).run(max_idle_s=2)

    # Two keys, two partitions maybe: no order between them, one effect each.
    assert sorted(order_id for order_id, _ in world.effects()) == [
        flaky.crm_order_id,
        order(3).crm_order_id,
    ]
    assert handler.faults[flaky.crm_order_id].calls == 3
    assert metric("revsync_in_process_retries_total", consumer=world.consumer) >= 2
    assert (
        read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1, timeout_s=2)
        == []
    )


def test_an_exhausted_failure_goes_through_every_tier_to_the_dlt_with_every_header(
    world: RuntimeWorld,
) -> None:
    doomed = order(4)
    handler = world.handler(faults={doomed.crm_order_id: Fault(transient_failures=100)})
    world.produce([doomed])

    world.loop(handler, in_process_attempts=2).run(max_idle_s=3)

    # In process twice per pass: the input, tier 1s and tier 2s.
    assert handler.faults[doomed.crm_order_id].calls == 6
    assert world.effects() == []
    for tier in ("1s", "2s"):
        retried = read_topic(
            world.settings, world.catalog.retry_topic(world.consumer, 1000 * int(tier[0])), 1
        )
        assert len(retried) == 1
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    headers = h.as_list(dead.headers())
    assert dead.key() == doomed.crm_order_id.encode()
    assert dead.value() == world.serde().serialize(world.created_topic, doomed)
    assert h.get(headers, h.ORIGINAL_TOPIC) == world.created_topic
    assert h.get(headers, h.ORIGINAL_OFFSET) == "0"
    assert h.get(headers, h.ORIGINAL_PARTITION) is not None
    assert h.get(headers, h.ORIGINAL_TIMESTAMP) is not None
    assert h.get(headers, h.CONSUMER_GROUP) == world.consumer
    assert h.get(headers, h.SERVICE) == "order_sync"
    assert h.get(headers, h.ERROR_CLASS) == "transient"
    assert h.get(headers, h.ERROR_TYPE) == "revsync.errors.TransientError"
    assert h.get(headers, h.ERROR_MESSAGE) == "ERP answered 503"
    assert "TransientError" in (h.get(headers, h.ERROR_STACK) or "")
    assert h.get(headers, h.ATTEMPTS) == "3"
    assert h.get(headers, h.CORRELATION_ID) == doomed.envelope.correlation_id
    first, last = h.get(headers, h.FIRST_FAILURE_AT), h.get(headers, h.LAST_FAILURE_AT)
    assert first is not None
    assert last is not None
    assert first < last
    # Error headers are replaced at each hop, never stacked.
    names = Counter(name for name, _ in headers)
    assert all(count == 1 for count in names.values()), names


def test_a_permanent_failure_goes_straight_to_the_dlt(world: RuntimeWorld) -> None:
    refused = order(5)
    handler = world.handler(faults={refused.crm_order_id: Fault(permanent=True)})
    world.produce([refused])

    world.loop(handler).run(max_idle_s=2)

    assert handler.faults[refused.crm_order_id].calls == 1
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert h.get(dead.headers(), h.ERROR_CLASS) == "business rule"
    assert h.get(dead.headers(), h.ATTEMPTS) == "1"


def test_undecodable_bytes_reach_the_dlt_at_once_while_the_partition_flows(
    world: RuntimeWorld,
) -> None:
    key = order(6).crm_order_id.encode()
    before, after = order(6), sample_event(OrderCreated, crm_order_id=order(6).crm_order_id)
    world.produce([before])
    world.produce([], raw=[(key, b"\x00\x00\x00\x00\x07garbage"), (key, b"not avro at all")])
    world.produce([after])

    world.loop(world.handler(), preserve_key_order=False).run(max_idle_s=2)

    assert [event_id for _, event_id in world.effects()] == [
        str(before.envelope.event_id),
        str(after.envelope.event_id),
    ]
    dead = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 2)
    assert [m.value() for m in dead] == [b"\x00\x00\x00\x00\x07garbage", b"not avro at all"]
    assert [h.get(m.headers(), h.ERROR_CLASS) for m in dead] == ["schema", "deserialization"]


def test_a_decoder_that_breaks_on_a_record_dead_letters_it_without_quoting_it(
    world: RuntimeWorld,
) -> None:
    """No customer data in errors: a decoder's own bug, whose text quotes the bytes."""
    event = order(12)

    def broken(topic: str, value: bytes | None) -> Inbound:
        raise ValueError(f"cannot read {value!r}")

    world.produce([event])
    world.loop(world.handler(), decoder=broken).run(max_idle_s=2)

    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert dead.value() == world.serde().serialize(world.created_topic, event)
    assert h.get(dead.headers(), h.ERROR_MESSAGE) == (
        f"{world.created_topic}: decoder failed: "
        "ValueError (its text is not kept: it may quote the data it failed on)"
    )
    street = event.shipping_address.street.encode()
    assert street in (dead.value() or b"")  # the record itself, kept for its replay
    for name, _ in h.as_list(dead.headers()):
        assert street.decode() not in (h.get(dead.headers(), name) or "")


def test_routing_headers_forged_on_an_input_topic_neither_crash_nor_pause_the_loop(
    world: RuntimeWorld,
) -> None:
    forged: list[tuple[str, str | bytes | None]] = [
        (h.ORIGINAL_TOPIC, b"revsync.order.cancelled.v1"),
        (h.ORIGINAL_PARTITION, b"not-a-number"),
        (h.DUE_AT, b"253402300799999"),  # the last millisecond of year 9999
        (h.ATTEMPTS, b"41"),
    ]
    copied, refused = order(7), order(8)
    world.produce([copied], headers=forged)
    handler = world.handler(faults={refused.crm_order_id: Fault(permanent=True)})
    world.produce([refused], headers=forged)

    world.loop(handler).run(max_idle_s=2)

    assert [order_id for order_id, _ in world.effects()] == [copied.crm_order_id]
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    # Dead-lettered as this consumer's own first failure of the input, not as the forger's.
    assert h.get(dead.headers(), h.ORIGINAL_TOPIC) == world.created_topic
    assert h.get(dead.headers(), h.ATTEMPTS) == "1"
    assert h.get(dead.headers(), h.DUE_AT) is None


def test_malformed_routing_headers_on_a_retry_tier_dead_letter_the_record(
    world: RuntimeWorld,
) -> None:
    tier = world.catalog.retry_topic(world.consumer, 1000)
    record, after = order(9), order(10)
    producer = Producer(world.settings.kafka_config())
    producer.produce(
        tier,
        key=record.crm_order_id.encode(),
        value=world.serde().serialize(world.created_topic, record),
        headers=[(h.ORIGINAL_TOPIC, world.created_topic.encode()), (h.DUE_AT, b"soon")],
    )
    assert producer.flush(30) == 0
    world.produce([after])

    world.loop(world.handler()).run(max_idle_s=2)

    assert [order_id for order_id, _ in world.effects()] == [after.crm_order_id]
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert dead.key() == record.crm_order_id.encode()
    assert h.get(dead.headers(), h.ERROR_CLASS) == "deserialization"
    assert "revsync.retry.due.at = 'soon'" in (h.get(dead.headers(), h.ERROR_MESSAGE) or "")


def test_with_key_order_a_keys_later_events_wait_behind_its_failed_one(
    world: RuntimeWorld,
) -> None:
    key = "8015g0000ORDERKEY1"
    first, second, third = (
        sample_event(
            OrderCreated,
            crm_order_id=key,
            envelope=sample_envelope(OrderCreated.event_type, correlation_id=str(n)),
        )
        for n in range(3)
    )
    other = order(7)
    ready = threading.Event()
    handler = world.handler(faults={key: Fault(not_ready=ready)})
    world.produce([first, second, other, third])

    loop = world.loop(handler)
    runner = threading.Thread(target=loop.run, kwargs={"max_idle_s": 3})
    runner.start()
    try:
        wait_for(lambda: (other.crm_order_id, str(other.envelope.event_id)) in world.effects())
        # The other key flowed; this key's later events are parked, not processed.
        assert [order_id for order_id, _ in world.effects()] == [other.crm_order_id]
        assert metric("revsync_parked_total", consumer=world.consumer) >= 2
        ready.set()  # the CRM now knows the order: the retry tier succeeds
    finally:
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert [event_id for order_id, event_id in world.effects() if order_id == key] == [
        str(e.envelope.event_id) for e in (first, second, third)
    ]


def test_a_held_key_survives_a_restart_until_an_operator_releases_it(
    world: RuntimeWorld,
) -> None:
    key = "8015g0000ORDERKEY2"
    first, second = (
        sample_event(
            OrderCreated,
            crm_order_id=key,
            envelope=sample_envelope(OrderCreated.event_type, correlation_id=str(n)),
        )
        for n in range(2)
    )
    handler = world.handler(faults={key: Fault(permanent=True)})
    world.produce([first, second])
    world.loop(handler).run(max_idle_s=2)
    assert world.effects() == []

    # A new process, the fault fixed: the key stays held while its blocker sits in the DLT.
    world.loop(world.handler()).run(max_idle_s=2)
    assert world.effects() == []
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert dead.value() == world.serde().serialize(world.created_topic, first)

    # The operator discards the dead letter: what the key parked is handled, in order.
    blocker = ":".join(
        h.get(dead.headers(), name) or ""
        for name in (h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET)
    )
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        assert not release(db, world.consumer, key.encode(), world.created_topic, "t:0:0")
        assert release(db, world.consumer, key.encode(), world.created_topic, blocker)
        [(state,)] = db.execute(
            "SELECT blocker FROM revsync_key_holds WHERE consumer = %s", (world.consumer,)
        ).fetchall()
        assert state == RELEASED  # something is parked: the loop handles it, then lets go
    world.loop(world.handler()).run(max_idle_s=3)
    assert world.effects() == [(key, str(second.envelope.event_id))]


def spawn_worker(
    world: RuntimeWorld, *, delay_s: float, batch_size: int, max_idle_s: float
) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "PYTHONPATH": str(TESTS),
    }
    return subprocess.Popen(
        [
            sys.executable,
            str(TESTS / "runtime_worker.py"),
            str(world.contracts),
            str(delay_s),
            str(batch_size),
            str(max_idle_s),
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_process_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    world: RuntimeWorld,
) -> None:
    events = [order(1000 + n) for n in range(200)]
    world.produce(events)

    worker = spawn_worker(world, delay_s=0.01, batch_size=50, max_idle_s=60)
    wait_for(lambda: len(world.effects()) >= 60)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    killed_at = len(world.effects())
    assert killed_at < len(events), "the kill must land before the end"

    restarted = spawn_worker(world, delay_s=0, batch_size=50, max_idle_s=15)
    assert restarted.wait(timeout=120) == 0

    effects = world.effects()
    assert sorted(event_id for _, event_id in effects) == sorted(
        str(e.envelope.event_id) for e in events
    )
    # Every effect has its emitted event, written in the same transaction: none lost, none twice.
    assert world.outbox_rows() == len(events)


def test_a_rebalance_mid_batch_loses_and_duplicates_nothing(world: RuntimeWorld) -> None:
    events = [order(2000 + n) for n in range(400)]
    world.produce(events)
    first = world.loop(world.handler(delay_s=0.03), batch_size=40, keepalive_s=0.2)
    second = world.loop(world.handler(delay_s=0.03), batch_size=40, keepalive_s=0.2)
    threads = [
        threading.Thread(target=loop.run, kwargs={"max_idle_s": 10}) for loop in (first, second)
    ]
    threads[0].start()
    wait_for(lambda: len(world.effects()) >= 30)
    threads[1].start()  # joins the group mid-way: partitions move while batches run
    for thread in threads:
        thread.join(timeout=120)

    handled_by_second = len(second.batches.handler.handled)  # type: ignore[attr-defined]
    assert handled_by_second > 0, "the second consumer must have taken partitions over"
    effects = world.effects()
    assert sorted(event_id for _, event_id in effects) == sorted(
        str(e.envelope.event_id) for e in events
    )


def test_partitions_that_leave_while_paused_flow_again_when_they_come_back(
    world: RuntimeWorld,
) -> None:
    # The keepalive pauses every partition while a slow batch runs; the client keeps a
    # partition's pause across a rebalance, so one revoked meanwhile came back paused for ever.
    first = world.loop(world.handler(delay_s=0.05), batch_size=20, keepalive_s=0.1)
    runner = threading.Thread(target=first.run)
    runner.start()
    try:
        world.produce([order(4000 + n) for n in range(200)])
        wait_for(lambda: len(world.effects()) >= 20)
        second = world.loop(world.handler(), batch_size=20)
        joined = threading.Thread(target=second.run)
        joined.start()  # takes partitions over mid-batch, then leaves: they come back
        wait_for(lambda: len(second.batches.handler.handled) > 0)  # type: ignore[attr-defined]
        second.stop()
        joined.join(timeout=120)
        later = [order(4500 + n) for n in range(60)]
        world.produce(later)

        wait_for(lambda: len(world.effects()) >= 260, timeout_s=60)
    finally:
        first.stop()
        runner.join(timeout=60)
    assert {event_id for _, event_id in world.effects()} >= {
        str(e.envelope.event_id) for e in later
    }


def test_a_slow_batch_keeps_its_group_membership(world: RuntimeWorld) -> None:
    events = [order(3000 + n) for n in range(20)]
    world.produce(events)
    # 20 x 0.5 s in one batch, past max.poll.interval.ms = 6 s: only the keepalive saves it.
    loop = world.loop(
        world.handler(delay_s=0.5), batch_size=100, max_poll_interval_ms=6000, keepalive_s=0.5
    )
    loop.run(max_idle_s=2)

    assert len(world.effects()) == len(events)
    assert committed_total(world) == len(events)


def test_sigterm_drains_the_current_batch_and_commits(world: RuntimeWorld) -> None:
    events = [order(4000 + n) for n in range(60)]
    world.produce(events)
    worker = spawn_worker(world, delay_s=0.05, batch_size=20, max_idle_s=60)
    wait_for(lambda: len(world.effects()) >= 5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    done = len(world.effects())
    assert 0 < done < len(events)
    # What was handled is committed: nothing of it comes back to the next process.
    assert committed_total(world) == done


def test_metrics_and_health_endpoints_show_the_counts(world: RuntimeWorld) -> None:
    liveness = Liveness(timeout_s=30)
    server = HealthServer(0, liveness.alive, liveness.serving).start()
    try:
        event = order(5000)
        world.produce([event, event])
        loop = world.loop(world.handler())
        loop.liveness = liveness
        loop.run(max_idle_s=2)
        base = f"http://127.0.0.1:{server.port}"
        metrics = httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        server.stop()
    consumer = world.consumer
    assert (
        f'revsync_processed_total{{consumer="{consumer}",topic="{world.created_topic}"}} 1.0'
        in (metrics)
    )
    assert f'revsync_duplicates_skipped_total{{consumer="{consumer}"}} 1.0' in metrics
    assert f'revsync_consumed_total{{consumer="{consumer}",topic="{world.created_topic}"}} 2.0' in (
        metrics
    )
    assert f'revsync_handler_latency_seconds_count{{consumer="{consumer}"}} 1.0' in metrics
    assert f'revsync_event_age_seconds_count{{consumer="{consumer}"}} 1.0' in metrics


def test_the_loop_purges_inbox_rows_past_their_retention(world: RuntimeWorld) -> None:
    old, recent = order(6000), order(6001)
    world.produce([old])
    world.loop(world.handler()).run(max_idle_s=2)
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as connection:
        connection.execute(
            "UPDATE revsync_inbox SET processed_at = now() - interval '20 days' "
            "WHERE consumer = %s",
            (world.consumer,),
        )
    world.produce([recent])

    world.loop(
        world.handler(),
        inbox_retention=timedelta(days=14),
        inbox_purge_interval_s=0,
        maintenance_interval_s=0,
    ).run(max_idle_s=2)

    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as connection:
        remaining = connection.execute(
            "SELECT event_id::text FROM revsync_inbox WHERE consumer = %s", (world.consumer,)
        ).fetchall()
    assert remaining == [(str(recent.envelope.event_id),)]


def committed_total(world: RuntimeWorld) -> int:
    consumer = Consumer(world.settings.kafka_config(**{"group.id": world.consumer}))
    try:
        metadata = consumer.list_topics(world.created_topic, timeout=10).topics[world.created_topic]
        partitions = [TopicPartition(world.created_topic, p) for p in metadata.partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


@dataclass
class BatchRecordingHandler(RecordingHandler):
    """A recording handler that also takes many inputs at once, noting what each call got."""

    calls: list[list[tuple[str, str]]] = field(default_factory=list)
    """(crm_order_id, event_id) of every input, per handle_many call."""

    def handle_many(self, inbounds: Sequence[Inbound]) -> list[Decision | Exception]:
        self.calls.append(
            [(e.key, str(e.envelope.event_id)) for e in inbounds if isinstance(e, Event)]
        )
        results: list[Decision | Exception] = []
        for inbound in inbounds:
            try:
                results.append(self(inbound))
            except Exception as failure:  # a batching handler reports each input's outcome
                results.append(failure)
        return results


@dataclass
class SlowHandler(RecordingHandler):
    """Notes when it first began handling each order, then takes its time about it."""

    began: dict[str, datetime] = field(default_factory=dict)

    def __call__(self, inbound: Inbound) -> Decision:
        assert isinstance(inbound, Event)
        self.began.setdefault(inbound.key, datetime.now(UTC))
        return super().__call__(inbound)


@dataclass
class SlowBatchHandler(SlowHandler, BatchRecordingHandler):
    """The same, taking many inputs at once."""


@pytest.mark.parametrize("batching", [False, True], ids=["one-by-one", "batch-call"])
def test_a_journey_step_is_dated_when_its_handling_began(
    world: RuntimeWorld, batching: bool
) -> None:
    """What a handler causes elsewhere (an ERP shipping the order it was just sent) is seen
    after handling began, never before: journeys read in causal order across consumers."""
    events = [order(8201), order(8202), order(8203)]
    handler = (SlowBatchHandler if batching else SlowHandler)(
        world.consumer,
        world.accepted_topic,
        delay_s=0.3,
        faults={events[1].crm_order_id: Fault(transient_failures=1, retry_after=0.05)},
    )
    world.produce(events)

    world.loop(handler, batch_timeout_s=1.0).run(max_idle_s=2)

    if isinstance(handler, SlowBatchHandler):
        assert any(len(call) > 1 for call in handler.calls), "the batch went to handle_many"
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        steps = db.execute(
            "SELECT order_key, outcome, at FROM revsync_journey WHERE consumer = %s "
            "AND order_key = ANY(%s) ORDER BY at, seq",
            (world.consumer, [e.crm_order_id for e in events]),
        ).fetchall()
    assert sorted((key, outcome) for key, outcome, _ in steps) == sorted(
        (e.crm_order_id, outcome) for e in events for outcome in ("processed", "emitted")
    )
    for key, outcome, at in steps:
        assert at <= handler.began[key], f"{key} {outcome} dated after its handling began"


@dataclass
class BrokenBatchHandler(RecordingHandler):
    """A handler whose batch call breaks, its error quoting the data it failed on."""

    def handle_many(self, inbounds: Sequence[Inbound]) -> list[Decision | Exception]:
        streets = [e.shipping_address.street for e in inbounds if isinstance(e, OrderCreated)]
        raise ValueError(f"cannot route {streets}")


def test_a_batch_call_failing_as_a_whole_is_logged_without_the_data_its_error_quotes(
    world: RuntimeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    events = [order(8101), order(8102)]
    world.produce(events)

    world.loop(BrokenBatchHandler(world.consumer, world.accepted_topic), batch_timeout_s=1.0).run(
        max_idle_s=2
    )

    assert sorted(order_id for order_id, _ in world.effects()) == [
        e.crm_order_id for e in events
    ]  # handled one by one
    assert "batch handler failed as a whole, handling one by one: ValueError" in caplog.text
    assert events[0].shipping_address.street not in caplog.text


def test_a_batch_handler_gets_one_input_per_key_and_a_failed_key_holds_its_later_input(
    world: RuntimeWorld,
) -> None:
    key = "8015g0000BATCHKEY1"
    failing, held_back = (
        sample_event(
            OrderCreated,
            crm_order_id=key,
            envelope=sample_envelope(OrderCreated.event_type, correlation_id=f"batch-{n}"),
        )
        for n in range(2)
    )
    flaky = order(8001)
    others = [order(8002), order(8003), order(8004)]
    handler = BatchRecordingHandler(
        world.consumer,
        world.accepted_topic,
        faults={key: Fault(permanent=True), flaky.crm_order_id: Fault(transient_failures=1)},
    )
    world.produce([failing, others[0], held_back, flaky, others[1], others[2]])

    # A long batch timeout: every record is in the first batch, both of the key's among them.
    world.loop(handler, batch_timeout_s=1.0).run(max_idle_s=2)

    assert any(len(call) > 1 for call in handler.calls), "the batch went to handle_many"
    for call in handler.calls:
        keys = [order_id for order_id, _ in call]
        assert len(keys) == len(set(keys)), f"two inputs of one key in one call: {call}"
    batched = {entry for call in handler.calls for entry in call}
    assert (key, str(held_back.envelope.event_id)) not in batched
    # The key's first input failed once, for good, and went to the dead letters.
    assert handler.faults[key].calls == 1
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert dead.key() == key.encode()
    assert dead.value() == world.serde().serialize(world.created_topic, failing)
    assert h.get(dead.headers(), h.ERROR_CLASS) == "business rule"
    # Its later input waits behind it, parked, never handled.
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        parked = db.execute(
            "SELECT record_key, value FROM revsync_parked WHERE consumer = %s",
            (world.consumer,),
        ).fetchall()
        holds = db.execute(
            "SELECT record_key FROM revsync_key_holds WHERE consumer = %s", (world.consumer,)
        ).fetchall()
    assert [(bytes(k), bytes(v)) for k, v in parked] == [
        (key.encode(), world.serde().serialize(world.created_topic, held_back))
    ]
    assert [bytes(k) for (k,) in holds] == [key.encode()]
    # Every other key: processed once; the transient failure in the batch was retried alone.
    assert sorted(world.effects()) == sorted(
        (e.crm_order_id, str(e.envelope.event_id)) for e in [flaky, *others]
    )
    assert Counter(handler.handled) == Counter(e.crm_order_id for e in [flaky, *others])
    assert handler.faults[flaky.crm_order_id].calls == 2


@dataclass
class CreatesFailForOneKey(RecordingHandler):
    """Refuses every OrderCreated of ``key`` for good; anything else of it is handled."""

    key: str = ""

    def __call__(self, inbound: Inbound) -> Decision:
        if isinstance(inbound, OrderCreated) and inbound.crm_order_id == self.key:
            raise BusinessRuleViolation("credit hold on the account")
        return super().__call__(inbound)


def test_a_held_key_holds_back_only_its_own_topic(world: RuntimeWorld) -> None:
    # Kafka orders a key within one topic: a failure on one topic must not park the key's
    # events on another, which may be the very event the failed one is waiting for.
    key = "8015g0000CROSSTOP1"
    failing, later = (
        sample_event(
            OrderCreated,
            crm_order_id=key,
            envelope=sample_envelope(OrderCreated.event_type, correlation_id=f"cross-{n}"),
        )
        for n in range(2)
    )
    cancelled = sample_event(OrderCancelled, crm_order_id=key)
    cancelled_topic = world.catalog.topic_for(OrderCancelled.schema_name).name
    handler = CreatesFailForOneKey(world.consumer, world.accepted_topic, key=key)
    world.produce([failing, later])
    world.produce([cancelled], topic=cancelled_topic)

    world.loop(handler).run(max_idle_s=2)

    assert world.effects() == [(key, str(cancelled.envelope.event_id))]
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        parked = db.execute(
            "SELECT source_topic, value FROM revsync_parked WHERE consumer = %s",
            (world.consumer,),
        ).fetchall()
        holds = db.execute(
            "SELECT record_key, source_topic FROM revsync_key_holds WHERE consumer = %s",
            (world.consumer,),
        ).fetchall()
    assert [(topic, bytes(value)) for topic, value in parked] == [
        (world.created_topic, world.serde().serialize(world.created_topic, later))
    ]
    assert [(bytes(k), topic) for k, topic in holds] == [(key.encode(), world.created_topic)]


def test_a_part_that_fails_on_its_own_holds_back_only_its_own_key(world: RuntimeWorld) -> None:
    merged, later_of_merged = order(6000), order(6000)
    part_key = b"8015g0000PARTKEY01"
    recording = world.handler()

    def splitting(inbound: Inbound) -> Decision:
        decision: Decision = recording(inbound)
        if inbound.envelope.event_id != merged.envelope.event_id:
            return decision
        refusal = BusinessRuleViolation("the part's account is blocked")
        return Decision(
            writes=decision.writes,
            emits=decision.emits,
            failed=[FailedPart(part_key, b"the part alone", refusal)],
        )

    world.produce([merged, later_of_merged])
    world.loop(splitting).run(max_idle_s=2)

    # The input's own effects are committed, and its key flows on; only the part is held.
    assert [event_id for _, event_id in world.effects()] == [
        str(merged.envelope.event_id),
        str(later_of_merged.envelope.event_id),
    ]
    [dead] = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 1)
    assert (dead.key(), dead.value()) == (part_key, b"the part alone")
    assert h.get(dead.headers(), h.ERROR_CLASS) == "business rule"
    assert h.get(dead.headers(), h.ORIGINAL_TOPIC) == world.created_topic
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        held = db.execute(
            "SELECT record_key FROM revsync_key_holds WHERE consumer = %s", (world.consumer,)
        ).fetchall()
    assert [bytes(key) for (key,) in held] == [part_key]


def test_journey_steps_past_their_retention_are_purged_and_younger_ones_kept(
    world: RuntimeWorld,
) -> None:
    """The loop's upkeep deletes journey steps older than the journey's retention."""
    events = [order(8301)]
    world.produce(events)
    dsn = world.settings.postgres_dsn.get_secret_value()
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as db:
        for key, age in (("purge-old", timedelta(days=31)), ("purge-young", timedelta(days=29))):
            db.execute(
                "INSERT INTO revsync_journey (at, order_key, consumer, outcome, topic) "
                "VALUES (%s, %s, %s, 'processed', 't')",
                (now - age, key, world.consumer),
            )

    world.loop(
        world.handler(),
        inbox_purge_interval_s=0.0,
        journey_retention=timedelta(days=30),
    ).run(max_idle_s=2)

    with psycopg.connect(dsn) as db:
        kept = db.execute(
            "SELECT order_key FROM revsync_journey WHERE consumer = %s AND order_key LIKE "
            "'purge-%%'",
            (world.consumer,),
        ).fetchall()
    assert kept == [("purge-young",)]
    assert world.effects()  # the loop handled its event all the same
