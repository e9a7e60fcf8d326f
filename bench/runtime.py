"""SCENARIO=runtime: events through the full idempotent path (inbox, one state upsert, one
emitted event through the outbox relay) beside the floor (bench/floor.py: the simplest plain
code doing the same durable work), a raw confluent-kafka passthrough, and the same handler
semantics on faust-streaming, all on the same broker in the same run.

revsync and the floor are each measured twice: at saturation (a backlog of ``events`` orders,
events/s to the last one published, and each batch's time from consumed to committed), then
at a light load (LIGHT_RATE orders a second, each one's time from produced to committed).
Each variant runs in a process of its own so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psycopg
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench import passthrough
from bench.floor import FloorLoop
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import (
    Address,
    CreditCheckOutcome,
    Envelope,
    OrderAccepted,
    OrderCreated,
    OrderLine,
    PricingOutcome,
    SourceSystem,
)
from revsync.contracts.registry import register_contracts
from revsync.contracts.schemas import ReleaseRecord, SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.contracts.topics import apply_changes, plan_changes
from revsync.migrations import ensure
from revsync.runtime.handler import Decision, Emission, Inbound, StateWrite, caused_envelope
from revsync.runtime.loop import ConsumerLoop, Policy
from revsync.runtime.records import Hold, Record
from revsync.runtime.relay import OutboxRelay
from revsync.runtime.storage import TABLES
from revsync.settings import Settings

ROOT = Path(__file__).parents[1]
FAUST_EVENTS = 20_000
STATE_TABLE = """CREATE TABLE IF NOT EXISTS bench_orders (
    crm_order_id text PRIMARY KEY, status text NOT NULL, erp_order_id text NOT NULL)"""
UPSERT = (
    "INSERT INTO bench_orders (crm_order_id, status, erp_order_id) "
    "SELECT DISTINCT ON (id) id, s, e FROM unnest(%b::text[], %b::text[], %b::text[]) "
    "WITH ORDINALITY AS r(id, s, e, n) ORDER BY id, n DESC "
    "ON CONFLICT (crm_order_id) DO UPDATE SET status = excluded.status, "
    "erp_order_id = excluded.erp_order_id"
)


LIGHT_RATE = 100
LIGHT_EVENTS = 1_000
BATCH_SIZE = 1_000
TARGETS = {"ratio_to_floor": 0.8, "ratio_to_faust": 15.0, "light_p50_ms": 50.0}


def run(settings: Settings, events: int) -> dict[str, Any]:
    setup = prepare(settings, events)
    revsync = variant(settings, "revsync", setup, events)
    reset(settings, setup)
    floor = variant(settings, "floor", setup, events)
    raw = variant(settings, "raw", setup, events)
    faust = variant(settings, "faust", setup, min(events, FAUST_EVENTS))
    figures = {
        "events": events,
        "events_per_s": revsync["events_per_s"],
        "p50_ms": revsync["p50_ms"],
        "p99_ms": revsync["p99_ms"],
        "light_events_per_s": LIGHT_RATE,
        "light_p50_ms": revsync["light_p50_ms"],
        "light_p99_ms": revsync["light_p99_ms"],
        "peak_rss_mb": revsync["peak_rss_mb"],
        "relay_peak_rss_mb": revsync["relay_peak_rss_mb"],
        "floor_events_per_s": floor["events_per_s"],
        "floor_p50_ms": floor["p50_ms"],
        "floor_p99_ms": floor["p99_ms"],
        "floor_light_p50_ms": floor["light_p50_ms"],
        "floor_light_p99_ms": floor["light_p99_ms"],
        "floor_peak_rss_mb": floor["peak_rss_mb"],
        "raw_events_per_s": raw["events_per_s"],
        "raw_peak_rss_mb": raw["peak_rss_mb"],
        "faust_events": faust["events"],
        "faust_events_per_s": faust["events_per_s"],
        "faust_p50_ms": faust["p50_ms"],
        "faust_p99_ms": faust["p99_ms"],
        "faust_peak_rss_mb": faust["peak_rss_mb"],
        "ratio_to_floor": round(revsync["events_per_s"] / floor["events_per_s"], 3),
        "ratio_to_raw": round(revsync["events_per_s"] / raw["events_per_s"], 3),
        "ratio_to_faust": round(revsync["events_per_s"] / faust["events_per_s"], 2),
    }
    missed = [
        f"{name} {figures[name]} (target {'<' if name.endswith('_ms') else '≥'} {target})"
        for name, target in TARGETS.items()
        if (figures[name] >= target if name.endswith("_ms") else figures[name] < target)
    ]
    return {**figures, "verdict": "passed" if not missed else "missed: " + "; ".join(missed)}


# --- set-up, in the parent -------------------------------------------------------------------


def bench_catalog(settings: Settings, tag: str, partitions: int | None = None) -> Catalog:
    """The real catalog with topics and consumers renamed for this run alone (and with
    ``partitions`` for every topic, if given)."""
    raw = yaml.safe_load((settings.schemas_dir / "catalog.yaml").read_text())
    if partitions is not None:
        raw["defaults"]["partitions"] = partitions
        for topic in raw["topics"]:
            topic.pop("partitions", None)
    raw["consumers"] = {f"{name}-{tag}": spec for name, spec in raw["consumers"].items()}
    for topic in raw["topics"]:
        _, entity, event, major = topic["name"].split(".")
        topic["name"] = f"revsync.{entity}-{tag}.{event}.{major}"
        topic["consumers"] = [f"{name}-{tag}" for name in topic["consumers"]]
    return Catalog.model_validate(raw)


def bench_serde(settings: Settings, catalog: Catalog) -> EventSerde:
    """The serde of a run's catalog, as each process of the run makes it."""
    return EventSerde(
        SchemaRegistryClient(settings.registry_config()),
        catalog,
        SchemaRepository(settings.schemas_dir),
    )


