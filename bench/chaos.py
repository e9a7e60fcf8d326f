"""SCENARIO=chaos (``make chaos``): the whole pipeline on a stack of its own — three Kafka
brokers (replication factor 3, ``min.insync.replicas=2``), the schema registry and PostgreSQL,
both sandboxes, every service its own process — while orders stream in and faults are
applied one after the other: services SIGKILLed at random points, a broker of three SIGKILLed
and restarted, PostgreSQL SIGKILLed and restarted, the registry down, and through Toxiproxy
between the services and Kafka, PostgreSQL, the registry, the CRM (its REST API and the
Pub/Sub API the CDC bridge subscribes to) and the ERP: latency with jitter, connection resets,
a blackhole; an ERP 503 storm and 429s with Retry-After.

It judges from the systems' own records, not from revsync's metrics: orders not in their
expected end state in the CRM, ERP sales orders per CRM order, CRM invoices and shipments per
ERP document, distinct event ids on each canonical topic against what the orders imply, the
records republished (the same event id again) and each fault's recovery time (from its end
until the CRM shows the next order settle).

The services reach each broker through a proxy of its own too: the brokers advertise the
proxies' addresses (``REVSYNC_STACK_KAFKA_PROXY_PORT``) and replicate among themselves on a
listener past them, so the faults cut clients from Kafka, not the brokers from each other.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Consumer, TopicPartition
from sandbox import scenario
from sandbox.harness import Pipeline, private_contracts, with_consumer_settings

from revsync.contracts.catalog import TopicFormat
from revsync.runtime import headers as h
from revsync.settings import Settings
from revsync_devstack.settings import REPO_ROOT, StackSettings
from revsync_devstack.stack import Component, LocalStack
from revsync_devstack.toxiproxy import Toxiproxy, ToxiproxyServer

SERVICES = (
    "crm-cdc-bridge",
    "order-sync",
    "invoice-sync",
    "fulfillment-sync",
    "erp-outbox-publisher",
)
# Every port below 32768: Linux hands out 32768-60999 to outgoing connections, and one of
# those holding a port the stack wants would refuse its start.
CHAOS_STACK: dict[str, Any] = {
    "dir": REPO_ROOT / ".stack-chaos",
    "kafka_brokers": 3,
    "kafka_port": 26092,
    "kafka_controller_port": 26192,
    "registry_port": 26081,
    "registry_management_port": 26082,
    "postgres_port": 26432,
    "kafka_heap": "384m",
    "kafka_proxy_port": 26292,
}
RETRY_TIERS = ("2s", "10s", "30s", "1m")
TOXIPROXY_PORT = 26474
LOGS = CHAOS_STACK["dir"] / "services"
"""Each service's log of the last run, kept to read after it."""
PROXY_PORTS = {
    "postgres": 26433,
    "registry": 26083,
    "crm": 26084,
    "erp": 26085,
    "pubsub": 26086,
}


@dataclass(frozen=True)
class Profile:
    orders_per_s: float
    service_kills: int
    """SIGKILLs of each service."""
    outage_s: float
    """How long the registry is down."""
    blackhole_s: float
    """How long a proxy swallows everything."""
    settle_timeout_s: float


PROFILES = {
    "short": Profile(
        orders_per_s=5, service_kills=1, outage_s=10, blackhole_s=10, settle_timeout_s=600
    ),
    "full": Profile(
        orders_per_s=25, service_kills=3, outage_s=30, blackhole_s=20, settle_timeout_s=1800
    ),
}
LATENCY_MS = {"postgres": 150, "registry": 300, "kafka": 100}
"""Each proxied dependency's added latency; the jitter is two thirds of it."""


