"""SCENARIO=runtime: events through the full idempotent path (inbox, one state upsert, one
emitted event through the outbox relay) beside a raw confluent-kafka passthrough and the same
handler semantics on faust-streaming, all on the same broker in the same run.

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
from typing import Any

import psycopg
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench import passthrough
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

FAUST_EVENTS = 20_000
STATE_TABLE = """CREATE TABLE IF NOT EXISTS bench_orders (
    crm_order_id text PRIMARY KEY, status text NOT NULL, erp_order_id text NOT NULL)"""
UPSERT = (
    "INSERT INTO bench_orders (crm_order_id, status, erp_order_id) "
    "SELECT DISTINCT ON (id) id, s, e FROM unnest(%s::text[], %s::text[], %s::text[]) "
    "WITH ORDINALITY AS r(id, s, e, n) ORDER BY id, n DESC "
    "ON CONFLICT (crm_order_id) DO UPDATE SET status = excluded.status, "
    "erp_order_id = excluded.erp_order_id"
)


def run(settings: Settings, events: int) -> dict[str, Any]:
    setup = prepare(settings, events)
    revsync = variant(settings, "revsync", setup, events)
    raw = variant(settings, "raw", setup, events)
    faust = variant(settings, "faust", setup, min(events, FAUST_EVENTS))
    return {
        "events": events,
        "events_per_s": revsync["events_per_s"],
        "p50_ms": revsync["p50_ms"],
        "p99_ms": revsync["p99_ms"],
        "handler_p50_ms": revsync["handler_p50_ms"],
        "handler_p99_ms": revsync["handler_p99_ms"],
        "peak_rss_mb": revsync["peak_rss_mb"],
        "relay_peak_rss_mb": revsync["relay_peak_rss_mb"],
        "raw_events_per_s": raw["events_per_s"],
        "raw_peak_rss_mb": raw["peak_rss_mb"],
        "faust_events": faust["events"],
        "faust_events_per_s": faust["events_per_s"],
        "faust_p50_ms": faust["p50_ms"],
        "faust_p99_ms": faust["p99_ms"],
        "faust_peak_rss_mb": faust["peak_rss_mb"],
        "ratio_to_raw": round(revsync["events_per_s"] / raw["events_per_s"], 3),
        "ratio_to_faust": round(revsync["events_per_s"] / faust["events_per_s"], 2),
    }


# --- set-up, in the parent -------------------------------------------------------------------


def bench_catalog(settings: Settings, tag: str) -> Catalog:
    """The real catalog with topics and consumers renamed for this run alone."""
    raw = yaml.safe_load((settings.schemas_dir / "catalog.yaml").read_text())
    raw["consumers"] = {f"{name}-{tag}": spec for name, spec in raw["consumers"].items()}
    for topic in raw["topics"]:
        _, entity, event, major = topic["name"].split(".")
        topic["name"] = f"revsync.{entity}-{tag}.{event}.{major}"
        topic["consumers"] = [f"{name}-{tag}" for name in topic["consumers"]]
    return Catalog.model_validate(raw)


def prepare(settings: Settings, events: int) -> dict[str, Any]:
    tag = "b" + uuid.uuid4().hex[:8]
    catalog = bench_catalog(settings, tag)
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
    fill(settings, serde, created, events)
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


def fill(settings: Settings, serde: EventSerde, topic: str, events: int) -> None:
    template = sample_order()
    producer = Producer(settings.kafka_config(**passthrough.PRODUCER_TUNING))
    for number in range(events):
        order_id = f"8015g{number:013d}"
        event = template.model_copy(
            update={
                "crm_order_id": order_id,
                "envelope": template.envelope.model_copy(
                    update={"event_id": uuid.uuid4(), "correlation_id": order_id}
                ),
            }
        )
        value = serde.serialize(topic, event)
        while True:
            try:
                producer.produce(topic, key=order_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def variant(settings: Settings, name: str, setup: dict[str, Any], events: int) -> Any:
    """Run one variant in its own process and read its figures from its last output line."""
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
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
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
        self.latencies: list[float] = []
        self.started: float | None = None

    def __call__(self, event: Inbound) -> Decision:
        began = time.perf_counter()
        if self.started is None:
            self.started = began
        assert isinstance(event, OrderCreated)
        erp_order_id = f"SO-{event.crm_order_id}"
        decision = Decision(
            writes=[StateWrite(UPSERT, (event.crm_order_id, "accepted", erp_order_id))],
            emits=[Emission(self.accepted_topic, accepted_for(event, erp_order_id))],
        )
        self.latencies.append(time.perf_counter() - began)
        return decision


def accepted_for(event: OrderCreated, erp_order_id: str) -> OrderAccepted:
    return OrderAccepted.model_construct(
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


def run_revsync(settings: Settings, setup: dict[str, Any], events: int) -> dict[str, Any]:
    """The consumer loop here; the outbox relay in a process of its own, as deployed."""
    directory = settings.schemas_dir
    catalog = bench_catalog(settings, setup["tag"])
    registry = SchemaRegistryClient(settings.registry_config())
    handler = BenchHandler(setup["accepted"])
    loop = TimedLoop(
        consumer=setup["consumer"],
        catalog=catalog,
        handler=handler,
        serde=EventSerde(registry, catalog, SchemaRepository(directory)),
        kafka_config=settings.kafka_config(),
        postgres_dsn=settings.postgres_dsn.get_secret_value(),
        policy=Policy(batch_size=1000, batch_timeout_s=0.05),
    )
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.runtime", "relay", json.dumps(setup), str(events)],
        stdout=subprocess.PIPE,
        text=True,
    )
    consumer = threading.Thread(target=loop.run)
    consumer.start()
    watermarks = Consumer(settings.kafka_config(**{"group.id": f"bench-{uuid.uuid4()}"}))
    partitions = watermarks.list_topics(setup["accepted"], timeout=10).topics[setup["accepted"]]
    while emitted(watermarks, setup["accepted"], list(partitions.partitions)) < events:
        time.sleep(0.05)
    finished = time.perf_counter()
    watermarks.close()
    loop.stop()
    consumer.join()
    relay.send_signal(signal.SIGTERM)
    relay_figures = json.loads((relay.communicate(timeout=60)[0] or "{}").strip().splitlines()[-1])
    assert handler.started is not None
    # Every event waits for its whole batch: from consumed to committed.
    latencies = sorted(seconds for seconds, size in loop.timings for _ in range(size))
    in_handler = sorted(handler.latencies)
    return {
        "events": events,
        "events_per_s": round(events / (finished - handler.started)),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "handler_p50_ms": round(statistics.median(in_handler) * 1000, 4),
        "handler_p99_ms": round(in_handler[int(len(in_handler) * 0.99)] * 1000, 4),
        "peak_rss_mb": peak_rss_mb(),
        "relay_peak_rss_mb": relay_figures["peak_rss_mb"],
    }


class TimedLoop(ConsumerLoop):
    """The consumer loop, timing each batch from consumed to committed."""

    timings: list[tuple[float, int]]

    def _run_batch(self, records: list[Record], releasing: frozenset[Hold] = frozenset()) -> None:
        began = time.perf_counter()
        super()._run_batch(records, releasing)
        self.timings = getattr(self, "timings", [])
        self.timings.append((time.perf_counter() - began, len(records)))


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


VARIANTS = {"revsync": run_revsync, "raw": run_raw, "relay": run_relay}

if __name__ == "__main__":
    figures = VARIANTS[sys.argv[1]](Settings.load(), json.loads(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(figures))