def prepare(settings: Settings, events: int, partitions: int | None = None) -> dict[str, Any]:
    tag = "b" + uuid.uuid4().hex[:8]
    catalog = bench_catalog(settings, tag, partitions)
    schemas = SchemaRepository(settings.schemas_dir)
    registry = SchemaRegistryClient(settings.registry_config())
    list(register_contracts(registry, catalog, schemas, ReleaseRecord(settings.schemas_dir)))
    admin = AdminClient(settings.kafka_config())
    apply_changes(admin, catalog, plan_changes(admin, catalog))
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        ensure(connection, TABLES)
        connection.execute(STATE_TABLE)
        connection.commit()
    created = next(t.name for t in catalog.topics if t.name.endswith(".created.v1"))
    accepted = next(t.name for t in catalog.topics if t.name.endswith(".accepted.v1"))
    # The passthrough's output: any topic of this run that nothing else writes to.
    sink = next(t.name for t in catalog.topics if t.name.endswith(".rejected.v1"))
    serde = EventSerde(registry, catalog, schemas)
    fill(settings, serde, created, events, prefix=f"8015{tag}")
    return {
        "tag": tag,
        "created": created,
        "accepted": accepted,
        "sink": sink,
        "consumer": next(name for name in catalog.consumers if name.startswith("order-sync")),
    }


def sample_order() -> OrderCreated:
    address = Address(street="1 Market St", city="San Francisco", country_code="US")
    line = OrderLine(
        line_number=1,
        crm_line_id="8025g00000Line001",
        sku="SKU-101",
        product_name="Industrial sensor",
        product_line="SENSORS",
        quantity=Decimal(3),
        unit_of_measure="EA",
        unit_price=Decimal("199.99"),
        discount_amount=Decimal("9.97"),
        tax_amount=Decimal(114),
        line_total=Decimal("590.00"),
    )
    return OrderCreated(
        envelope=Envelope(
            event_id=uuid.uuid4(),
            event_type=OrderCreated.event_type,
            occurred_at=datetime.now(UTC),
            source_system=SourceSystem.CRM,
            correlation_id="bench",
            schema_version=1,
        ),
        crm_order_id="x",
        crm_order_number="00000001",
        crm_account_id="0015g00000AcMe",
        erp_customer_id="C-10042",
        price_book_id="01s5g00000StdPb",
        currency="USD",
        legal_entity="US01",
        region="NA",
        lines=[line],
        subtotal=Decimal("590.00"),
        discount_total=Decimal("9.97"),
        tax_total=Decimal(114),
        grand_total=Decimal("704.00"),
        ordered_at=datetime.now(UTC),
        billing_address=address,
        shipping_address=address,
    )


def fill(
    settings: Settings,
    serde: EventSerde,
    topic: str,
    events: int,
    *,
    prefix: str,
    rate_per_s: float | None = None,
) -> None:
    """``events`` orders with ids from ``prefix``, as fast as the producer goes or at a rate."""
    template = sample_order()
    tuning = passthrough.PRODUCER_TUNING if rate_per_s is None else {"linger.ms": 0}
    producer = Producer(settings.kafka_config(**tuning))
    began = time.perf_counter()
    for number in range(events):
        order_id = f"{prefix}{number:09d}"
        event = template.model_copy(
            update={
                "crm_order_id": order_id,
                "envelope": template.envelope.model_copy(
                    update={"event_id": uuid.uuid4(), "correlation_id": order_id}
                ),
            }
        )
        value = serde.serialize(topic, event)
        if rate_per_s is not None:
            time.sleep(max(0.0, began + number / rate_per_s - time.perf_counter()))
        while True:
            try:
                producer.produce(topic, key=order_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)


