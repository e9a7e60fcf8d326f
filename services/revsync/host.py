"""``revsync run <service>``: one service in the foreground, as production runs it.

Each service is the shared consumer loop (or, for the ERP outbox publisher, the shared
relay) bound to that service's handler and adapters. The process logs JSON, serves
``/metrics``, ``/healthz`` and ``/readyz``, and stops cleanly on SIGTERM: the batch in hand
is finished and committed first.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.connectors.cdc import decode_change
from revsync.connectors.erp import (
    ErpConfig,
    ErpOutboxRow,
    ErpRestAdapter,
    canonical_event,
)
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.contracts.catalog import Catalog, TopicFormat, load_catalog
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.runtime import headers as h
from revsync.runtime.consumer import ConsumerLoop, Decoder, Policy
from revsync.runtime.handler import Handler, Inbound
from revsync.runtime.observability import HealthServer, Liveness, configure_logging
from revsync.runtime.outbox import (
    OutboxRelay,
    OutboxRow,
    OutboxTable,
    RowEncoder,
    cloud_event_headers,
)
from revsync.settings import ServiceSettings, Settings

log = logging.getLogger(__name__)
ERP_OUTBOX_PUBLISHER = "erp-outbox-publisher"
ERP_SOURCE = "/erp/outbox"


@dataclass
class Context:
    """What a service's handler is built from; adapters are made on first use and closed
    when the service stops."""

    settings: Settings
    service: ServiceSettings
    catalog: Catalog
    serde: EventSerde
    resources: ExitStack

    def crm(self) -> SalesforceClient:
        s = self.service
        s.required("crm_instance_url", "crm_client_id", "crm_client_secret")
        assert s.crm_instance_url
        assert s.crm_client_id
        assert s.crm_client_secret
        client = SalesforceClient(
            SalesforceConfig(
                instance_url=s.crm_instance_url,
                client_id=s.crm_client_id,
                client_secret=s.crm_client_secret,
                api_version=s.crm_api_version,
                client_name=s.crm_client_name,
                timeout_s=s.http_timeout_s,
            )
        )
        self.resources.callback(client.close)
        return client

    def erp(self) -> ErpRestAdapter:
        s = self.service
        s.required("erp_base_url", "erp_api_token")
        assert s.erp_base_url
        assert s.erp_api_token
        adapter = ErpRestAdapter(
            ErpConfig(
                base_url=s.erp_base_url, api_token=s.erp_api_token, timeout_s=s.http_timeout_s
            )
        )
        self.resources.callback(adapter.close)
        return adapter


@dataclass(frozen=True)
class ServiceSpec:
    package: str
    """The catalog names the consumer (and Kafka group) of each service package."""
    build: Callable[[Context], Handler]
    emits: bool
    """Whether it emits events, and so runs a relay for revsync's outbox."""


def _order_sync(context: Context) -> Handler:
    from order_sync.logic import Integration
    from order_sync.rules import RuleBook
    from order_sync.service import OrderSync

    s = context.service
    handler = OrderSync(
        crm=context.crm(),
        erp=context.erp(),
        rules=RuleBook.load(s.order_rules) if s.order_rules else RuleBook.load(),
        integration=Integration(s.crm_client_name, s.crm_integration_user_id),
        catalog=context.catalog,
        master_data_ttl_s=s.master_data_ttl_s,
        concurrency=s.handler_concurrency,
    )
    context.resources.callback(handler.close)
    return handler


def _invoice_sync(context: Context) -> Handler:
    from invoice_sync.service import InvoiceSync

    return InvoiceSync(context.crm())


def _fulfillment_sync(context: Context) -> Handler:
    from fulfillment_sync.service import FulfillmentSync

    return FulfillmentSync(context.crm())


SERVICES = {
    "order-sync": ServiceSpec("order_sync", _order_sync, emits=True),
    "invoice-sync": ServiceSpec("invoice_sync", _invoice_sync, emits=False),
    "fulfillment-sync": ServiceSpec("fulfillment_sync", _fulfillment_sync, emits=False),
}
NAMES = (*SERVICES, ERP_OUTBOX_PUBLISHER)


