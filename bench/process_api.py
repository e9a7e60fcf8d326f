"""SCENARIO=process-api: the process API as production runs it (``revsync run process-api``,
a process of its own) answering quoting calls at a fixed offered load of 200 requests a
second, with the ERP sandbox answering every call 50 ms late.

The run seeds the ERP sandbox (in this process, on the stack's PostgreSQL) with master data of
its own (``BENCH<run>`` ids): 200 products in one price book, 50 customers, stock for every
product; starts the identity provider sandbox (in this process) and the process API on
contracts of its own (governed first, deleted at the end), takes one access token, and sends a
mix of the quoting calls: pricing (60 %), credit (25 %) and availability (15 %), each quote
of one to five random lines. The load is open: a request is due at its time whether or not
those before it were answered, and its latency counts from when it was due. A warm-up at the
same rate is not timed. Client and sandboxes share this process; the process API has its own.

Figures: p50, p95, p99 and max, overall and per endpoint; the share of ERP reads the caches
answered over the timed part (from the API's own ``revsync_guarded_reads_total``); and the
baseline, measured in the same run: the same ERP read made directly, one after another (what
the 50 ms bounds). The process API's rate limit is raised for the one client that sends all.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator
from sandbox.harness import REPO, REVSYNC, free_port, private_contracts
from sandbox.idp import IdentityProvider

from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.contracts.catalog import load_catalog
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from revsync.settings import Settings, kafka_env_name

OFFERED_PER_S = 200
ERP_LATENCY_MS = 50
WARM_UP_S = 5
PRODUCTS = 200
CUSTOMERS = 50
MIX = (("pricing", 0.60), ("credit", 0.25), ("availability", 0.15))
PATHS = {
    "pricing": "/v1/pricing/validate",
    "credit": "/v1/credit/check",
    "availability": "/v1/availability",
}
DIRECT_READS = 100
AUDIENCE = "revsync-process-api"
CLIENT = ("bench-cpq", "bench-cpq-secret")
READS = re.compile(r"^revsync_guarded_reads_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)


def run(settings: Settings, events: int) -> dict[str, Any]:
    """``events``: timed requests (30 s of load by default)."""
    began = time.perf_counter()
    tag = f"BENCH{uuid.uuid4().hex[:6].upper()}"
    with (
        IdentityProvider() as idp,
        erp_sandbox(settings, tag) as erp,
        process_api(settings, idp.issuer, erp.url) as url,
    ):
        idp.configure(audience=AUDIENCE)
        idp.add_client(*CLIENT, scopes=["pricing:read", "credit:read", "availability:read"])
        token = access_token(idp.issuer)
        requests = Requests(tag, random.Random(20261201))  # noqa: S311 - a repeatable mix
        warm_up = [requests.next() for _ in range(WARM_UP_S * OFFERED_PER_S)]
        asyncio.run(offer(url, token, warm_up))
        before = guarded_reads(url)
        timed = [requests.next() for _ in range(events)]
        started = time.perf_counter()
        answered = asyncio.run(offer(url, token, timed))
        load_s = time.perf_counter() - started
        after = guarded_reads(url)
        direct = direct_reads(erp.url, tag)
    return report(answered, load_s, after - before, direct, time.perf_counter() - began)


# --- the sandboxes and the process API -------------------------------------------------------


@contextmanager
def erp_sandbox(settings: Settings, tag: str) -> Iterator[ErpSimulator]:
    """The ERP sandbox with this run's master data, answering every API call 50 ms late."""
    simulator = ErpSimulator(
        settings.postgres_dsn.get_secret_value(), invoice_delay_s=3600, ship_delay_s=3600
    ).start()
    try:
        with ErpSandbox(simulator.url) as control:
            skus = [f"{tag}-{n:03d}" for n in range(PRODUCTS)]
            control.seed_products(
                Product(sku, f"part {sku}", "VALVES", "EA", True, frozenset()) for sku in skus
            )
            prices = {sku: Decimal(10 + n) for n, sku in enumerate(skus)}
            control.seed_price_books([PriceBook(f"{tag}-PB", "list", "USD", "US01", prices)])
            control.seed_customers(
                Customer(
                    f"{tag}-C{n:02d}",
                    f"customer {n}",
                    f"{tag}-A{n:02d}",
                    "US01",
                    CustomerStatus.ACTIVE,
                    Decimal(1_000_000),
                    "USD",
                )
                for n in range(CUSTOMERS)
            )
            control.seed_stock(StockLevel(sku, "NA", Decimal(50), None) for sku in skus)
            control.set_faults(latency_ms=ERP_LATENCY_MS)
        yield simulator
    finally:
        simulator.stop()