def reset(settings: Settings, setup: dict[str, Any]) -> None:
    """The run's state and order rows gone, so the next variant writes them as new too."""
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        connection.execute("TRUNCATE bench_orders")
        connection.execute(
            "DELETE FROM revsync_orders WHERE crm_order_id LIKE %s", (f"8015{setup['tag']}%",)
        )


def variant(
    settings: Settings,
    name: str,
    setup: dict[str, Any],
    events: int,
    environment: dict[str, str] | None = None,
) -> Any:
    """Run one variant in its own process (with ``environment`` added to its own) and read
    its figures from its last output line."""
    command = [sys.executable, "-m", "bench.runtime", name, json.dumps(setup), str(events)]
    if name == "faust":
        command = [
            sys.executable,
            str(Path(__file__).with_name("faust_app.py")),
            json.dumps(setup),
            str(events),
        ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(environment or {}), "PYTHONPATH": str(ROOT)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench variant {name} failed:\n{result.stderr[-4000:]}")
    # The figures are the last JSON line (Faust routes print() through its logger).
    lines = (result.stdout + result.stderr).splitlines()
    figures = next(
        (
            json.loads(line[line.index('{"events"') :].strip())
            for line in reversed(lines)
            if '{"events"' in line
        ),
        None,
    )
    if figures is None:
        raise RuntimeError(
            f"bench variant {name} printed no figures:\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    print(f"  {name:>8}: {figures}", file=sys.stderr)
    return figures


# --- variants, each in a process of its own ----------------------------------------------------


class BenchHandler:
    """The handler under test: one state upsert and one emitted event per order."""

    def __init__(self, accepted_topic: str) -> None:
        self.accepted_topic = accepted_topic

    def __call__(self, event: Inbound) -> Decision:
        assert isinstance(event, OrderCreated)
        erp_order_id = f"SO-{event.crm_order_id}"
        return Decision(
            writes=[StateWrite(UPSERT, (event.crm_order_id, "accepted", erp_order_id))],
            emits=[Emission(self.accepted_topic, accepted_for(event, erp_order_id))],
        )


def accepted_for(event: OrderCreated, erp_order_id: str) -> OrderAccepted:
    return OrderAccepted(
        envelope=caused_envelope(event.envelope, OrderAccepted.event_type),
        crm_order_id=event.crm_order_id,
        erp_order_id=erp_order_id,
        erp_order_number=erp_order_id,
        erp_customer_id=event.erp_customer_id or "C-0",
        credit_check=CreditCheckOutcome.APPROVED,
        pricing_outcome=PricingOutcome.MATCHED,
        currency=event.currency,
        erp_grand_total=event.grand_total,
        accepted_at=event.ordered_at,
    )


class Timed(Protocol):
    """A consumer under test, timing itself: when its first batch began, each batch from
    consumed to committed, and (once ``light_ms`` is a list) each record's milliseconds
    from produced to committed."""

    name: str
    """Its consumer group."""
    started: float | None
    timings: list[tuple[float, int]]
    light_ms: list[float] | None

    def run(self) -> None: ...

    def stop(self) -> None: ...


class TimedLoop(ConsumerLoop):
    """The consumer loop, timing itself."""

    started: float | None = None
    light_ms: list[float] | None = None

    def _run_batch(self, records: list[Record], releasing: frozenset[Hold] = frozenset()) -> None:
        began = time.perf_counter()
        if self.started is None:
            self.started = began
        super()._run_batch(records, releasing)
        self.timings = getattr(self, "timings", [])
        self.timings.append((time.perf_counter() - began, len(records)))
        if self.light_ms is not None:
            now_ms = time.time() * 1000
            self.light_ms += [now_ms - record.timestamp for record in records]


def run_revsync(settings: Settings, setup: dict[str, Any], events: int) -> dict[str, Any]:
    """The consumer loop here; the outbox relay in a process of its own, as deployed."""
    catalog = bench_catalog(settings, setup["tag"])
    serde = bench_serde(settings, catalog)
    loop = TimedLoop(
        consumer=setup["consumer"],
        catalog=catalog,
        handler=BenchHandler(setup["accepted"]),
        serde=serde,
        kafka_config=settings.kafka_config(),
        postgres_dsn=settings.postgres_dsn.get_secret_value(),
        policy=Policy(batch_size=BATCH_SIZE),
    )
    return measure(settings, setup, events, loop, serde)


def run_floor(settings: Settings, setup: dict[str, Any], events: int) -> dict[str, Any]:
    catalog = bench_catalog(settings, setup["tag"])
    serde = bench_serde(settings, catalog)
    return measure(settings, setup, events, FloorLoop(settings, setup, UPSERT, BATCH_SIZE), serde)


def measure(
    settings: Settings, setup: dict[str, Any], events: int, under_test: Timed, serde: EventSerde
) -> dict[str, Any]:
    """Run ``under_test`` over the backlog to its last event published, then at a light load;
    the relay publishes from a process of its own."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.runtime", "relay", json.dumps(setup), str(events)],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Rows an earlier relay published but had not yet deleted when stopped go out again (the
    # relay publishes at least once): counted before this run's, not as this run's.
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        while db.execute(
            "SELECT EXISTS (SELECT FROM revsync_outbox WHERE topic = %s)", (setup["accepted"],)
        ).fetchone() != (False,):
            time.sleep(0.05)
    watermarks = Consumer(settings.kafka_config(**{"group.id": f"bench-{uuid.uuid4()}"}))
    partitions = watermarks.list_topics(setup["accepted"], timeout=10).topics[setup["accepted"]]
    partition_ids = list(partitions.partitions)
    time.sleep(1)  # the last of them acknowledged
    base = emitted(watermarks, setup["accepted"], partition_ids)
    # What the consumer under test has before it: the topic past its group's committed
    # positions (an earlier variant's light load included).
    events = backlog(settings, setup["created"], under_test.name)
    consumer = threading.Thread(target=under_test.run)
    consumer.start()
    while emitted(watermarks, setup["accepted"], partition_ids) < base + events:
        time.sleep(0.1)
    finished = time.perf_counter()
    saturated = sorted(seconds for seconds, size in under_test.timings for _ in range(size))
    light_events = LIGHT_EVENTS if setup.get("light", True) else 0
    under_test.light_ms = []
    fill(
        settings,
        serde,
        setup["created"],
        light_events,
        prefix=f"8015{setup['tag']}L{uuid.uuid4().hex[:4]}",
        rate_per_s=LIGHT_RATE,
    )
    while emitted(watermarks, setup["accepted"], partition_ids) < base + events + light_events:
        time.sleep(0.05)
    watermarks.close()
    under_test.stop()
    consumer.join()
    relay.send_signal(signal.SIGTERM)
    relay_figures = json.loads((relay.communicate(timeout=60)[0] or "{}").strip().splitlines()[-1])
    assert under_test.started is not None
    light = sorted(under_test.light_ms) or [float("nan")]
    return {
        "events": events,
        "events_per_s": round(events / (finished - under_test.started)),
        "p50_ms": round(statistics.median(saturated) * 1000, 3),
        "p99_ms": round(saturated[int(len(saturated) * 0.99)] * 1000, 3),
        "light_p50_ms": round(statistics.median(light), 2),
        "light_p99_ms": round(light[int(len(light) * 0.99)], 2),
        "peak_rss_mb": peak_rss_mb(),
        "relay_peak_rss_mb": relay_figures["peak_rss_mb"],
    }


def backlog(settings: Settings, topic: str, group: str) -> int:
    """How many records of ``topic`` are past ``group``'s committed positions."""
    reader = Consumer(settings.kafka_config(**{"group.id": group}))
    try:
        partitions = list(reader.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(
            reader.get_watermark_offsets(TopicPartition(topic, at.partition), timeout=10)[1]
            - max(at.offset, 0)
            for at in committed
        )
    finally:
        reader.close()


def emitted(consumer: Consumer, topic: str, partitions: list[int]) -> int:
    return sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
    )


def run_relay(settings: Settings, setup: dict[str, Any], events: int) -> dict[str, Any]:
    relay = OutboxRelay(
        dsn=settings.postgres_dsn.get_secret_value(),
        kafka_config=settings.kafka_config(),
        batch_size=2000,
        poll_interval_s=0.2,
    )
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    relay.run()
    return {"events": events, "peak_rss_mb": peak_rss_mb()}


def run_raw(settings: Settings, setup: dict[str, Any], events: int) -> dict[str, Any]:
    seconds = passthrough.pass_through(settings, setup["created"], setup["sink"], events)
    return {"events": events, "events_per_s": round(events / seconds), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


VARIANTS = {"revsync": run_revsync, "floor": run_floor, "raw": run_raw, "relay": run_relay}

if __name__ == "__main__":
    figures = VARIANTS[sys.argv[1]](Settings.load(), json.loads(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(figures))