@dataclass
class FaultLog:
    started: float
    faults: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, began: float, ended: float, recovery_s: float | None) -> None:
        entry = {
            "fault": name,
            "at_s": round(began - self.started, 1),
            "lasted_s": round(ended - began, 1),
            "recovery_s": None if recovery_s is None else round(recovery_s, 1),
        }
        self.faults.append(entry)
        recovered = "no progress seen" if recovery_s is None else f"recovered in {recovery_s:.1f}s"
        print(f"  {entry['at_s']:>7}s  {name:<44} {entry['lasted_s']:>5}s  {recovered}", flush=True)


def run(_settings: Settings, events: int) -> dict[str, Any]:
    """``events`` orders streamed in while the faults run; the profile (``CHAOS_PROFILE``:
    short or full) says how hard and how long."""
    profile = PROFILES[os.environ.get("CHAOS_PROFILE", "short")]
    stack_settings = StackSettings(**CHAOS_STACK)
    stack = LocalStack(stack_settings)
    stack_settings.dir.mkdir(parents=True, exist_ok=True)
    with (
        ToxiproxyServer(TOXIPROXY_PORT, log=stack_settings.dir / "toxiproxy.log") as proxy,
        tempfile.TemporaryDirectory(prefix="revsync-chaos-") as scratch,
    ):
        # Before the brokers start: they advertise the proxies' addresses.
        for node in range(1, stack.broker_count + 1):
            proxy.create_proxy(
                f"kafka-{node}",
                f"127.0.0.1:{stack_settings.kafka_advertised_port(node)}",
                f"127.0.0.1:{stack_settings.kafka_client_port(node)}",
            )
        stack.up()
        try:
            settings = stack.client_settings()
            return _run(stack, settings, proxy, Path(scratch), events, profile)
        finally:
            stack.down()


def _run(
    stack: LocalStack,
    settings: Settings,
    proxy: Toxiproxy,
    scratch: Path,
    count: int,
    profile: Profile,
) -> dict[str, Any]:
    rng = random.Random(11)  # noqa: S311 - a fault schedule, not a secret
    shutil.rmtree(LOGS, ignore_errors=True)
    contracts = private_contracts(settings.schemas_dir, scratch / "contracts")
    # Tiers that outlast the longest outage (with the in-process retries) yet keep a record
    # failed during one from waiting ten minutes: no order may end in a dead letter here.
    with_consumer_settings(contracts, retry_tiers=list(RETRY_TIERS))
    routes: dict[str, str] = {}

    def via(name: str, address: str) -> str:
        if not address:  # asked before the sandboxes run (registering the contracts)
            return address
        if name not in routes:
            routes[name] = _proxied(proxy, name, address)
        return routes[name]

    pipeline = Pipeline(
        settings=settings,
        workdir=LOGS,
        schemas_dir=contracts,
        invoice_delay_s=0.5,
        ship_delay_s=0.5,
        via=via,
    )
    pipeline.start(report=lambda step: print(f"chaos: {step}", flush=True))
    try:
        data = scenario.seed(pipeline.crm, pipeline.erp, rng)
        pusher = _Pusher(pipeline, data, count, profile.orders_per_s, rng)
        pusher.start()
        log = FaultLog(time.monotonic())
        print("chaos: faults (at, fault, duration, recovery)", flush=True)
        for name, fault in _schedule(stack, pipeline, proxy, profile, rng):
            began = time.monotonic()
            fault()
            ended = time.monotonic()
            log.add(name, began, ended, _recovery(pipeline))
        pusher.faults_over.set()
        pusher.join()
        if pusher.error is not None:
            raise pusher.error
        outcome = pipeline.wait_settled(profile.settle_timeout_s)
        judged = _judge(pipeline, settings, contracts)
    finally:
        pipeline.stop()
    recoveries = [f["recovery_s"] for f in log.faults if f["recovery_s"] is not None]
    figures = {
        "profile": os.environ.get("CHAOS_PROFILE", "short"),
        "orders": len(pipeline.planned),
        "faults_applied": len(log.faults),
        "not_in_end_state": outcome.pending + len(outcome.wrong),
        **judged,
        "worst_recovery_s": max(recoveries, default=None),
        "faults": log.faults,
    }
    figures["verdict"] = _verdict(figures)
    return figures


