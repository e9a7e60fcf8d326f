"""The consumer loop and the relay ride out their dependencies' restarts: PostgreSQL, the
broker and the schema registry, each reached through a proxy the test cuts. While one is out
the service is alive (/healthz) but not ready (/readyz); once it is back the work resumes
where it stopped, every event handled once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cuttable_proxy import CuttableProxy
from revsync.contracts.events import OrderCreated
from revsync.runtime.observability import Liveness
from revsync.runtime.relay import OutboxRelay
from runtime_support import RuntimeWorld, read_topic, wait_for
from samples import sample_order


def order(number: int) -> OrderCreated:
    return sample_order(f"8017h0000{number:09d}")


def through(proxy: CuttableProxy, dsn: str) -> str:
    return make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))


@pytest.fixture
def postgres(world: RuntimeWorld) -> Iterator[CuttableProxy]:
    target = conninfo_to_dict(world.settings.postgres_dsn.get_secret_value())
    proxy = CuttableProxy(str(target.get("host", "127.0.0.1")), int(str(target.get("port", 5432))))
    yield proxy
    proxy.close()


def running(loop_run: threading.Thread) -> threading.Thread:
    loop_run.start()
    return loop_run


def test_a_postgresql_restart_mid_run_is_waited_out_and_nothing_is_lost_or_doubled(
    world: RuntimeWorld, postgres: CuttableProxy
) -> None:
    liveness = Liveness(timeout_s=30)
    dsn = through(postgres, world.settings.postgres_dsn.get_secret_value())
    loop = world.loop(world.handler(), liveness=liveness, postgres_dsn=dsn)
    first = [order(n) for n in range(20)]
    world.produce(first)
    runner = running(threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}))
    try:
        wait_for(lambda: len(world.effects()) == 20)
        assert liveness.serving()

        postgres.cut()  # what a restart or a failover does to every open connection
        later = [order(100 + n) for n in range(20)]
        world.produce(later)
        wait_for(lambda: not liveness.serving(), timeout_s=15)
        time.sleep(3)
        assert runner.is_alive()
        assert liveness.alive()
        assert not liveness.serving()

        postgres.restore()
        wait_for(lambda: len(world.effects()) == 40, timeout_s=60)
        wait_for(liveness.serving, timeout_s=15)
    finally:
        loop.stop()
        runner.join(60)
    effects = world.effects()
    assert sorted(order_id for order_id, _ in effects) == sorted(
        e.crm_order_id for e in first + later
    )


def test_postgresql_down_at_start_is_waited_for(
    world: RuntimeWorld, postgres: CuttableProxy
) -> None:
    liveness = Liveness(timeout_s=30)
    postgres.cut()
    world.produce([order(200)])
    loop = world.loop(
        world.handler(),
        liveness=liveness,
        postgres_dsn=through(postgres, world.settings.postgres_dsn.get_secret_value()),
    )
    runner = running(threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}))
    try:
        time.sleep(3)
        assert runner.is_alive()
        assert liveness.alive()
        assert not liveness.serving()
        postgres.restore()
        wait_for(lambda: len(world.effects()) == 1, timeout_s=60)
        assert liveness.serving()
    finally:
        loop.stop()
        runner.join(60)


def test_a_broker_unreachable_at_start_is_waited_for(world: RuntimeWorld) -> None:
    host, port = world.settings.bootstrap_servers.split(",")[0].rsplit(":", 1)
    broker = CuttableProxy(host, int(port))
    broker.cut()
    liveness = Liveness(timeout_s=30)
    world.produce([order(300)])
    loop = world.loop(
        world.handler(),
        liveness=liveness,
        kafka_config=world.settings.kafka_config(
            **{"bootstrap.servers": f"127.0.0.1:{broker.port}"}
        ),
    )
    runner = running(threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}))
    try:
        wait_for(lambda: liveness.is_out("kafka"), timeout_s=30)
        assert runner.is_alive()
        assert liveness.alive()
        assert not liveness.serving()
        broker.restore()
        wait_for(lambda: len(world.effects()) == 1, timeout_s=60)
        wait_for(liveness.serving, timeout_s=15)
    finally:
        loop.stop()
        runner.join(60)
        broker.close()


def test_the_registry_down_at_start_is_waited_for(world: RuntimeWorld) -> None:
    url = urlsplit(world.settings.schema_registry_url)
    registry = CuttableProxy(url.hostname or "127.0.0.1", url.port or 80)
    registry.cut()
    liveness = Liveness(timeout_s=30)
    world.produce([order(400)])
    proxied = urlunsplit(url._replace(netloc=f"127.0.0.1:{registry.port}"))
    loop = world.loop(world.handler(), liveness=liveness, serde=world.serde(proxied))
    runner = running(threading.Thread(target=loop.run, kwargs={"max_idle_s": 60}))
    try:
        wait_for(lambda: liveness.is_out("schema-registry"), timeout_s=30)
        assert runner.is_alive()
        assert not liveness.serving()
        registry.restore()
        wait_for(lambda: len(world.effects()) == 1, timeout_s=60)
        wait_for(liveness.serving, timeout_s=15)
    finally:
        loop.stop()
        runner.join(60)
        registry.close()


def test_the_relay_rides_out_a_postgresql_restart(
    world: RuntimeWorld, postgres: CuttableProxy
) -> None:
    dsn = world.settings.postgres_dsn.get_secret_value()
    loop = world.loop(world.handler())
    world.produce([order(500 + n) for n in range(5)])
    loop.run(max_idle_s=2)  # five accepted events wait in the outbox
    liveness = Liveness(timeout_s=30)
    relay = OutboxRelay(
        dsn=through(postgres, dsn), kafka_config=world.settings.kafka_config(), liveness=liveness
    )
    postgres.cut()
    runner = running(threading.Thread(target=relay.run, name="relay"))
    try:
        wait_for(lambda: liveness.is_out("postgresql"), timeout_s=30)
        time.sleep(2)
        assert runner.is_alive()
        postgres.restore()
        published = read_topic(world.settings, world.accepted_topic, 5, timeout_s=60)
        assert sorted(m.key() or b"" for m in published) == sorted(
            order(500 + n).crm_order_id.encode() for n in range(5)
        )
        wait_for(lambda: not liveness.is_out("postgresql"), timeout_s=15)
    finally:
        relay.stop()
        runner.join(60)
    assert world.outbox_rows() == 0  # the relay deletes what it has published
