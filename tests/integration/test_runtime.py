"""The shared runtime against the real stack: idempotency, crash safety, retries, dead letters,
poison records, per-key order, rebalances, and the metrics that count them."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from contract_fixtures import cli_for, governed, isolated_contracts
from revsync.contracts.events import OrderCreated
from revsync.runtime import headers as h
from revsync.settings import Settings
from runtime_support import (
    Fault,
    RuntimeWorld,
    prepare_database,
    read_topic,
    with_retry_tiers,
)
from samples import sample_envelope, sample_event


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> RuntimeWorld:
    contracts = isolated_contracts(tmp_path / "avro")
    with_retry_tiers(contracts, ["1s", "2s"])
    catalog = governed(cli_for(settings), contracts)
    prepare_database(settings)
    return RuntimeWorld(settings, contracts, catalog)


def order(number: int) -> OrderCreated:
    order_id = f"8015g0000{number:09d}"
    return sample_event(
        OrderCreated,
        crm_order_id=order_id,
        envelope=sample_envelope(OrderCreated.event_type, correlation_id=f"corr-{order_id}"),
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_event_delivered_three_times_has_one_effect(world: RuntimeWorld) -> None:
    event = order(1)
    world.produce([event, event, event])
    duplicates_before = metric("revsync_duplicates_skipped_total", consumer=world.consumer)

    world.loop(world.handler()).run(max_idle_s=2)

    assert world.effects() == [(event.crm_order_id, str(event.envelope.event_id))]
    assert world.outbox_rows() == 1
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

    assert [order_id for order_id, _ in world.effects()] == [
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


def test_a_held_key_survives_a_restart(world: RuntimeWorld) -> None:
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
    assert h.get(dead.headers(), h.ORIGINAL_OFFSET) is not None


def wait_for(condition: object, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
