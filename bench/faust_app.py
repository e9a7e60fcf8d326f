"""The runtime scenario's handler semantics on faust-streaming, written as a Faust user would:
per event, one transaction for the inbox row and the state upsert, then the emitted event.
Its latency figures are per event, from taken off the stream to its transaction committed.

    python bench/faust_app.py SETUP_JSON EVENTS
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

import faust
import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench.runtime import UPSERT, accepted_for, bench_catalog
from revsync.contracts.events import OrderCreated
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.settings import Settings

setup: dict[str, Any] = json.loads(sys.argv[1])
events = int(sys.argv[2])
settings = Settings.load()
catalog = bench_catalog(settings, setup["tag"])
serde = EventSerde(
    SchemaRegistryClient(settings.registry_config()),
    catalog,
    SchemaRepository(settings.schemas_dir),
)
consumer = f"faust-{setup['consumer']}"

app = faust.App(
    f"faust-bench-{setup['tag']}",
    broker=f"kafka://{settings.bootstrap_servers}",
    store="memory://",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    topic_partitions=6,
    datadir=tempfile.mkdtemp(prefix="faust-bench-"),
)
source = app.topic(
    setup["created"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
sink = app.topic(setup["accepted"], key_serializer="raw", value_serializer="raw")
latencies: list[float] = []
started: list[float] = []


@app.agent(source)
async def handle(stream: Any) -> None:
    connection = await psycopg.AsyncConnection.connect(settings.postgres_dsn.get_secret_value())
    async for key, value in stream.items():
        began = time.perf_counter()
        if not started:
            started.append(began)
        event = serde.deserialize(setup["created"], value)
        assert isinstance(event, OrderCreated)
        async with connection.transaction():
            claimed = await connection.execute(
                "INSERT INTO revsync_inbox (consumer, event_id) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING RETURNING event_id",
                (consumer, event.envelope.event_id),
            )
            if await claimed.fetchone():
                erp_order_id = f"SO-{event.crm_order_id}"
                # The bench's set-based upsert, over a batch of one.
                await connection.execute(
                    UPSERT, ([event.crm_order_id], ["accepted"], [erp_order_id])
                )
                accepted = accepted_for(event, erp_order_id)
                await sink.send(key=key, value=serde.serialize(setup["accepted"], accepted))
        latencies.append(time.perf_counter() - began)
        if len(latencies) == events:
            await app.producer.flush()
            ordered = sorted(latencies)
            print(
                json.dumps(
                    {
                        "events": events,
                        "events_per_s": round(events / (time.perf_counter() - started[0])),
                        "p50_ms": round(statistics.median(ordered) * 1000, 4),
                        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 4),
                        "peak_rss_mb": round(
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                        ),
                    }
                ),
                flush=True,
            )
            os._exit(0)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
