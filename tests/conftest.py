"""Test harness: markers by folder, and the live stack for integration and e2e tests.

Endpoints come, in order of preference, from the REVSYNC_* environment variables, from
testcontainers when a Docker engine answers, or from the local stack (`revsync stack up`),
started once per test run and stopped again only if that run started it.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from sandbox.harness import Pipeline, with_consumer_settings

from contract_fixtures import cli_for, drop_topics, governed, isolated_contracts
from revsync.settings import Settings
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import LocalStack
from runtime_support import RuntimeWorld, prepare_database
from secure_support import SecureStack, start_secure_stack

ENDPOINT_VARIABLES = (
    "REVSYNC_BOOTSTRAP_SERVERS",
    "REVSYNC_SCHEMA_REGISTRY_URL",
    "REVSYNC_POSTGRES_DSN",
)
TESTS = Path(__file__).parent

# The port contracts' assertions live in a helper module: rewrite them, whichever test module
# imports it first, so a failure shows its values.
pytest.register_assert_rewrite("port_contracts")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: tests/unit -> unit, and so on."""
    for item in items:
        kind = Path(item.path).relative_to(TESTS).parts[0]
        if kind in ("unit", "integration", "e2e", "secure"):
            item.add_marker(getattr(pytest.mark, kind))


@dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    schema_registry_url: str
    postgres_dsn: str
    provider: str
    """Where they came from: "environment", "testcontainers" or "local stack"."""
    local_stack: LocalStack | None = None


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    given = [name for name in ENDPOINT_VARIABLES if os.environ.get(name)]
    if given:
        missing = sorted(set(ENDPOINT_VARIABLES) - set(given))
        if missing:
            pytest.exit(f"set all of {', '.join(ENDPOINT_VARIABLES)}; missing {missing}", 2)
        yield Endpoints(
            os.environ["REVSYNC_BOOTSTRAP_SERVERS"],
            os.environ["REVSYNC_SCHEMA_REGISTRY_URL"],
            os.environ["REVSYNC_POSTGRES_DSN"],
            "environment",
        )
    elif _docker_engine_answers():
        with ExitStack() as containers:
            yield _testcontainers(containers)
    else:
        stack = LocalStack(StackSettings.load())
        was_running = stack.is_up()
        stack.up()
        yield Endpoints(
            stack.kafka.bootstrap_servers,
            stack.registry.url,
            stack.postgres.dsn(),
            "local stack",
            stack,
        )
        if not was_running:
            # Kafka clients the tests left behind would log their reconnects after the run.
            gc.collect()
            stack.down()


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """The secured stack, governed for this run (tests/secure)."""
    yield from start_secure_stack(tmp_path_factory)


@pytest.fixture(scope="session")
def settings(endpoints: Endpoints) -> Settings:
    return Settings(
        bootstrap_servers=endpoints.bootstrap_servers,
        schema_registry_url=endpoints.schema_registry_url,
        postgres_dsn=endpoints.postgres_dsn,
    )


@pytest.fixture
def local_stack(endpoints: Endpoints) -> LocalStack:
    """The local stack itself, for tests of `revsync stack`; other providers have none."""
    if endpoints.local_stack is None:
        pytest.skip(f"endpoints come from the {endpoints.provider}, not the local stack")
    return endpoints.local_stack


def _docker_engine_answers() -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def _testcontainers(containers: ExitStack) -> Endpoints:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    kafka = containers.enter_context(KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft())
    postgres = containers.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
    registry = containers.enter_context(
        DockerContainer("apicurio/apicurio-registry:3.3.3")
        .with_exposed_ports(8080)
        .waiting_for(HttpWaitStrategy(8080, "/apis/ccompat/v7/subjects"))
    )
    host, port = registry.get_container_host_ip(), registry.get_exposed_port(8080)
    return Endpoints(
        kafka.get_bootstrap_server(),
        f"http://{host}:{port}/apis/ccompat/v7",
        postgres.get_connection_url(),
        "testcontainers",
    )


# --- the runtime against an isolated catalog ------------------------------------------------


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[RuntimeWorld]:
    """A governed catalog of its own (retry tiers 1 s and 2 s) and the runtime's tables."""
    contracts = isolated_contracts(tmp_path / "avro")
    # Its tests dead-letter records by the dozen on purpose: a breaker that lets them.
    with_consumer_settings(
        contracts,
        retry_tiers=["1s", "2s"],
        circuit_breaker={"window": 1000, "consecutive_dead_letters": 1000},
    )
    catalog = governed(cli_for(settings), contracts)
    prepare_database(settings)
    yield RuntimeWorld(settings, contracts, catalog)
    drop_topics(settings, contracts)


# --- end to end: the whole pipeline per test -------------------------------------------------

# Short tiers, so a test sees a failure retried through every one of them in seconds.
E2E_RETRY_TIERS = ["1s", "2s", "4s"]


@pytest.fixture
def start_pipeline(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    started: list[Pipeline] = []

    def start(
        invoice_delay_s: float = 0.0,
        ship_delay_s: float = 0.0,
        erp_system: str = "reference",
        service_env: Mapping[str, str] | None = None,
        erp_routes: Mapping[str, str] | None = None,
    ) -> Pipeline:
        contracts = isolated_contracts(tmp_path / "contracts")
        with_consumer_settings(contracts, retry_tiers=E2E_RETRY_TIERS)
        pipeline = Pipeline(
            settings=settings,
            workdir=tmp_path / "logs",
            schemas_dir=contracts,
            invoice_delay_s=invoice_delay_s,
            ship_delay_s=ship_delay_s,
            erp_system=erp_system,
            erp_routes=erp_routes or {},
            service_env=service_env or {},
        )
        started.append(pipeline)
        return pipeline.start()

    yield start
    for pipeline in started:
        pipeline.stop()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20261201)  # noqa: S311 - a repeatable order mix