def _verdict(figures: dict[str, Any]) -> str:
    """ "passed", or what was lost or doubled."""
    broken = [
        f"{name} {figures[name]}"
        for name in (
            "not_in_end_state",
            "crm_orders_without_erp_order",
            "doubled_erp_orders",
            "crm_invoices_missing",
            "crm_invoices_doubled",
            "crm_shipments_missing",
            "crm_shipments_doubled",
        )
        if figures[name] != 0
    ]
    expected, found = figures["expected_events"], figures["distinct_events"]
    broken += [
        f"{topic}: {found.get(topic, 0)} distinct events, {count} expected"
        for topic, count in expected.items()
        if found.get(topic, 0) != count
    ]
    return "passed" if not broken else "failed: " + "; ".join(broken)


# --- the faults ------------------------------------------------------------------------------


def _schedule(
    stack: LocalStack, pipeline: Pipeline, proxy: Toxiproxy, profile: Profile, rng: random.Random
) -> Iterator[tuple[str, Callable[[], None]]]:
    outage, blackhole = profile.outage_s, profile.blackhole_s
    kills = [name for name in SERVICES for _ in range(profile.service_kills)]
    rng.shuffle(kills)
    kafka = tuple(f"kafka-{node}" for node in range(1, stack.broker_count + 1))

    def toxic(target: str, kind: str, seconds: float = 10) -> Callable[[], None]:
        names = kafka if target == "kafka" else (target,)
        return lambda: _toxic(proxy, names, LATENCY_MS.get(target, 0), kind, seconds)

    network: list[tuple[str, Callable[[], None]]] = [
        ("postgres: latency 150 ms ± 100 ms, 10 s", toxic("postgres", "latency")),
        ("erp: connections reset, 5 s", toxic("erp", "reset", 5)),
        (f"crm: blackhole, {blackhole:.0f} s", toxic("crm", "blackhole", blackhole)),
        ("crm pub/sub api: connections reset, 5 s", toxic("pubsub", "reset", 5)),
        (f"crm pub/sub api: blackhole, {blackhole:.0f} s", toxic("pubsub", "blackhole", blackhole)),
        ("registry: latency 300 ms ± 200 ms, 10 s", toxic("registry", "latency")),
        ("kafka: latency 100 ms ± 67 ms, 10 s", toxic("kafka", "latency")),
        ("kafka: connections reset, 5 s", toxic("kafka", "reset", 5)),
        (f"kafka: blackhole, {blackhole:.0f} s", toxic("kafka", "blackhole", blackhole)),
        ("erp: 503 storm, 10 s", lambda: _erp(pipeline, error_rate=1)),
        ("erp: 429 with Retry-After 2 s, 10 s", lambda: _erp(pipeline, throttle_rate=0.5)),
    ]
    systems: list[tuple[str, Callable[[], None]]] = [
        ("kafka: SIGKILL broker 2 of 3, restart after 10 s", lambda: _broker(stack, 2)),
        ("postgresql: SIGKILL, restart", lambda: _crash(stack, stack.postgres, 0)),
        (f"registry: down {outage:.0f} s", lambda: _crash(stack, stack.registry, outage)),
    ]
    steps = network + systems
    for name in kills:
        steps.append((f"{name}: SIGKILL, restart", _killer(pipeline, name, rng)))
    rng.shuffle(steps)
    yield from steps


def _killer(pipeline: Pipeline, name: str, rng: random.Random) -> Callable[[], None]:
    def kill() -> None:
        time.sleep(rng.uniform(0, 3))  # a random point in its work
        pipeline.restart(name, hard=True)

    return kill


