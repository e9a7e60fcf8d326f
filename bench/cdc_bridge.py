"""SCENARIO=cdc-bridge: Salesforce change events from the CRM sandbox's Pub/Sub API through
crm-cdc-bridge into Kafka, inside the whole pipeline (every service its own process).

Figures, all measured in this run:

- drain: a backlog of change events (orders created and activated while the bridge was
  stopped) taken by the restarted bridge into Kafka, order_sync stopped meanwhile; events/s
  from the backlog's first record in Kafka to its last (record timestamps), and from the
  bridge's restart (process start, sign-in, leadership and subscription included) until the
  CDC topic holds them all;
- the baseline: the same channel read by a bare subscriber (the Pub/Sub API client decoding
  each event and expanding its bitmaps, nothing written anywhere): what the sandbox serves on
  this machine. ``ratio_to_raw`` is the bridge's rate over it;
- latency at a fixed offered load: per order, from its activation's commit (the change event's
  ``commitTimestamp``) to its record in Kafka (the record's timestamp), the bridge's part, and
  to the CRM showing it shipped, end to end; ``bridge_share_p50`` is the one over the other.
"""

from __future__ import annotations

import json
import queue
import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr
from sandbox import scenario
from sandbox.crm.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sandbox.harness import Pipeline

from bench.order_to_cash import OFFERED_PER_S, bench_pipeline, offered_load, shipped_at
from crm_cdc_bridge import logic
from revsync.connectors.pubsub import PubSubClient, PubSubConfig
from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.settings import Settings

CHANNEL = "/data/OrderChangeEvent"
BRIDGE = "crm-cdc-bridge"
ORDER_SYNC = "order-sync"
OFFERED_SECONDS = 15


def run(settings: Settings, events: int) -> dict[str, Any]:
    """``events`` orders in the backlog (each is two change events: created, activated)."""
    rng = random.Random(5)  # noqa: S311 - an order mix, not a secret
    with bench_pipeline(settings, channels=(CHANNEL,)) as pipeline:
        data = scenario.seed(pipeline.crm, pipeline.erp, rng)
        topic = pipeline.catalog.change_topics["Order"]
        drain = _drain(pipeline, settings, topic, data, rng, events)
        latency = _latency(pipeline, settings, topic, data, rng)
    return {
        "orders": events,
        "backlog_events": drain["events"],
        "bridge_events_per_s": drain["bridge_per_s"],
        "bridge_events_per_s_from_restart": drain["from_restart_per_s"],
        "raw_events_per_s": drain["raw_per_s"],
        "ratio_to_raw": round(drain["bridge_per_s"] / drain["raw_per_s"], 2),
        "offered_orders_per_s": OFFERED_PER_S,
        "latency_orders": latency["orders"],
        "bridge_p50_ms": latency["bridge_p50_ms"],
        "bridge_p99_ms": latency["bridge_p99_ms"],
        "end_to_end_p50_ms": latency["end_to_end_p50_ms"],
        "end_to_end_p99_ms": latency["end_to_end_p99_ms"],
        "bridge_share_p50": latency["bridge_share_p50"],
    }


def _drain(
    pipeline: Pipeline,
    settings: Settings,
    topic: str,
    data: scenario.MasterData,
    rng: random.Random,
    count: int,
) -> dict[str, Any]:
    # order_sync waits meanwhile, so that the bridge has the machine the bare reader had.
    for name in (BRIDGE, ORDER_SYNC):
        pipeline.stop_service(name)
    stopped_ms = int(time.time() * 1000)
    before = _records(settings, topic)
    pipeline.push(list(scenario.orders(data, count, rng, invalid_share=0.0)))
    backlog, raw_per_s = _raw_read(pipeline, since_ms=stopped_ms)
    started = time.monotonic()
    restarted_ms = int(time.time() * 1000)
    pipeline.start_service(BRIDGE)
    while _records(settings, topic) < before + backlog:
        time.sleep(0.05)
    from_restart_per_s = backlog / (time.monotonic() - started)
    # Once subscribed: from the first record of the backlog in Kafka to the last.
    stamps = [stamp for _, _, stamp in _read(settings, topic) if stamp >= restarted_ms]
    steady_per_s = (len(stamps) - 1) / max((max(stamps) - min(stamps)) / 1000, 0.001)
    pipeline.start_service(ORDER_SYNC)
    pipeline.wait_settled(timeout_s=600)
    return {
        "events": backlog,
        "bridge_per_s": round(steady_per_s, 1),
        "from_restart_per_s": round(from_restart_per_s, 1),
        "raw_per_s": round(raw_per_s, 1),
    }


