"""The raw baseline: a bare confluent-kafka consume -> produce loop, no revsync at all.

Every later scenario is a ratio to this loop, measured on the same broker in the same run. Here
the passthrough itself is set beside what one producer alone pushes into the broker.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from revsync.runtime import headers as h
from revsync.settings import Settings
from revsync_devstack.stack_check import ensure_topic

PARTITIONS = 4
PAYLOAD = b"x" * 300  # about the size of an order event in Avro
PRODUCER_TUNING = {"linger.ms": 5, "batch.size": 262144, "enable.idempotence": True}


def run(settings: Settings, events: int) -> dict[str, Any]:
    source, sink = (f"bench.passthrough.{role}.{uuid.uuid4().hex[:8]}" for role in ("in", "out"))
    for topic in (source, sink):
        ensure_topic(settings, topic, partitions=PARTITIONS)
    admin = AdminClient(settings.kafka_config())
    try:
        produce_s = fill(settings, source, sink, events)
        passthrough_s = pass_through(settings, source, sink, events)
    finally:
        admin.delete_topics([source, sink])
    produce_rate = events / produce_s
    passthrough_rate = events / passthrough_s
    return {
        "events": events,
        "producer_only_events_per_s": round(produce_rate),
        "events_per_s": round(passthrough_rate),
        "ratio_to_producer_only": round(passthrough_rate / produce_rate, 3),
    }


def fill(settings: Settings, source: str, sink: str, events: int) -> float:
    producer = warmed_up_producer(settings, sink)
    started = time.perf_counter()
    for number in range(events):
        _produce(producer, source, str(number % 10_000).encode(), PAYLOAD)
    producer.flush(120)
    return time.perf_counter() - started


def pass_through(
    settings: Settings, source: str, sink: str, events: int, *, headers: bool = False
) -> float:
    """Seconds to copy ``events`` records from ``source`` to ``sink``: keys and values, and
    with ``headers`` their headers too."""
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"bench-passthrough-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    producer = warmed_up_producer(settings, sink)
    consumer.subscribe([source])
    moved = 0
    started: float | None = None
    while moved < events:
        batch = consumer.consume(num_messages=1000, timeout=1.0)
        if started is None and batch:
            started = time.perf_counter()
        for message in batch:
            if message.error():
                raise RuntimeError(message.error())
            _produce(
                producer,
                sink,
                message.key(),
                message.value(),
                h.as_list(message.headers()) if headers else None,
            )
        moved += len(batch)
        if batch:
            producer.poll(0)
            consumer.commit(asynchronous=True)
    producer.flush(120)
    consumer.close()
    assert started is not None
    return time.perf_counter() - started


def warmed_up_producer(settings: Settings, topic: str) -> Producer:
    """A producer that has connected and got its idempotence id: time the flow, not the set-up."""
    producer = Producer(settings.kafka_config(**PRODUCER_TUNING))
    producer.produce(topic, value=b"warm-up")
    producer.flush(30)
    return producer


def _produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: h.Headers | None = None,
) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)
