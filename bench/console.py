"""SCENARIO=console: the exception console's two heaviest pages, served by the real app over
HTTP, beside what they cost underneath, in the same run.

The run seeds the local stack's PostgreSQL with rows of its own (order ids ``BENCH<run>-…``,
exceptions of a consumer named ``bench-console-<run>``): ``--events`` orders (10,000 by
default), as many open exceptions (rejections with their reason codes and dead letters with
their place and blocker) and one order with exactly 100 journey entries. It serves
``create_app`` with uvicorn on a loopback port, signs in through the login form as a local
operator and times, one keep-alive client, each request in turn: the order's page and its API,
the first worklist page of the run's exceptions (50 of them, with the counts) and its API. The
baselines, timed in the same rounds: ``/healthz`` (the server's own floor: routing, session
and middleware, no database) and the SQL alone, the reads each page makes
(``reads.find_order`` with ``reads.order_view``; ``exceptions.worklist``) called on a psycopg
connection. Client and server share one process, as the figures' floor includes.

The issue's target, 300 ms at p95 on this machine, is reported against, never asserted. The
seeded rows are deleted at the end, whatever happened.
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import uvicorn

from revsync.console import reads
from revsync.console.app import ConsoleConfig, create_app
from revsync.console.auth import Account, LocalAccounts, Role, hash_password
from revsync.contracts.catalog import load_catalog
from revsync.contracts.events import (
    InvoicePosted,
    OrderAccepted,
    OrderCreated,
    OrderRejected,
    RejectionReason,
    ShipmentConfirmed,
)
from revsync.migrations import ensure
from revsync.ops import exceptions as ex
from revsync.ops import storage as ops_tables
from revsync.ops.operations import Operations
from revsync.runtime import journey
from revsync.runtime import storage as runtime_tables
from revsync.runtime.journey import Kind, Outcome
from revsync.settings import OpsSettings, Settings

REQUESTS = 200
"""Timed requests per endpoint (and calls per SQL baseline), after the warm-up."""
WARM_UP = 20
JOURNEY_ENTRIES = 100
TARGET_MS = 300.0
PAGE_SIZE = 50
OPERATOR = "bench-operator"

REGIONS = ("NA", "EMEA", "APAC", "LATAM")
LEGAL_ENTITIES = ("US01", "CA01", "DE01", "GB01", "FR01", "JP01", "SG01", "BR01")
CURRENCIES = {"NA": "USD", "EMEA": "EUR", "APAC": "JPY", "LATAM": "BRL"}
PRODUCT_LINES = ("SENSORS", "ACTUATORS", "CONTROLLERS", "SOFTWARE", "SERVICES")
REJECTIONS = {
    RejectionReason.PRICING_MISMATCH: "unit price differs from the ERP price list",
    RejectionReason.CUSTOMER_NOT_MASTERED: "sold-to account has no ERP customer master",
    RejectionReason.CREDIT_HOLD: "credit hold on the account",
    RejectionReason.UNKNOWN_PRODUCT: "SKU not in the ERP material master",
    RejectionReason.UNSUPPORTED_CURRENCY: "currency not enabled for the legal entity",
}
DEAD_LETTERS = {
    "transient": "ERP answered 503 after every retry tier",
    "validation": "order line total does not equal quantity times unit price",
    "business rule": "order references a cancelled quote",
    "dependency-not-ready": "the CRM does not know the account yet",
    "schema": "writer schema id not in the registry",
}
SOURCE_TOPIC = "revsync.order.created.v1"
SHIPMENTS = "revsync.shipment.confirmed.v1"
CREATED, ACCEPTED = OrderCreated.event_type, OrderAccepted.event_type
INVOICED, SHIPPED = InvoicePosted.event_type, ShipmentConfirmed.event_type

ORDER_COLUMNS = ("crm_order_id", *journey.ORDER_COLUMNS)
EXCEPTION_COLUMNS = (
    "kind",
    "order_key",
    "consumer",
    "reason",
    "summary",
    "event_id",
    "event_type",
    "correlation_id",
    "dlt_topic",
    "dlt_partition",
    "dlt_offset",
    "blocker",
    "opened_at",
    "assignee",
    "tags",
)
JOURNEY_COLUMNS = (
    "at",
    "order_key",
    "consumer",
    "outcome",
    "tier",
    "event_id",
    "event_type",
    "correlation_id",
    "topic",
    "partition",
    "offset",
    "occurred_at",
    "detail",
)
# One order's life as the consumers record it, repeated (with new offsets) up to 100 entries:
# (consumer, outcome, tier, event type, topic, detail).
JOURNEY_STEPS: tuple[tuple[str, Outcome, str | None, str, str, str | None], ...] = (
    ("order-sync", Outcome.RETRIED, "10s", CREATED, SOURCE_TOPIC, "transient"),
    ("order-sync", Outcome.RETRIED, "1m", CREATED, SOURCE_TOPIC, "transient"),
    ("order-sync", Outcome.DEAD_LETTERED, None, CREATED, SOURCE_TOPIC, "transient"),
    ("order-sync", Outcome.PROCESSED, None, CREATED, SOURCE_TOPIC, None),
    ("order-sync", Outcome.EMITTED, None, ACCEPTED, "revsync.order.accepted.v1", None),
    ("order-sync", Outcome.DUPLICATE, None, CREATED, SOURCE_TOPIC, None),
    ("invoice-sync", Outcome.PROCESSED, None, INVOICED, "revsync.invoice.posted.v1", None),
    ("invoice-sync", Outcome.EMITTED, None, INVOICED, "revsync.invoice.posted.v1", None),
    ("fulfillment-sync", Outcome.PARKED, None, SHIPPED, SHIPMENTS, "an earlier record is held"),
    ("fulfillment-sync", Outcome.RELEASED, None, SHIPPED, SHIPMENTS, f"held by {SHIPMENTS}:0:7"),
    ("fulfillment-sync", Outcome.PROCESSED, None, SHIPPED, SHIPMENTS, None),
)


def run(settings: Settings, events: int) -> dict[str, Any]:
    began = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"BENCH{run_id}-"
    consumer = f"bench-console-{run_id}"
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as connection:
        ensure(connection, (*runtime_tables.TABLES, *ops_tables.TABLES))
        try:
            started = time.perf_counter()
            order_id = seed(connection, prefix, consumer, events)
            seed_s = time.perf_counter() - started
            password = secrets.token_urlsafe(18)
            config = console_config(settings, password)
            server, thread, url = serve(config)
            try:
                timings = measure(connection, config, url, password, order_id, consumer, events)
            finally:
                server.should_exit = True
                thread.join(30)
        finally:
            started = time.perf_counter()
            cleanup(connection, prefix, consumer)
            cleanup_s = time.perf_counter() - started
    return report(timings, events, seed_s, cleanup_s, time.perf_counter() - began)


# --- seeding ---------------------------------------------------------------------------------


def seed(connection: psycopg.Connection[Any], prefix: str, consumer: str, events: int) -> str:
    """``events`` orders and open exceptions and one order with 100 journey entries, in one
    transaction, with COPY; the id of that order."""
    pick = random.Random(13)  # noqa: S311 - the same rows every run, not a secret
    now = datetime.now(UTC)
    orders = [_order(pick, prefix, number, now) for number in range(1, events + 1)]
    journeyed = orders[0]
    with connection.transaction(), connection.cursor() as cursor:
        with cursor.copy(f"COPY revsync_orders ({', '.join(ORDER_COLUMNS)}) FROM STDIN") as copy:
            for order in orders:
                copy.write_row(order)
        with cursor.copy(
            f"COPY revsync_exceptions ({', '.join(EXCEPTION_COLUMNS)}) FROM STDIN"
        ) as copy:
            for number in range(events):
                copy.write_row(_exception(pick, consumer, orders[number], number, now))
        journey_columns = ", ".join(f'"{column}"' for column in JOURNEY_COLUMNS)
        with cursor.copy(f"COPY revsync_journey ({journey_columns}) FROM STDIN") as copy:
            for row in _journey(journeyed):
                copy.write_row(row)
    # What the steady state's statistics would be: the planner sees the rows just added.
    connection.execute("ANALYZE revsync_orders, revsync_exceptions, revsync_journey")
    return str(journeyed[0])


def _order(pick: random.Random, prefix: str, number: int, now: datetime) -> tuple[Any, ...]:
    """One order at a stage no worklist ages into a stuck order while the run lasts: shipped,
    waiting within its stage's age, rejected, or cancelled, so the rest of the worklist
    (everyone else's) is left as it was."""
    region = REGIONS[number % len(REGIONS)]
    lines = sorted(pick.sample(PRODUCT_LINES, pick.randint(1, 3)))
    activated = now - timedelta(minutes=5 + pick.randint(0, 6 * 24 * 60))
    accepted = invoiced = shipped = rejected = cancelled = None
    reason = None
    stage = number % 10
    if stage < 5:  # shipped
        accepted = min(activated + timedelta(seconds=pick.randint(2, 600)), now)
        invoiced = min(accepted + timedelta(hours=pick.randint(1, 48)), now)
        shipped = min(invoiced + timedelta(hours=pick.randint(1, 72)), now)
    elif stage < 7:  # accepted, invoiced within the last day, not shipped yet
        invoiced = now - timedelta(minutes=pick.randint(1, 24 * 60))
        accepted = invoiced - timedelta(hours=pick.randint(1, 24))
        activated = accepted - timedelta(seconds=pick.randint(2, 600))
    elif stage < 8:  # accepted within the last hour, not invoiced yet
        accepted = now - timedelta(minutes=pick.randint(1, 60))
        activated = accepted - timedelta(seconds=pick.randint(2, 600))
    elif stage < 9:  # rejected
        rejected = min(activated + timedelta(seconds=pick.randint(2, 600)), now)
        reason = list(REJECTIONS)[number % len(REJECTIONS)].value
    else:  # cancelled
        cancelled = min(activated + timedelta(hours=pick.randint(1, 24)), now)
    synced = {
        "invoice": invoiced + timedelta(seconds=pick.uniform(0.2, 30)) if invoiced else None,
        "shipment": shipped + timedelta(seconds=pick.uniform(0.2, 30)) if shipped else None,
    }
    erp = accepted is not None
    return (
        f"{prefix}{number:06d}",
        f"{prefix}O{number:06d}",
        f"{prefix}E{number:06d}" if erp else None,
        f"4500{number:06d}" if erp else None,
        str(uuid.UUID(int=pick.getrandbits(128), version=4)),
        LEGAL_ENTITIES[pick.randrange(len(LEGAL_ENTITIES))],
        region,
        CURRENCIES[region],
        lines,
        activated,
        accepted,
        rejected,
        reason,
        invoiced,
        synced["invoice"],
        shipped,
        synced["shipment"],
        cancelled,
    )


def _exception(
    pick: random.Random, consumer: str, order: tuple[Any, ...], number: int, now: datetime
) -> tuple[Any, ...]:
    """An open rejection (three in five) or dead letter, its place and blocker its own."""
    opened = now - timedelta(seconds=pick.randint(60, 7 * 86400))
    assignee = ("ana", "bo", "chen", None, None, None)[number % 6]
    tags = [["pricing"], ["escalated"], [], [], []][number % 5]
    event_id = uuid.UUID(int=pick.getrandbits(128), version=4)
    if number % 5 < 3:
        code, summary = list(REJECTIONS.items())[number % len(REJECTIONS)]
        return (
            Kind.REJECTION.value,
            order[0],
            consumer,
            code.value,
            summary,
            event_id,
            OrderRejected.event_type,
            order[4],
            None,
            None,
            None,
            None,
            opened,
            assignee,
            tags,
        )
    error_class, summary = list(DEAD_LETTERS.items())[number % len(DEAD_LETTERS)]
    partition = number % 6
    return (
        Kind.DEAD_LETTER.value,
        order[0],
        consumer,
        error_class,
        summary,
        event_id,
        OrderCreated.event_type,
        order[4],
        f"revsync.{consumer}.dlt",
        partition,
        number,
        f"{SOURCE_TOPIC}:{partition}:{1_000_000 + number}",
        opened,
        assignee,
        tags,
    )


def _journey(order: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    start: datetime = order[9]
    rows = []
    for entry in range(JOURNEY_ENTRIES):
        name, outcome, tier, event_type, topic, detail = JOURNEY_STEPS[entry % len(JOURNEY_STEPS)]
        at = start + timedelta(seconds=3 * entry)
        rows.append(
            (
                at,
                order[0],
                name,
                outcome.value,
                tier,
                uuid.uuid4(),
                event_type,
                order[4],
                topic,
                entry % 6,
                10_000 + entry,
                at - timedelta(milliseconds=250),
                detail,
            )
        )
    return rows


def cleanup(connection: psycopg.Connection[Any], prefix: str, consumer: str) -> None:
    """Every row the run added, by its consumer or its order id prefix."""
    with connection.transaction():
        connection.execute("DELETE FROM revsync_exceptions WHERE consumer = %s", (consumer,))
        connection.execute(
            "DELETE FROM revsync_journey WHERE starts_with(order_key, %s)", (prefix,)
        )
        connection.execute(
            "DELETE FROM revsync_orders WHERE starts_with(crm_order_id, %s)", (prefix,)
        )


# --- the console -------------------------------------------------------------------------------


def console_config(settings: Settings, password: str) -> ConsoleConfig:
    """The configuration ``revsync console`` builds, with one local operator account."""
    return ConsoleConfig(
        catalog=load_catalog(settings.schemas_dir),
        kafka_config=settings.kafka_config(),
        dsn=settings.postgres_dsn.get_secret_value(),
        operations=lambda name: Operations.from_settings(Settings.load(), name),
        session_secret=secrets.token_urlsafe(48),
        public_url="http://127.0.0.1:0",  # the port is set once it is known
        accounts=LocalAccounts([Account(OPERATOR, Role.OPERATOR, hash_password(password))]),
        oidc=None,
        stage_ages=ex.parse_stage_ages(""),
        mask_fields=OpsSettings.load().mask_fields,
    )


def serve(config: ConsoleConfig) -> tuple[uvicorn.Server, threading.Thread, str]:
    """The app under uvicorn on a free loopback port, in a thread; once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config.public_url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the console did not start on port {port}")
        time.sleep(0.05)
    return server, thread, config.public_url


def sign_in(client: httpx.Client, password: str) -> None:
    form = client.get("/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    if form.status_code != 200 or found is None:
        raise RuntimeError(f"GET /login answered {form.status_code} without a CSRF token")
    answer = client.post(
        "/login",
        data={"name": OPERATOR, "password": password, "csrf": found.group(1), "next": "/"},
    )
    if answer.status_code != 303 or "revsync_console" not in client.cookies:
        raise RuntimeError(f"POST /login answered {answer.status_code}: not signed in")


# --- timing ------------------------------------------------------------------------------------


def measure(
    connection: psycopg.Connection[Any],
    config: ConsoleConfig,
    url: str,
    password: str,
    order_id: str,
    consumer: str,
    events: int,
) -> dict[str, list[float]]:
    """Milliseconds per probe: every probe once per round, ``WARM_UP`` rounds untimed, then
    ``REQUESTS`` timed, so drift in the machine falls on pages and baselines alike."""
    filters = ex.Filters(consumers=frozenset({consumer}))
    order_path = quote(order_id, safe="")
    with httpx.Client(base_url=url, timeout=60) as client:
        sign_in(client, password)

        def page(path: str, check: Callable[[httpx.Response], bool]) -> Callable[[], None]:
            def get() -> None:
                answer = client.get(path)
                if answer.status_code != 200 or not check(answer):
                    raise RuntimeError(f"GET {path} answered {answer.status_code} unexpectedly")

            return get

        def order_sql() -> None:
            found = reads.find_order(connection, order_id)
            view = reads.order_view(connection, found) if found else None
            if view is None or len(view.journey) != JOURNEY_ENTRIES:
                raise RuntimeError(f"order {order_id}: not {JOURNEY_ENTRIES} journey entries")

        def exceptions_sql() -> None:
            seen = ex.worklist(connection, filters, config.stage_ages, limit=PAGE_SIZE)
            if seen.total != events or len(seen.items) != PAGE_SIZE:
                raise RuntimeError(f"worklist: {seen.total} open exceptions, not {events}")

        probes: dict[str, Callable[[], None]] = {
            "order_page": page(
                f"/orders/{order_path}",
                lambda a: a.text.count('<tr class="outcome-') == JOURNEY_ENTRIES,
            ),
            "order_api": page(
                f"/api/v1/orders/{order_path}",
                lambda a: len(a.json()["journey"]) == JOURNEY_ENTRIES,
            ),
            "exceptions_page": page(
                f"/exceptions?consumer={quote(consumer)}",
                lambda a: f'data-testid="total">{events} open' in a.text,
            ),
            "exceptions_api": page(
                f"/api/v1/exceptions?consumer={quote(consumer)}",
                lambda a: a.json()["total"] == events and len(a.json()["items"]) == PAGE_SIZE,
            ),
            "healthz": page("/healthz", lambda a: a.text == "ok"),
            "order_sql": order_sql,
            "exceptions_sql": exceptions_sql,
        }
        timings: dict[str, list[float]] = {name: [] for name in probes}
        for round_number in range(WARM_UP + REQUESTS):
            for name, probe in probes.items():
                started = time.perf_counter()
                probe()
                elapsed = (time.perf_counter() - started) * 1000
                if round_number >= WARM_UP:
                    timings[name].append(elapsed)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def report(
    timings: dict[str, list[float]],
    events: int,
    seed_s: float,
    cleanup_s: float,
    scenario_s: float,
) -> dict[str, Any]:
    """p50, p95 and p99 per probe; per page, its p95 over its SQL's p95 (``_vs_sql``) and over
    ``/healthz``'s (``_vs_healthz``), and whether its p95 is under the target."""
    figures: dict[str, Any] = {
        "open_exceptions": events,
        "orders": events,
        "journey_entries": JOURNEY_ENTRIES,
        "requests_per_endpoint": REQUESTS,
        "warm_up_requests": WARM_UP,
        "cores": os.cpu_count(),
    }
    p95 = {name: percentile(values, 0.95) for name, values in timings.items()}
    for name, values in timings.items():
        for label, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            figures[f"{name}_{label}_ms"] = round(percentile(values, fraction), 1)
    for name, sql in (
        ("order_page", "order_sql"),
        ("order_api", "order_sql"),
        ("exceptions_page", "exceptions_sql"),
        ("exceptions_api", "exceptions_sql"),
    ):
        figures[f"{name}_vs_sql"] = round(p95[name] / p95[sql], 2)
        figures[f"{name}_vs_healthz"] = round(p95[name] / p95["healthz"], 1)
        figures[f"{name}_under_target"] = p95[name] < TARGET_MS
    figures["target_p95_ms"] = TARGET_MS
    figures["seed_s"] = round(seed_s, 2)
    figures["cleanup_s"] = round(cleanup_s, 2)
    figures["scenario_s"] = round(scenario_s, 1)
    return figures
