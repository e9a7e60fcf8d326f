"""SCENARIO=replay: dead letters replayed with no rate limit (``revsync dlt replay --rate 0``)
beside a raw confluent-kafka copy of the same records (keys, values and headers) between two
topics, in the same run.

The replay reads every dead letter, checks the ledger, sends each to its consumer's replay
topic and writes down what Kafka took: the figures are its records/s end to end, where the
time went (select, send, ledger, and the job's own set-up), the ratio to the raw copy, and the
verdict against the target. A replay decodes payloads only when its filter names event types;
``decode_s`` is what decoding these records as their consumer does would add. The machine's
cores and load average when the replay starts tell how much of them it had.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from sandbox.harness import private_contracts

from bench import passthrough
from bench.runtime import sample_order
from revsync.contracts.catalog import load_catalog
from revsync.contracts.events import OrderCreated
from revsync.contracts.registry import register_contracts
from revsync.contracts.schemas import ReleaseRecord, SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.contracts.topics import apply_changes, plan_changes
from revsync.deployables import input_decoder
from revsync.errors import BusinessRuleViolation
from revsync.migrations import ensure
from revsync.ops import dead_letters as dl
from revsync.ops.dead_letters import Selection
from revsync.ops.ledger import Actor
from revsync.ops.operations import Operations
from revsync.runtime import headers as h
from revsync.runtime.storage import TABLES
from revsync.settings import Settings
from revsync_devstack.stack_check import ensure_topic

TARGET_PER_S = 20_000
"""Records a second a replay without a rate limit is to reach."""


def run(settings: Settings, events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="revsync-bench-") as scratch:
        contracts = private_contracts(settings.schemas_dir, Path(scratch) / "contracts")
        catalog = load_catalog(contracts)
        schemas = SchemaRepository(contracts)
        registry = SchemaRegistryClient(settings.registry_config())
        list(register_contracts(registry, catalog, schemas, ReleaseRecord(contracts)))
        admin = AdminClient(settings.kafka_config())
        apply_changes(admin, catalog, plan_changes(admin, catalog))
        with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
            ensure(connection, TABLES)
        serde = EventSerde(registry, catalog, schemas)
        consumer = catalog.consumer_of("order_sync")
        dead_letters = catalog.dead_letter_topic(consumer)
        source = catalog.topic_for(OrderCreated.schema_name).name
        _fill(settings, serde, dead_letters, source, consumer, events)

        copy = f"{dead_letters}.copy"
        ensure_topic(settings, copy, partitions=6)
        raw_s = passthrough.pass_through(settings, dead_letters, copy, events, headers=True)

        operations = Operations(
            catalog=catalog,
            kafka_config=settings.kafka_config(),
            dsn=settings.postgres_dsn.get_secret_value(),
            decoder=input_decoder(catalog, serde),
            registry=registry,
            actor=Actor("bench", "User:ANONYMOUS"),
        )
        selected, decoded, decode_s = _decoding(operations)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        report = operations.replays.replay(
            Selection(), everything=True, rate_per_s=None, max_replays=3
        )
        replay_s = time.perf_counter() - started
        still_open = len(operations.select(Selection(), payloads=False))
        if {selected, decoded, report.moved} != {events} or still_open:
            raise RuntimeError(
                f"{selected} selected, {decoded} decoded, {report.moved} replayed, "
                f"{still_open} still open; {events} expected"
            )
        admin.delete_topics([plan.name for plan in catalog.topic_plan()] + [copy])
    replay_rate = events / replay_s
    raw_rate = events / raw_s
    seconds = report.seconds
    return {
        "records": events,
        "replay_records_per_s": round(replay_rate),
        "raw_copy_records_per_s": round(raw_rate),
        "ratio_to_raw_copy": round(replay_rate / raw_rate, 3),
        "replay_s": round(replay_s, 3),
        "select_s": round(seconds["select"], 3),
        "send_s": round(seconds["send"], 3),
        "ledger_s": round(seconds["ledger"], 3),
        "job_s": round(replay_s - sum(seconds.values()), 3),
        "decode_s": round(decode_s, 3),
        "cores": os.cpu_count(),
        "load_1m": round(load, 2),
        "verdict": "passed"
        if replay_rate >= TARGET_PER_S
        else f"{replay_rate:,.0f} records/s, below the target of {TARGET_PER_S:,}",
    }


def _decoding(operations: Operations) -> tuple[int, int, float]:
    """How many dead letters there are, how many decode as their consumer reads them, and
    the seconds decoding took. None of them is kept: the replay is timed on its own heap."""
    letters = operations.select(Selection(), payloads=False)
    started = time.perf_counter()
    decoded = sum(letter.event is not None for letter in dl.decoded(letters, operations.decoder))
    return len(letters), decoded, time.perf_counter() - started


def _fill(
    settings: Settings,
    serde: EventSerde,
    topic: str,
    source: str,
    consumer: str,
    events: int,
) -> None:
    """``events`` dead letters as the consumer loop writes them: the original bytes, the
    original coordinates and the error headers."""
    template = sample_order()
    producer = Producer(settings.kafka_config(**passthrough.PRODUCER_TUNING))
    now = datetime.now(UTC)
    for number in range(events):
        order_id = f"8015g0000RPL{number:06d}"
        envelope = template.envelope.model_copy(update={"event_id": uuid.uuid4()})
        event = template.model_copy(update={"crm_order_id": order_id, "envelope": envelope})
        headers = h.failure_headers(
            [],
            error=BusinessRuleViolation("credit hold on the account"),
            source=(source, number % 6, number, int(now.timestamp() * 1000)),
            consumer=consumer,
            service="order_sync",
            correlation_id=order_id,
            now=now,
        )
        while True:
            try:
                producer.produce(
                    topic,
                    key=order_id.encode(),
                    value=serde.serialize(source, event),
                    headers=headers,
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