@contextmanager
def process_api(settings: Settings, issuer: str, erp_url: str) -> Iterator[str]:
    """``revsync run process-api`` on contracts of its own; its address once it is ready."""
    with tempfile.TemporaryDirectory(prefix="revsync-bench-") as scratch:
        contracts = private_contracts(settings.schemas_dir, Path(scratch) / "contracts")
        port = free_port()
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REVSYNC_")},
            **{kafka_env_name(k): v for k, v in settings.kafka.items()},
            "REVSYNC_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "REVSYNC_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
            "REVSYNC_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
            "REVSYNC_SCHEMAS_DIR": str(contracts),
            "REVSYNC_ERP_BASE_URL": erp_url,
            "REVSYNC_ERP_API_TOKEN": DEFAULT_API_TOKEN,
            "REVSYNC_HEALTH_PORT": "0",
            "REVSYNC_LOG_LEVEL": "WARNING",
            "REVSYNC_PROCESS_API_PORT": str(port),
            "REVSYNC_PROCESS_API_OIDC_ISSUER": issuer,
            "REVSYNC_PROCESS_API_OIDC_AUDIENCE": AUDIENCE,
            "REVSYNC_PROCESS_API_RATE_PER_S": str(OFFERED_PER_S * 5),
            "REVSYNC_PROCESS_API_BURST": str(OFFERED_PER_S * 5),
        }
        for command in (("schemas", "register"), ("topics", "apply")):
            subprocess.run(
                [str(REVSYNC), *command, "--dir", str(contracts)],
                env=environment,
                check=True,
                capture_output=True,
                timeout=120,
            )
        log = Path(scratch) / "process-api.log"
        with log.open("wb") as output:
            server = subprocess.Popen(
                [str(REVSYNC), "run", "process-api"],
                cwd=REPO,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(server, url, log)
                yield url
            finally:
                server.terminate()
                server.wait(30)
                _drop_topics(settings, contracts)


def _wait_ready(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the process API exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the process API did not get ready; see {log}")


def _drop_topics(settings: Settings, contracts: Path) -> None:
    admin = AdminClient(settings.kafka_config())
    names = [topic.name for topic in load_catalog(contracts).topic_plan()]
    existing = set(admin.list_topics(timeout=10).topics)
    for future in admin.delete_topics([n for n in names if n in existing]).values():
        future.result(timeout=30)


def access_token(issuer: str) -> str:
    answer = httpx.post(
        f"{issuer}/token", data={"grant_type": "client_credentials"}, auth=CLIENT, timeout=10
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


# --- the load --------------------------------------------------------------------------------


class Requests:
    """Quoting calls, as CPQ makes them: random quotes of one to five lines, near list price."""

    def __init__(self, tag: str, pick: random.Random) -> None:
        self.tag = tag
        self.pick = pick

    def next(self) -> tuple[str, dict[str, Any]]:
        kind = self.pick.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        numbers = self.pick.sample(range(PRODUCTS), self.pick.randint(1, 5))
        if kind == "pricing":
            lines = [
                {
                    "sku": f"{self.tag}-{n:03d}",
                    "quantity": str(self.pick.randint(1, 20)),
                    "unit_price": f"{(10 + n) * self.pick.uniform(0.995, 1.005):.2f}",
                }
                for n in numbers
            ]
            body = {
                "legal_entity": "US01",
                "region": "NA",
                "currency": "USD",
                "price_book_id": f"{self.tag}-PB",
                "lines": lines,
            }
        elif kind == "credit":
            body = {
                "legal_entity": "US01",
                "currency": "USD",
                "amount": f"{self.pick.uniform(100, 50_000):.2f}",
                "account_id": f"{self.tag}-A{self.pick.randrange(CUSTOMERS):02d}",
            }
        else:
            lines = [
                {"sku": f"{self.tag}-{n:03d}", "quantity": str(self.pick.randint(1, 80))}
                for n in numbers
            ]
            body = {"region": "NA", "lines": lines}
        return kind, body


async def offer(
    url: str, token: str, requests: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, int, float]]:
    """Each request at its due time, ``OFFERED_PER_S`` a second; (kind, status, ms since
    due) of each."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        start = time.perf_counter()

        async def send(due: float, kind: str, body: dict[str, Any]) -> tuple[str, int, float]:
            answer = await http.post(PATHS[kind], json=body)
            return kind, answer.status_code, (time.perf_counter() - due) * 1000

        sent = []
        for number, (kind, body) in enumerate(requests):
            due = start + number / OFFERED_PER_S
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            sent.append(asyncio.create_task(send(due, kind, body)))
        return list(await asyncio.gather(*sent))


def guarded_reads(url: str) -> Counter[str]:
    """The process API's ERP reads so far, by outcome (hit, miss, stale, unavailable)."""
    totals: Counter[str] = Counter()
    for labels, value in READS.findall(httpx.get(f"{url}/metrics", timeout=10).text):
        outcome = re.search(r'outcome="([^"]+)"', labels)
        if outcome:
            totals[outcome[1]] += int(float(value))
    return totals


def direct_reads(erp_url: str, tag: str) -> list[float]:
    """Milliseconds per price book read straight from the ERP sandbox, one after another."""
    adapter = ErpRestAdapter(ErpConfig(erp_url, SecretStr(DEFAULT_API_TOKEN), timeout_s=10))
    timings = []
    try:
        for _ in range(DIRECT_READS):
            started = time.perf_counter()
            adapter.price_book(f"{tag}-PB")
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        adapter.close()
    return timings


# --- the figures -----------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def report(
    answered: list[tuple[str, int, float]],
    load_s: float,
    reads: Counter[str],
    direct: list[float],
    scenario_s: float,
) -> dict[str, Any]:
    ok = [(kind, ms) for kind, status, ms in answered if status == 200]
    failed = Counter(status for _, status, _ in answered if status != 200)
    figures: dict[str, Any] = {
        "offered_per_s": OFFERED_PER_S,
        "erp_latency_ms": ERP_LATENCY_MS,
        "requests": len(answered),
        "answered_per_s": round(len(answered) / load_s, 1),
        "errors": dict(failed),
        "cores": os.cpu_count(),
    }
    every = [ms for _, ms in ok]
    for label, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        figures[f"{label}_ms"] = round(percentile(every, fraction), 1)
    by_kind: defaultdict[str, list[float]] = defaultdict(list)
    for kind, ms in ok:
        by_kind[kind].append(ms)
    for kind, values in sorted(by_kind.items()):
        figures[f"{kind}_p50_ms"] = round(percentile(values, 0.50), 1)
        figures[f"{kind}_p99_ms"] = round(percentile(values, 0.99), 1)
    asked = reads["hit"] + reads["miss"]
    figures["erp_reads"] = dict(reads)
    figures["cache_hit_ratio"] = round(reads["hit"] / asked, 3) if asked else None
    figures["erp_direct_p50_ms"] = round(percentile(direct, 0.50), 1)
    figures["erp_direct_p99_ms"] = round(percentile(direct, 0.99), 1)
    figures["scenario_s"] = round(scenario_s, 1)
    figures["verdict"] = "passed" if not failed else f"{sum(failed.values())} requests failed"
    return figures
