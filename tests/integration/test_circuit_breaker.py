"""The dead-letter circuit breaker on the real stack: a handler failing everything trips it
after the catalog's threshold, the consumer dead-letters no more than that, stays stopped
across a restart, and takes records again once an operator resumes it."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg
from typer.testing import CliRunner

from revsync.cli import app
from revsync.contracts.catalog import CircuitBreakerSpec
from revsync.contracts.events import OrderCreated
from revsync.runtime.observability import Liveness
from runtime_support import Fault, RuntimeWorld, read_topic, wait_for
from samples import sample_order


def order(number: int) -> OrderCreated:
    return sample_order(f"8019c0000{number:09d}")


def with_breaker(world: RuntimeWorld, spec: CircuitBreakerSpec) -> RuntimeWorld:
    consumers = dict(world.catalog.consumers)
    consumers[world.consumer] = consumers[world.consumer].model_copy(
        update={"circuit_breaker": spec}
    )
    return dataclasses.replace(
        world, catalog=world.catalog.model_copy(update={"consumers": consumers})
    )


def test_a_handler_failing_everything_trips_the_breaker_until_an_operator_resumes(
    world: RuntimeWorld,
) -> None:
    world = with_breaker(
        world, CircuitBreakerSpec(window=100, consecutive_dead_letters=5, cool_down=3_600_000)
    )
    events = [order(n) for n in range(30)]
    world.produce(events)
    broken = world.handler(faults={e.crm_order_id: Fault(permanent=True) for e in events})
    liveness = Liveness(timeout_s=30)
    loop = world.loop(broken, liveness=liveness, preserve_key_order=False)
    runner = threading.Thread(target=loop.run, kwargs={"max_idle_s": 60})
    runner.start()
    try:
        wait_for(lambda: liveness.is_out("circuit-breaker"), timeout_s=30)
        time.sleep(2)  # it stays stopped: no record more is taken
        assert liveness.alive()
        assert not liveness.serving()
    finally:
        loop.stop()
        runner.join(60)
    dlt = world.catalog.dead_letter_topic(world.consumer)
    dead = read_topic(world.settings, dlt, 6, timeout_s=5)
    assert len(dead) == 5
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        [(reason,)] = db.execute(
            "SELECT reason FROM revsync_circuit_breakers WHERE consumer = %s", (world.consumer,)
        ).fetchall()
    assert reason == "5 records in a row were dead-lettered"

    # Fixed and restarted: still stopped, until the operator says so.
    liveness = Liveness(timeout_s=30)
    loop = world.loop(world.handler(), liveness=liveness, preserve_key_order=False)
    runner = threading.Thread(target=loop.run, kwargs={"max_idle_s": 60})
    runner.start()
    try:
        time.sleep(3)
        assert world.effects() == []
        environment = {
            "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
            "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
            "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
            "REVSYNC_SCHEMAS_DIR": str(world.contracts),
        }
        resumed = CliRunner().invoke(
            app,
            ["consumer", "resume", "--service", "order-sync", "--actor", "on-call"],
            env=environment,
        )
        assert resumed.exit_code == 0, resumed.output
        assert "circuit breaker closed" in resumed.output
        wait_for(lambda: len(world.effects()) == 25, timeout_s=30)
        wait_for(liveness.serving, timeout_s=10)
        again = CliRunner().invoke(
            app, ["consumer", "resume", "--service", "order-sync"], env=environment
        )
        assert again.exit_code == 2
        assert "is not open" in again.output
    finally:
        loop.stop()
        runner.join(60)
    # Every record is handled once: the five dead letters, and the rest after the resume.
    dead_keys = {(m.key() or b"").decode() for m in dead}
    assert sorted(order_id for order_id, _ in world.effects()) == sorted(
        e.crm_order_id for e in events if e.crm_order_id not in dead_keys
    )