def decoder_for(catalog: Catalog, serde: EventSerde) -> Decoder:
    """Salesforce change events by the CDC decoder, revsync's own events by the serde."""
    formats = {topic.name: topic.format for topic in catalog.topics}

    def decode(topic: str, value: bytes | None) -> Inbound:
        if formats.get(topic) is TopicFormat.SALESFORCE_CDC:
            return decode_change(topic, value)
        return serde.deserialize(topic, value)

    return decode


def policy_from(service: ServiceSettings) -> Policy:
    return Policy(
        batch_size=service.batch_size,
        session_timeout_ms=service.session_timeout_ms,
        max_poll_interval_ms=service.max_poll_interval_ms,
        in_process_attempts=service.in_process_attempts,
    )


def erp_encoder(catalog: Catalog, serde: EventSerde) -> RowEncoder:
    """The ERP outbox publisher's translation: an ERP-native row to a canonical Avro event."""

    def encode(row: OutboxRow) -> tuple[str, bytes, h.Headers]:
        event = canonical_event(
            ErpOutboxRow(
                id=row.id,
                aggregatetype=row.aggregate_type,
                aggregateid=row.aggregate_id or "",
                type=row.type,
                payload=row.payload,
                created_at=row.created_at or datetime.now(UTC),
            )
        )
        topic = catalog.topic_for(event.schema_name).name
        return topic, serde.serialize(topic, event), cloud_event_headers(event, ERP_SOURCE)

    return encode


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
    """Run service ``name`` until SIGTERM/SIGINT (or idle for ``max_idle_s``)."""
    with _context() as context:
        liveness = Liveness(timeout_s=60)
        health = HealthServer(
            context.service.health_port, liveness.alive, lambda: liveness.ready
        ).start()
        context.resources.callback(health.stop)
        log.info("%s: health and metrics on port %d", name, health.port)
        if name == ERP_OUTBOX_PUBLISHER:
            _run_erp_publisher(context, liveness, max_idle_s)
            return
        spec = SERVICES[name]
        loop = ConsumerLoop(
            consumer=context.catalog.consumer_of(spec.package),
            catalog=context.catalog,
            handler=spec.build(context),
            serde=context.serde,
            kafka_config=context.settings.kafka_config(),
            postgres_dsn=context.settings.postgres_dsn.get_secret_value(),
            policy=policy_from(context.service),
            liveness=liveness,
            decoder=decoder_for(context.catalog, context.serde),
        )
        relay = (
            OutboxRelay(
                dsn=context.settings.postgres_dsn.get_secret_value(),
                kafka_config=context.settings.kafka_config(),
            )
            if spec.emits
            else None
        )
        threads = []
        if relay is not None:
            thread = threading.Thread(
                target=_keep_relaying, args=(relay,), name="outbox-relay", daemon=True
            )
            thread.start()
            threads.append(thread)
        try:
            loop.run(max_idle_s=max_idle_s)
        finally:
            if relay is not None:
                relay.stop()
            for thread in threads:
                thread.join(timeout=30)


def _keep_relaying(relay: OutboxRelay, pause_s: float = 5.0) -> None:
    """The relay beside a consumer loop: restarted after a failure (PostgreSQL restarting,
    say), so emitted events never sit unpublished while the loop goes on."""
    while True:
        try:
            relay.run()
        except Exception:
            log.exception("outbox relay failed; starting it again in %.0fs", pause_s)
            time.sleep(pause_s)
        else:
            return  # stopped


def _run_erp_publisher(context: Context, liveness: Liveness, max_idle_s: float | None) -> None:
    s = context.service
    dsn = (s.erp_outbox_dsn or context.settings.postgres_dsn).get_secret_value()
    relay = OutboxRelay(
        dsn=dsn,
        kafka_config=context.settings.kafka_config(),
        table=OutboxTable(
            table=s.erp_outbox_table,
            topic_column=None,
            headers_column=None,
            published_column=s.erp_outbox_published_column,
            notify_channel=s.erp_outbox_channel,
        ),
        encoder=erp_encoder(context.catalog, context.serde),
        liveness=liveness,
    )
    with psycopg.connect(dsn, connect_timeout=10):
        pass  # fail fast, naming the database, before the relay's loop starts
    liveness.ready = True
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: relay.stop())
    relay.run(max_idle_s=max_idle_s)
