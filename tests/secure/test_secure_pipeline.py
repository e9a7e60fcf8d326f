"""The order-to-cash pipeline on the secured stack, every service authenticated as its own
principal with only its own ACLs and the services' database role: orders still settle."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox import scenario
from sandbox.harness import Pipeline

from revsync.settings import Settings
from runtime_support import wait_for
from secure_support import SecureStack


@pytest.fixture
def pipeline(secure_stack: SecureStack, tmp_path: Path) -> Iterator[Pipeline]:
    admin = Settings(
        bootstrap_servers=secure_stack.stack.kafka.bootstrap_servers,
        schema_registry_url=secure_stack.stack.registry.url,
        # The ERP sandbox keeps its outbox in the stack's PostgreSQL, as the ERP's own.
        postgres_dsn=secure_stack.admin_dsn(),
    )

    def identity(name: str) -> dict[str, str]:
        own = secure_stack.environment(name)
        if name == "erp-outbox-publisher":  # reads the ERP's outbox with the ERP's account
            own["REVSYNC_ERP_OUTBOX_DSN"] = secure_stack.admin_dsn()
        return own

    started = Pipeline(
        settings=admin,
        workdir=tmp_path / "logs",
        schemas_dir=secure_stack.contracts,
        invoice_delay_s=0.0,
        ship_delay_s=0.0,
        identity=identity,
        # Governed once for the run (db migrate, topics, schemas, ACLs) by the fixture.
        governance=(),
    )
    try:
        yield started.start()
    finally:
        started.stop()


def test_orders_settle_with_every_service_confined_to_its_own_principal(
    pipeline: Pipeline, rng: random.Random
) -> None:
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    planned = list(scenario.orders(data, 60, rng, invalid_share=0.2))
    pipeline.push(planned)

    outcome = pipeline.wait_settled(180)

    assert not outcome.wrong, outcome.wrong[:5]
    assert outcome.pending == 0, f"{outcome.pending} orders did not settle: {outcome.counts}"
    shipped = sum(order.expected == scenario.SHIPPED for order in planned)
    assert len(pipeline.erp.sales_orders()) == shipped
    # Nothing was refused on the way: no service needed a right it lacks.
    for name in pipeline.deployables:
        log = (pipeline.workdir / f"{name}.log").read_text(errors="replace")
        assert "AUTHORIZATION_FAILED" not in log, name
        assert "permission denied" not in log, name


def test_a_dead_letter_is_written_read_and_replayed_each_by_the_principal_allowed_to(
    pipeline: Pipeline, secure_stack: SecureStack, rng: random.Random
) -> None:
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    planned = list(scenario.orders(data, 2, rng, invalid_share=0.0))
    # The ERP refuses every create for a while: order-sync dead-letters both orders.
    pipeline.erp.set_faults(echo_rate=1)
    pipeline.push(planned)

    def listed() -> str:
        shown = secure_stack.revsync("operator", "dlt", "ls", "--service", "order-sync")
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    wait_for(lambda: "2 dead letters" in listed(), timeout_s=120)
    pipeline.erp.set_faults(echo_rate=0)
    replayed = secure_stack.revsync("operator", "dlt", "replay", "--service", "order-sync", "--yes")

    assert replayed.returncode == 0, replayed.stderr
    outcome = pipeline.wait_settled(180)
    assert (outcome.settled, outcome.wrong) == (len(planned), []), outcome
    assert "0 dead letters" in listed()
