"""SCENARIO=growth: how revsync's per-event cost grows, with the runtime bench's handler.

- With the inbox: ``events`` orders through the idempotent path with an empty inbox, then as
  many new ones after INBOX_ROWS rows were added to the same consumer's inbox (the table
  every event's claim inserts into, and its primary key every claim probes). This runs in a
  database of its own (GROWTH_DATABASE, on the same server), so the rows are gone afterwards.
- With processes: ``events`` orders on a topic of PARTITIONS partitions, consumed by 1, 2 and 4
  processes of one group (started and assigned first, then the backlog is written), with the
  per-core efficiency against one process (this machine has CORES cores), and each
  process's peak RSS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg
from confluent_kafka import Consumer
from psycopg import sql

from bench import runtime
from revsync.runtime.loop import ConsumerLoop, Policy
from revsync.runtime.observability import Liveness
from revsync.settings import Settings

GROWTH_DATABASE = "revsync_growth"
INBOX_ROWS = 10_000_000
PARTITIONS = 8
PROCESSES = (1, 2, 4)
CORES = os.cpu_count() or 1


def run(settings: Settings, events: int) -> dict[str, Any]:
    inbox = with_inbox(settings, events)
    processes = {count: with_processes(settings, events, count) for count in PROCESSES}
    one = processes[1]["events_per_s"]
    figures: dict[str, Any] = {"events": events, **inbox, "cores": CORES}
    for count, measured in processes.items():
        figures[f"processes_{count}_events_per_s"] = measured["events_per_s"]
        figures[f"processes_{count}_per_core_efficiency"] = round(
            measured["events_per_s"] / (min(count, CORES) * one), 3
        )
        figures[f"processes_{count}_peak_rss_mb"] = measured["peak_rss_mb"]
    return figures


# --- the inbox ---------------------------------------------------------------------------------


def with_inbox(settings: Settings, events: int) -> dict[str, Any]:
    dsn = settings.postgres_dsn.get_secret_value()
    database = sql.Identifier(GROWTH_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as server:
        server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        server.execute(sql.SQL("CREATE DATABASE {}").format(database))
    own = urlsplit(dsn)._replace(path=f"/{GROWTH_DATABASE}").geturl()
    environment = {"REVSYNC_POSTGRES_DSN": own}
    try:
        scoped = settings.model_copy(update={"postgres_dsn": type(settings.postgres_dsn)(own)})
        setup = {**runtime.prepare(scoped, events), "light": False}
        empty = runtime.variant(settings, "revsync", setup, events, environment)
        with psycopg.connect(own, autocommit=True) as db:
            started = time.perf_counter()
            db.execute(
                "INSERT INTO revsync_inbox (consumer, event_id) "
                "SELECT %s, gen_random_uuid() FROM generate_series(1, %s)",
                (setup["consumer"], INBOX_ROWS),
            )
            db.execute("VACUUM ANALYZE revsync_inbox")
            fill_s = time.perf_counter() - started
            rows = db.execute("SELECT count(*) FROM revsync_inbox").fetchone()
        assert rows is not None
        runtime.reset(scoped, setup)
        serde = runtime.bench_serde(settings, runtime.bench_catalog(settings, setup["tag"]))
        runtime.fill(settings, serde, setup["created"], events, prefix=f"8015{setup['tag']}F")
        full = runtime.variant(settings, "revsync", setup, events, environment)
    finally:
        with psycopg.connect(dsn, autocommit=True) as server:
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
    return {
        "inbox_empty_events_per_s": empty["events_per_s"],
        "inbox_empty_us_per_event": round(1e6 / empty["events_per_s"], 1),
        "inbox_empty_batch_p50_ms": empty["p50_ms"],
        "inbox_rows": int(rows[0]),
        "inbox_fill_s": round(fill_s, 1),
        "inbox_full_events_per_s": full["events_per_s"],
        "inbox_full_us_per_event": round(1e6 / full["events_per_s"], 1),
        "inbox_full_batch_p50_ms": full["p50_ms"],
        "inbox_cost_ratio": round(empty["events_per_s"] / full["events_per_s"], 3),
    }


# --- processes ---------------------------------------------------------------------------------


def with_processes(settings: Settings, events: int, count: int) -> dict[str, Any]:
    """``count`` members of one group, each started and assigned before the backlog is
    written; events/s from the first written to the last published."""
    setup = runtime.prepare(settings, 0, partitions=PARTITIONS)
    command = [sys.executable, "-m", "bench.growth", "member", json.dumps(setup)]
    environment = {**os.environ, "PYTHONPATH": str(runtime.ROOT)}
    members = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
        for _ in range(count)
    ]
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.runtime", "relay", json.dumps(setup), str(events)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    for member in members:
        assert member.stdout is not None
        if member.stdout.readline().strip() != "assigned":
            raise RuntimeError("a consumer process did not join its group")
    serde = runtime.bench_serde(
        settings, runtime.bench_catalog(settings, setup["tag"], partitions=PARTITIONS)
    )
    watermarks = Consumer(settings.kafka_config(**{"group.id": f"bench-{uuid.uuid4()}"}))
    accepted = setup["accepted"]
    partitions = list(watermarks.list_topics(accepted, timeout=10).topics[accepted].partitions)
    started = time.perf_counter()
    runtime.fill(settings, serde, setup["created"], events, prefix=f"8015{setup['tag']}")
    while runtime.emitted(watermarks, accepted, partitions) < events:
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    watermarks.close()
    peaks = []
    for process in (*members, relay):
        process.send_signal(signal.SIGTERM)
    for member in members:
        output = member.communicate(timeout=120)[0]
        peaks.append(json.loads(output.strip().splitlines()[-1])["peak_rss_mb"])
    relay.communicate(timeout=60)
    return {"events_per_s": round(events / seconds), "peak_rss_mb": max(peaks)}


def run_member(settings: Settings, setup: dict[str, Any]) -> dict[str, Any]:
    """One member of the group: says ``assigned`` once it has partitions, runs until told to
    stop."""
    catalog = runtime.bench_catalog(settings, setup["tag"], partitions=PARTITIONS)
    liveness = Liveness(timeout_s=60)
    loop = ConsumerLoop(
        consumer=setup["consumer"],
        catalog=catalog,
        handler=runtime.BenchHandler(setup["accepted"]),
        serde=runtime.bench_serde(settings, catalog),
        kafka_config=settings.kafka_config(),
        postgres_dsn=settings.postgres_dsn.get_secret_value(),
        policy=Policy(batch_size=runtime.BATCH_SIZE),
        liveness=liveness,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    consumer = threading.Thread(target=loop.run)
    consumer.start()
    while not liveness.ready:
        time.sleep(0.05)
    print("assigned", flush=True)
    stopped.wait()
    loop.stop()
    consumer.join()
    return {"peak_rss_mb": runtime.peak_rss_mb()}


if __name__ == "__main__" and sys.argv[1] == "member":
    print(json.dumps(run_member(Settings.load(), json.loads(sys.argv[2]))))