def _toxic(
    proxy: Toxiproxy, names: tuple[str, ...], latency_ms: int, kind: str, seconds: float
) -> None:
    """A toxic on every proxy of ``names`` at once, for ``seconds``."""
    toxics = []
    for name in names:
        if kind == "latency":
            toxic = proxy.add_latency(name, latency_ms, jitter_ms=latency_ms * 2 // 3)
        elif kind == "reset":
            toxic = proxy.add_reset_peer(name)
        else:
            toxic = proxy.add_timeout(name)  # data goes nowhere, nothing comes back
        toxics.append((name, toxic.name))
    time.sleep(seconds)
    for name, toxic_name in toxics:
        proxy.remove_toxic(name, toxic_name)


def _erp(pipeline: Pipeline, **faults: float) -> None:
    pipeline.erp.set_faults(**faults, retry_after_s=2)
    time.sleep(10)
    pipeline.erp.set_faults(error_rate=0, throttle_rate=0)


def _broker(stack: LocalStack, node_id: int) -> None:
    stack.kill_broker(node_id)
    time.sleep(10)
    stack.start_broker(node_id)


def _crash(stack: LocalStack, component: Component, down_s: float) -> None:
    """SIGKILL a server, as a crash would, and start it again after ``down_s``."""
    pid = component.pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    time.sleep(max(down_s, 1))
    deadline = time.monotonic() + 120
    while True:
        try:
            stack.up()  # starts what is not running, and waits for it
            return
        except Exception as error:  # a server killed a moment ago may refuse to start yet
            if time.monotonic() > deadline:
                raise
            print(f"chaos: starting {component.name} again: {error}", flush=True)
            time.sleep(2)


# --- orders in, progress out -------------------------------------------------------------------


class _Pusher(threading.Thread):
    """Pushes orders into the CRM at a steady rate, as sales reps would, until at least
    ``count`` are in and the faults are over: every fault meets orders in flight."""

    def __init__(
        self,
        pipeline: Pipeline,
        data: scenario.MasterData,
        count: int,
        per_s: float,
        rng: random.Random,
    ) -> None:
        super().__init__(name="chaos-orders", daemon=True)
        self.pipeline = pipeline
        self.data = data
        self.count = count
        self.per_s = per_s
        self.rng = rng
        self.faults_over = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        chunk = max(int(self.per_s), 1)
        try:
            while len(self.pipeline.planned) < self.count or not self.faults_over.is_set():
                began = time.monotonic()
                self.pipeline.push(list(scenario.orders(self.data, chunk, self.rng)))
                time.sleep(max(1 - (time.monotonic() - began), 0))
        except BaseException as error:
            self.error = error


def _recovery(pipeline: Pipeline, timeout_s: float = 180) -> float | None:
    """Seconds from now until the CRM shows one more order settled than it does now."""
    began = time.monotonic()
    before = pipeline.outcome().settled
    while time.monotonic() - began < timeout_s:
        if pipeline.outcome().settled > before:
            return time.monotonic() - began
        time.sleep(0.5)
    return None


# --- judging from the systems' own records ------------------------------------------------------


def _judge(pipeline: Pipeline, settings: Settings, contracts: Path) -> dict[str, Any]:
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
        rows = db.execute(
            "SELECT external_id, count(*) FROM erp.sales_orders GROUP BY external_id"
        ).fetchall()
        erp_documents = {
            kind: {str(row[0]) for row in db.execute(f"SELECT id FROM erp.{kind}")}  # noqa: S608
            for kind in ("invoices", "shipments")
        }
    per_order = Counter(int(count) for _, count in rows)
    crm_copies = {
        "invoices": Counter(
            str(r["ERP_Invoice_Id__c"]) for r in pipeline.crm.records("Invoice__c")
        ),
        "shipments": Counter(
            str(r["ERP_Shipment_Id__c"]) for r in pipeline.crm.records("Shipment__c")
        ),
    }
    planned = dict(pipeline.planned)
    shipped = sum(1 for expected in planned.values() if expected == scenario.SHIPPED)
    topics = _events(settings, pipeline)
    implied = _implied_orders(pipeline, planned)
    return {
        "erp_orders_per_crm_order": dict(sorted(per_order.items())),
        "crm_orders_without_erp_order": shipped - sum(per_order.values()),
        "doubled_erp_orders": sum(n for copies, n in per_order.items() if copies > 1),
        "crm_invoices_missing": len(erp_documents["invoices"] - set(crm_copies["invoices"])),
        "crm_invoices_doubled": sum(1 for n in crm_copies["invoices"].values() if n > 1),
        "crm_shipments_missing": len(erp_documents["shipments"] - set(crm_copies["shipments"])),
        "crm_shipments_doubled": sum(1 for n in crm_copies["shipments"].values() if n > 1),
        "distinct_events": {topic: len(found.ids) for topic, found in topics.items()},
        "expected_events": {topic: len(orders) for topic, orders in implied.items()},
        "orders_without_their_event": {
            topic: sorted(orders - topics[topic].keys)[:20]
            for topic, orders in implied.items()
            if orders - topics[topic].keys
        },
        "republished": sum(found.records - len(found.ids) for found in topics.values()),
    }


def _implied_orders(pipeline: Pipeline, planned: dict[str, str]) -> dict[str, set[str]]:
    """The CRM orders each canonical topic must carry an event of: every order a created
    event; each order that ships an accepted, invoice and shipment event; each other order a
    rejection."""
    shipped = {order for order, expected in planned.items() if expected == scenario.SHIPPED}
    implied = {
        "created": set(planned),
        "accepted": shipped,
        "rejected": set(planned) - shipped,
        "posted": shipped,
        "confirmed": shipped,
    }
    orders = {}
    for topic in pipeline.catalog.topics:
        if topic.format is TopicFormat.AVRO:
            event = topic.name.split(".")[2]
            for word, keys in implied.items():
                if word in event:
                    orders[topic.name] = keys
    return orders


@dataclass
class _Found:
    ids: set[str] = field(default_factory=set)
    """Distinct CloudEvents ids."""
    keys: set[str] = field(default_factory=set)
    """Distinct record keys: the CRM order ids."""
    records: int = 0


def _events(settings: Settings, pipeline: Pipeline) -> dict[str, _Found]:
    """What each canonical topic holds, read from its beginning to its end."""
    found: dict[str, _Found] = {}
    for topic in pipeline.catalog.topics:
        if topic.format is not TopicFormat.AVRO:
            continue
        consumer = Consumer(
            settings.kafka_config(
                **{"group.id": f"chaos-judge-{time.time_ns()}", "enable.auto.commit": False}
            )
        )
        try:
            partitions = consumer.list_topics(topic.name, timeout=10).topics[topic.name].partitions
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=10)[1]
                for p in partitions
            }
            consumer.assign([TopicPartition(topic.name, p, 0) for p in partitions])
            here = found[topic.name] = _Found()
            left = {p for p, end in ends.items() if end > 0}
            while left:
                for message in consumer.consume(1000, 2.0):
                    if message.error():
                        continue
                    here.records += 1
                    here.ids.add(h.get(message.headers(), "ce_id") or "")
                    here.keys.add((message.key() or b"").decode())
                    partition = message.partition()
                    if partition is not None and (message.offset() or 0) + 1 >= ends[partition]:
                        left.discard(partition)
        finally:
            consumer.close()
    return found


def _proxied(proxy: Toxiproxy, name: str, address: str) -> str:
    """``address`` (a URL, PostgreSQL's too) through a new Toxiproxy proxy ``name``."""
    port = PROXY_PORTS[name]
    url = urlsplit(address)
    proxy.create_proxy(name, f"127.0.0.1:{port}", f"{url.hostname}:{url.port}")
    credentials = url.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(url._replace(netloc=netloc))