def _raw_read(pipeline: Pipeline, since_ms: int) -> tuple[int, float]:
    """Every event of the channel from the earliest, decoded and its bitmaps expanded; how
    many were committed since ``since_ms``, and events/s over the whole read."""
    crm = SalesforceClient(
        SalesforceConfig(pipeline.crm_url, DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET))
    )
    address = pipeline.pubsub_url.removeprefix("grpc://")
    client = PubSubClient(PubSubConfig(address, pipeline.crm_url, tls=False), crm.session)
    total = recent = 0
    requests: queue.Queue[pb.FetchRequest | None] = queue.Queue()
    requests.put(pb.FetchRequest(topic_name=CHANNEL, replay_preset=pb.EARLIEST, num_requested=100))

    def more() -> Iterator[pb.FetchRequest]:
        while (request := requests.get()) is not None:
            yield request

    subscription = client.subscribe(more())
    started = time.monotonic()
    finished = started
    try:
        for response in subscription:
            if not response.events:
                break  # a keepalive: nothing more to send
            for consumer_event in response.events:
                schema = client.schema(consumer_event.event.schema_id)
                record = schema.decode(consumer_event.event.payload)
                logic.change_records(record, schema, consumer_event.replay_id)
                total += 1
                if record["ChangeEventHeader"]["commitTimestamp"] >= since_ms:
                    recent += 1
            finished = time.monotonic()
            # As many again as arrived: the stream stays fed, never past 100 requested.
            requests.put(pb.FetchRequest(topic_name=CHANNEL, num_requested=len(response.events)))
    finally:
        requests.put(None)
        subscription.cancel()
        client.close()
        crm.close()
    return recent, total / (finished - started)


def _latency(
    pipeline: Pipeline,
    settings: Settings,
    topic: str,
    data: scenario.MasterData,
    rng: random.Random,
) -> dict[str, Any]:
    ids = offered_load(pipeline, data, rng, OFFERED_SECONDS)
    wanted = set(ids)
    committed: dict[str, int] = {}
    in_kafka: dict[str, int] = {}
    for key, value, timestamp in _read(settings, topic):
        payload = json.loads(value)["payload"]
        header = payload["ChangeEventHeader"]
        if key in wanted and payload.get("Status") == "Activated":
            committed[key] = int(header["commitTimestamp"])
            in_kafka[key] = timestamp
    shipped = shipped_at(pipeline, ids)
    bridge = sorted(float(in_kafka[i] - committed[i]) for i in committed)
    end_to_end = sorted(
        (shipped[i] - datetime.fromtimestamp(committed[i] / 1000, UTC)).total_seconds() * 1000
        for i in committed
        if i in shipped
    )
    return {
        "orders": len(bridge),
        "bridge_p50_ms": round(statistics.median(bridge), 1),
        "bridge_p99_ms": round(_p99(bridge), 1),
        "end_to_end_p50_ms": round(statistics.median(end_to_end), 1),
        "end_to_end_p99_ms": round(_p99(end_to_end), 1),
        "bridge_share_p50": round(statistics.median(bridge) / statistics.median(end_to_end), 3),
    }


def _p99(values: list[float]) -> float:
    return values[max(int(len(values) * 0.99) - 1, 0)]


def _records(settings: Settings, topic: str) -> int:
    """Records on ``topic``: the sum of its partitions' end offsets."""
    consumer = Consumer(settings.kafka_config(**{"group.id": "bench-cdc-bridge"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def _read(settings: Settings, topic: str) -> list[tuple[str, bytes, int]]:
    """Every record of ``topic``: key, value and Kafka timestamp (ms)."""
    consumer = Consumer(
        settings.kafka_config(**{"group.id": "bench-cdc-bridge", "enable.auto.commit": False})
    )
    records: list[tuple[str, bytes, int]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for message in consumer.consume(1000, 1.0):
                if message.error():
                    continue
                key = (message.key() or b"").decode()
                records.append((key, message.value() or b"", message.timestamp()[1]))
                if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                    left.discard(message.partition() or 0)
    finally:
        consumer.close()
    return records
