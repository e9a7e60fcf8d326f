"""``revsync run <deployable>``: one installed deployable in the foreground, as production runs
it.

A consumer deployable is the shared consumer loop bound to its handler (and, when it emits,
the relay for revsync's outbox beside it); a relay deployable is the shared relay with its
row translation; a source deployable (the CDC bridge) is a loop of its own; an API deployable
(the process API) is its own server, with the outbox relay beside it when it emits. The process logs
JSON, serves ``/metrics``, ``/healthz`` and ``/readyz``, and stops cleanly on SIGTERM: the
batch in hand is finished and committed first.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.contracts.catalog import load_catalog
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.deployables import (
    ApiDeployable,
    ConsumerDeployable,
    Context,
    Runnable,
    UnknownDeployable,
    discover,
    input_decoder,
)
from revsync.runtime.loop import ConsumerLoop, Policy
from revsync.runtime.observability import HealthServer, Liveness, configure_logging
from revsync.runtime.relay import OutboxRelay, OutboxTable
from revsync.settings import ServiceSettings, Settings

log = logging.getLogger(__name__)


def policy_from(service: ServiceSettings) -> Policy:
    return Policy(
        batch_size=service.batch_size,
        session_timeout_ms=service.session_timeout_ms,
        max_poll_interval_ms=service.max_poll_interval_ms,
        in_process_attempts=service.in_process_attempts,
    )


@contextmanager
def _context() -> Iterator[Context]:
    settings = Settings.load()
    service = ServiceSettings.load()
    configure_logging(service.log_level)
    catalog = load_catalog(settings.schemas_dir)
    registry = SchemaRegistryClient(settings.registry_config())
    serde = EventSerde(registry, catalog, SchemaRepository(settings.schemas_dir))
    with ExitStack() as resources:
        yield Context(settings, service, catalog, serde, resources)


def run(name: str, *, max_idle_s: float | None = None) -> None:
    """Run deployable ``name`` until SIGTERM/SIGINT (or idle for ``max_idle_s``)."""
    deployables = discover()
    if name not in deployables:
        raise UnknownDeployable(
            f"unknown service {name!r}; one of {', '.join(sorted(deployables))}"
        )
    deployable = deployables[name]
    with _context() as context:
        liveness = Liveness(timeout_s=60)
        health = HealthServer(context.service.health_port, liveness.alive, liveness.serving).start()
        context.resources.callback(health.stop)
        log.info("%s: health and metrics on port %d", name, health.port)
        if isinstance(deployable, ConsumerDeployable):
            _run_consumer(deployable, context, liveness, max_idle_s)
        elif isinstance(deployable, ApiDeployable):
            server = deployable.build(context, liveness)
            with _outbox_relay(
                context, deployable.service, bool(deployable.outputs), server.migrated, server.stop
            ):
                _run_own_loop(server, max_idle_s)
        else:
            _run_own_loop(deployable.build(context, liveness), max_idle_s)


def _run_consumer(
    deployable: ConsumerDeployable,
    context: Context,
    liveness: Liveness,
    max_idle_s: float | None,
) -> None:
    loop = ConsumerLoop(
        consumer=context.catalog.consumer_of(deployable.service),
        catalog=context.catalog,
        handler=deployable.build(context),
        serde=context.serde,
        kafka_config=context.settings.kafka_config(),
        postgres_dsn=context.settings.postgres_dsn.get_secret_value(),
        policy=policy_from(context.service),
        liveness=liveness,
        decoder=input_decoder(context.catalog, context.serde),
    )
    with _outbox_relay(context, deployable.service, deployable.emits, loop.migrated, loop.stop):
        loop.run(max_idle_s=max_idle_s)


@contextmanager
def _outbox_relay(
    context: Context,
    service: str,
    emits: bool,
    migrated: threading.Event,
    stop: Callable[[], None],
) -> Iterator[None]:
    """For a deployable that emits: the relay for its rows of revsync's outbox in a thread
    beside it, until it ends (as itself: its principal may write its own topics only)."""
    if not emits:
        yield
        return
    relay = OutboxRelay(
        dsn=context.settings.postgres_dsn.get_secret_value(),
        kafka_config=context.settings.kafka_config(),
        table=OutboxTable(owner_column="service", owner=service),
    )
    thread = threading.Thread(
        target=_relay_beside, args=(relay, migrated, stop), name="outbox-relay", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        relay.stop()
        thread.join(timeout=30)


def _relay_beside(relay: OutboxRelay, migrated: threading.Event, stop: Callable[[], None]) -> None:
    """The relay beside a deployable's loop or server. It waits out PostgreSQL outages
    itself; any other failure stops the deployable too, so the process exits and is restarted
    rather than going on with emitted events that nothing publishes. It starts once the
    deployable has created the runtime's tables, the outbox among them (a new database has
    none)."""
    while not migrated.wait(0.5):
        if relay.stopped:
            return
    try:
        relay.run()
    except Exception:
        log.exception("outbox relay failed; stopping the service")
        stop()


def _run_own_loop(runnable: Runnable, max_idle_s: float | None) -> None:
    """A relay or source deployable: its own loop (which says when it is ready), stopped by
    SIGTERM or SIGINT."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: runnable.stop())
    runnable.run(max_idle_s=max_idle_s)
