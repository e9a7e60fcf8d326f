"""The pipeline harness: the whole order-to-cash pipeline on one machine, for the demo, the
end-to-end tests and the benchmark: the governance step, the sandboxes (the CRM, the ERP, and
the identity provider whose tokens the process API takes), and every deployable as its own
process (``revsync run <name>``), exactly as production runs them."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import yaml

from revsync.console.auth import hash_password
from revsync.contracts.catalog import CATALOG_FILE, Catalog, load_catalog
from revsync.deployables import discover
from revsync.settings import Settings, kafka_env_name
from sandbox.crm.control import CrmSandbox
from sandbox.crm.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, INTEGRATION_USER_ID
from sandbox.erp.control import ErpSandbox
from sandbox.erps import SandboxErp
from sandbox.scenario import SHIPPED, PlannedOrder

REPO = Path(__file__).resolve().parents[1]
REVSYNC = Path(sys.executable).with_name("revsync")
DEPLOYABLES = tuple(sorted(discover()))
"""Every installed deployable, each started as its own process."""
CHANNELS = ("/data/OrderChangeEvent", "/data/AccountChangeEvent")
KEEPALIVE_S = 5
"""The CRM sandbox's keepalive on an idle Subscribe stream (Salesforce's: within 270 s)."""
PROCESS_API_AUDIENCE = "revsync-process-api"
"""The audience of the access tokens the process API takes, as the provider issues them."""
HEALTH_PORT = re.compile(r"health and metrics on port (\d+)")
METRIC = re.compile(r"^(revsync_[a-z_]+_total)\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)


def private_contracts(source: Path, destination: Path, partitions: int | None = None) -> Path:
    """A copy of the contracts whose topics, subjects and consumer groups are renamed with a
    fresh tag, so a run shares no Kafka or registry state with any other."""
    folder = Path(shutil.copytree(source, destination))
    tag = uuid.uuid4().hex[:8]
    path = folder / CATALOG_FILE
    catalog = yaml.safe_load(path.read_text())
    catalog["consumers"] = {f"{name}-{tag}": spec for name, spec in catalog["consumers"].items()}
    if partitions is not None:
        catalog["defaults"]["partitions"] = partitions
    for topic in catalog["topics"]:
        old = topic["name"]
        _, entity, event, major = old.split(".")
        topic["name"] = f"revsync.{entity}-{tag}.{event}.{major}"
        topic["consumers"] = [f"{name}-{tag}" for name in topic["consumers"]]
        released = folder / "releases" / f"{old}-value"
        if released.exists():  # only Avro topics have released schemas
            released.rename(folder / "releases" / f"{topic['name']}-value")
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return folder


def with_consumer_settings(contracts: Path, **values: Any) -> None:
    """Give every consumer of a private copy of the contracts these settings: short retry
    tiers, say, so a run sees failures through every tier in seconds."""
    path = contracts / "catalog.yaml"
    catalog = yaml.safe_load(path.read_text())
    for spec in catalog["consumers"].values():
        spec.update(values)
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))


class PipelineError(RuntimeError):
    """A part of the pipeline would not start, or died; the message names it and its log."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    output: IO[bytes] | None = None
    """The log file the process writes to, closed when it stops."""
    log_start: int = 0
    """Where this run's lines begin in ``log`` (a restarted service appends to it)."""
    _health_port: int | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def health_port(self) -> int | None:
        """The port the service bound for /metrics and /readyz, once it has said so.

        Services bind port 0 and announce the port the kernel gave them, so no two can
        race for a port picked in advance.
        """
        if self._health_port is None and self.log.exists():
            with self.log.open("rb") as lines:
                lines.seek(self.log_start)
                announced = HEALTH_PORT.search(lines.read().decode(errors="replace"))
            if announced:
                self._health_port = int(announced[1])
        return self._health_port

    def stop(self, timeout_s: float = 30) -> None:
        self.terminate()
        self.wait_stopped(timeout_s)

    def terminate(self) -> None:
        """Asks the process to stop (SIGTERM); :meth:`wait_stopped` waits for it."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout_s: float = 30) -> None:
        """Waits for a process asked to stop, killing it after ``timeout_s``."""
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        for stream in (self.popen.stdout, self.output):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class Outcome:
    """Where every pushed order stands in the CRM, judged against what it should reach."""

    counts: Mapping[str, int]
    """accepted, rejected, invoiced, shipped: orders the CRM shows in each state."""
    settled: int
    """Orders in their expected end state."""
    wrong: Sequence[str]
    """Orders in a final state other than the expected one (each a line saying how)."""
    pending: int


@dataclass
class Pipeline:
    """Start with :meth:`start`, stop with :meth:`stop`."""

    settings: Settings
    workdir: Path
    schemas_dir: Path
    invoice_delay_s: float = 0.5
    ship_delay_s: float = 1.0
    erp_system: str = "reference"
    """The ERP the pipeline runs on: reference, netsuite or business-central."""
    erp_routes: Mapping[str, str] = field(default_factory=dict)
    """Instead of one ERP for all, the ERP of each legal entity (``{"US01": "netsuite",
    "DE01": "business-central"}``): a simulator of each ERP named runs, and the services are
    given the routes."""
    service_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    crm_url: str = ""
    pubsub_url: str = ""
    """The CRM sandbox's Pub/Sub API, as ``grpc://127.0.0.1:<port>``."""
    erp_url: str = ""
    idp_issuer: str = ""
    process_api_url: str = ""
    """Where the process API serves, once started."""
    planned: dict[str, str] = field(default_factory=dict)
    """CRM order id -> expected end state, for every order pushed."""
    via: Callable[[str, str], str] = field(default=lambda _name, address: address)
    """Where the services reach a dependency (``crm``, ``pubsub``, ``erp``, ``postgres``,
    ``registry``) given its address: the address itself, or a fault proxy in front of it."""
    channels: Sequence[str] = CHANNELS
    """The change event channels the CDC bridge subscribes to."""
    identity: Callable[[str], Mapping[str, str]] = field(default=lambda _name: {})
    """Settings of each process's own principal, by deployable name or ``governance``: on a
    secured stack each authenticates as itself; on the plain one all share ``settings``."""
    governance: Sequence[Sequence[str]] = (("schemas", "register"), ("topics", "apply"))
    """The governance job's commands, run before the services start (each given the
    contracts with ``--dir`` if it takes them)."""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.catalog: Catalog = load_catalog(self.schemas_dir)
        systems = sorted(set(self.erp_routes.values())) or [self.erp_system]
        inbound_port = free_port()  # one erp-inbound hears every ERP reached through an API
        self.sandbox_erps = {
            system: SandboxErp(system, self.workdir, inbound_port) for system in systems
        }
        """The ERPs the pipeline runs on, each its simulator; the first is :attr:`erp`'s."""
        self.sandbox_erp = self.sandbox_erps[systems[0]]
        unused = {erp.idle for erp in self.sandbox_erps.values()} - {
            erp.publisher for erp in self.sandbox_erps.values()
        }
        self.deployables = tuple(name for name in DEPLOYABLES if name not in unused)
        """The deployables this pipeline runs: all but those its ERPs have no use for."""
        self.erp_urls: dict[str, str] = {}
        self.erps: dict[str, ErpSandbox] = {}
        """Each ERP's books, by system (:attr:`erp` is the first's)."""

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, report: Callable[[str], None] = lambda _: None) -> Pipeline:
        try:
            report(f"governance: {', '.join(' '.join(command) for command in self.governance)}")
            for command in self.governance:
                contracts = ["--dir", str(self.schemas_dir)] if command[0] != "db" else []
                self._revsync(*command, *contracts)
            report("starting the CRM and ERP sandboxes")
            crm = self._sandbox("crm", ["--keepalive-s", str(KEEPALIVE_S)])
            self.crm_url, self.pubsub_url = crm["url"], f"grpc://{crm['pubsub']}"
            for system, sandbox_erp in self.sandbox_erps.items():
                self.erp_urls[system] = self._sandbox(
                    sandbox_erp.module,
                    ["--dsn", self.settings.postgres_dsn.get_secret_value(), "--reset"],
                    ["--invoice-delay-s", str(self.invoice_delay_s)],
                    ["--ship-delay-s", str(self.ship_delay_s)],
                    *sandbox_erp.options(),
                )["url"]
                self.erps[system] = ErpSandbox(self.erp_urls[system])
            self.erp_url = self.erp_urls[self.sandbox_erp.system]
            self.crm = CrmSandbox(self.crm_url)
            self.erp = self.erps[self.sandbox_erp.system]
            self.idp_issuer = self._sandbox("idp", ["--audience", PROCESS_API_AUDIENCE])["issuer"]
            self.process_api_url = f"http://127.0.0.1:{free_port()}"
            report(f"starting {', '.join(self.deployables)}")
            for name in self.deployables:
                self._service(name)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the services together, then the sandboxes they called, each group asked at
        once and then waited for (one by one, a pipeline took seconds per process)."""
        processes = list(self.processes.values())
        sandboxes = [process for process in processes if process.name.startswith("sandbox-")]
        for group in ([p for p in processes if p not in sandboxes], sandboxes):
            for process in group:
                try:
                    process.terminate()
                except OSError as error:  # stop the others all the same
                    print(f"could not stop {process.name}: {error}", file=sys.stderr)
            for process in group:
                process.wait_stopped()
        for client in (getattr(self, "crm", None), *self.erps.values()):
            if client is not None:
                client.close()

    def start_console(self, accounts: Mapping[str, tuple[str, str]], port: int = 0) -> str:
        """Serve the exception console (``revsync console``) with local accounts (name ->
        (role, password)); its address once it answers ``/readyz``."""
        users = self.workdir / "console-users.yaml"
        users.write_text(
            yaml.safe_dump(
                {
                    "users": [
                        {"name": name, "role": role, "password_hash": hash_password(password)}
                        for name, (role, password) in accounts.items()
                    ]
                }
            )
        )
        users.chmod(0o600)
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.workdir / "console.log"
        output = log.open("ab")
        popen = subprocess.Popen(
            [str(REVSYNC), "console"],
            cwd=REPO,
            env={
                **self.service_environment(),
                **self.identity("operator"),
                "REVSYNC_CONSOLE_PORT": str(port),
                "REVSYNC_CONSOLE_USERS_FILE": str(users),
                "REVSYNC_CONSOLE_SESSION_SECRET": secrets.token_urlsafe(40),
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        self.processes["console"] = Process("console", popen, log, output)
        deadline = time.monotonic() + 60
        while True:
            self._check_alive()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise PipelineError(f"the console did not get ready; see {log}")
            time.sleep(0.2)

    def restart(self, name: str, *, hard: bool = False) -> None:
        """Stop one service and start it again, as a deployment would (``hard``: SIGKILL, as
        a crash or an evicted pod would end it, no drain)."""
        self.stop_service(name, hard=hard)
        self.start_service(name)

    def stop_service(self, name: str, *, hard: bool = False) -> None:
        """Stop one service (SIGTERM, or SIGKILL when ``hard``) until :meth:`start_service`."""
        process = self.processes.pop(name)
        if hard and process.alive():
            process.popen.kill()
            process.popen.wait()
        process.stop()

    def start_service(self, name: str) -> None:
        self._service(name)
        self._wait_ready([name])

    # --- orders ------------------------------------------------------------------------------

    def push(self, orders: Sequence[PlannedOrder], chunk: int = 250) -> list[str]:
        """Create and activate the orders in the CRM, as sales reps would."""
        ids: list[str] = []
        for start in range(0, len(orders), chunk):
            part = orders[start : start + chunk]
            created = self.crm.create_orders([order.record for order in part])
            ids += created
            self.planned.update(
                {order_id: order.expected for order_id, order in zip(created, part, strict=True)}
            )
        return ids

    def outcome(self) -> Outcome:
        records = {record["Id"]: record for record in self.crm.records("Order")}
        counts: Counter[str] = Counter()
        settled, wrong = 0, []
        planned = dict(self.planned)  # orders may be pushed meanwhile, from another thread
        for order_id, expected in planned.items():
            record = records.get(order_id, {})
            state = _state(record)
            for name in state:
                counts[name] += 1
            if expected == SHIPPED:
                if {"accepted", "invoiced", "shipped"} <= state:
                    settled += 1
                elif "rejected" in state:
                    wrong.append(f"{order_id}: rejected: {record.get('ERP_Message__c')}")
            elif "rejected" in state:
                message = str(record.get("ERP_Message__c") or "")
                if message.startswith(f"{expected}:"):
                    settled += 1
                else:
                    wrong.append(f"{order_id}: expected {expected}, got {message}")
            elif "accepted" in state:
                wrong.append(f"{order_id}: expected {expected}, but the ERP accepted it")
        return Outcome(counts, settled, wrong, len(planned) - settled - len(wrong))

    def wait_settled(
        self, timeout_s: float, on_progress: Callable[[Outcome], None] = lambda _: None
    ) -> Outcome:
        """Until every pushed order is in its end state, or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            outcome = self.outcome()
            on_progress(outcome)
            if outcome.pending == 0 or time.monotonic() > deadline:
                return outcome
            time.sleep(0.5)

    def metrics(self) -> Counter[str]:
        """Every service's ``revsync_*_total`` counters, summed by name (and error class)."""
        totals: Counter[str] = Counter()
        for process in self.processes.values():
            port = process.health_port()
            if port is None or not process.alive():
                continue
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.HTTPError:
                continue
            for name, labels, value in METRIC.findall(text):
                totals[name] += int(float(value))
                error_class = re.search(r'error_class="([^"]+)"', labels)
                if error_class:
                    totals[f"{name}:{error_class[1]}"] += int(float(value))
        return totals

    # --- plumbing ----------------------------------------------------------------------------

    def service_environment(self) -> dict[str, str]:
        basic_auth = self.settings.schema_registry_basic_auth
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("REVSYNC_")},
            **{kafka_env_name(k): v for k, v in self.settings.kafka.items()},
            **(
                {"REVSYNC_SCHEMA_REGISTRY_BASIC_AUTH": basic_auth.get_secret_value()}
                if basic_auth is not None
                else {}
            ),
            "REVSYNC_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
            "REVSYNC_SCHEMA_REGISTRY_URL": self.via("registry", self.settings.schema_registry_url),
            "REVSYNC_POSTGRES_DSN": self.via(
                "postgres", self.settings.postgres_dsn.get_secret_value()
            ),
            "REVSYNC_SCHEMAS_DIR": str(self.schemas_dir),
            "REVSYNC_CRM_INSTANCE_URL": self.via("crm", self.crm_url),
            "REVSYNC_CRM_CLIENT_ID": DEFAULT_CLIENT_ID,
            "REVSYNC_CRM_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "REVSYNC_CRM_INTEGRATION_USER_ID": INTEGRATION_USER_ID,
            **self._bridge_environment(),
            **self._erp_environment(),
            **self._process_api_environment(),
            "REVSYNC_HEALTH_PORT": "0",
            "REVSYNC_SESSION_TIMEOUT_MS": "6000",
            **self.service_env,
        }

    def _erp_environment(self) -> dict[str, str]:
        """Each ERP's settings; with routes, the routes instead of one ERP for all."""
        environment: dict[str, str] = {}
        for system, url in self.erp_urls.items():
            environment.update(self.sandbox_erps[system].environment(url, self.via))
        if self.erp_routes and environment:
            environment.pop("REVSYNC_ERP_SYSTEM", None)
            environment["REVSYNC_ERP_ROUTES"] = json.dumps(dict(self.erp_routes))
        return environment

    def _bridge_environment(self) -> dict[str, str]:
        if not self.pubsub_url:  # asked before the sandboxes run (registering the contracts)
            return {}
        return {
            # The sandbox speaks the Pub/Sub API in plain gRPC on loopback.
            "REVSYNC_CRM_PUBSUB_ENDPOINT": urlsplit(self.via("pubsub", self.pubsub_url)).netloc,
            "REVSYNC_CRM_PUBSUB_TLS": "false",
            "REVSYNC_CDC_CHANNELS": ",".join(self.channels),
            # Everything the sandbox holds, from its start: no order pushed before the bridge
            # first subscribed is missed.
            "REVSYNC_CDC_INITIAL": "earliest",
            # Three missed keepalives end a stream that only looks alive.
            "REVSYNC_CDC_STALL_TIMEOUT_S": str(3 * KEEPALIVE_S),
        }

    def _process_api_environment(self) -> dict[str, str]:
        if not self.process_api_url:  # asked before the sandboxes run
            return {}
        return {
            "REVSYNC_PROCESS_API_OIDC_ISSUER": self.idp_issuer,
            "REVSYNC_PROCESS_API_OIDC_AUDIENCE": PROCESS_API_AUDIENCE,
            "REVSYNC_PROCESS_API_PORT": str(urlsplit(self.process_api_url).port),
        }

    def _revsync(self, *arguments: str) -> None:
        result = subprocess.run(
            [str(REVSYNC), *arguments],
            env={**self.service_environment(), **self.identity("governance")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise PipelineError(f"revsync {' '.join(arguments)} failed:\n{result.stderr}")

    def _sandbox(self, name: str, *options: list[str]) -> dict[str, str]:
        """Start a sandbox; what it announces (its ``url``, the CRM's ``pubsub`` address)."""
        log = self.workdir / f"sandbox-{name}.log"
        output = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", f"sandbox.{name}", "--port", "0"]
            + [word for option in options for word in option],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=output,
        )
        process = Process(f"sandbox-{name}", popen, log, output=output)
        self.processes[process.name] = process
        assert popen.stdout is not None
        line = _read_line(popen.stdout, timeout_s=60)
        if not line:
            raise PipelineError(f"the {name} sandbox did not start; see {log}")
        if not process.alive():
            raise PipelineError(f"the {name} sandbox died; see {log}")
        return {key: str(value) for key, value in json.loads(line).items()}

    def _service(self, name: str) -> None:
        log = self.workdir / f"{name}.log"
        output = log.open("ab")
        start = output.tell()
        popen = subprocess.Popen(
            [str(REVSYNC), "run", name],
            cwd=REPO,
            env={**self.service_environment(), **self.identity(name)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = Process(name, popen, log, output, log_start=start)

    def _wait_ready(self, names: Sequence[str] | None = None, timeout_s: float = 90) -> None:
        waiting = [self.processes[name] for name in names or self.deployables]
        deadline = time.monotonic() + timeout_s
        while waiting:
            self._check_alive()
            if time.monotonic() > deadline:
                names_left = ", ".join(process.name for process in waiting)
                raise PipelineError(f"not ready after {timeout_s:.0f}s: {names_left}")
            waiting = [process for process in waiting if not _ready(process)]
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for process in self.processes.values():
            if not process.alive():
                tail = process.log.read_text(errors="replace").splitlines()[-15:]
                raise PipelineError(
                    f"{process.name} exited ({process.popen.returncode}); {process.log}:\n"
                    + "\n".join(tail)
                )


def _state(record: Mapping[str, Any]) -> set[str]:
    state = set()
    if record.get("ERP_Status__c") == "Accepted":
        state.add("accepted")
    if record.get("ERP_Status__c") == "Rejected":
        state.add("rejected")
    if record.get("Billing_Status__c") in ("Invoiced", "Partially Paid", "Paid"):
        state.add("invoiced")
    if record.get("Delivery_Status__c") == "Shipped":
        state.add("shipped")
    return state


def _ready(process: Process) -> bool:
    port = process.health_port()
    if port is None:
        return False
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def free_port() -> int:
    """A free port for a server told its port in advance, taken below the kernel's ephemeral
    range: a port from inside it could be handed to another process (a server on port 0, an
    outgoing connection) before this one binds it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    chooser = random.SystemRandom()
    for _ in range(100):
        port = chooser.randrange(10_000, ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PipelineError(f"no free port between 10000 and {ephemeral}")


def _read_line(stream: IO[bytes], timeout_s: float) -> str:
    """The first line a child prints, or "" if it prints none in time."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stream.readline().decode()
