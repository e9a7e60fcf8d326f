"""The process API's wiring: its app bound to the ERP adapter (behind a circuit breaker and
caches), the shared order rules, the identity provider and revsync's outbox, served by uvicorn;
and its declaration for ``revsync run process-api``.

It emits the ``order.created`` events of the orders submitted to it, through revsync's outbox
(the relay beside it publishes them), and consumes nothing.
"""

from __future__ import annotations

import logging
import threading

import httpx
from psycopg_pool import ConnectionPool

from process_api import logic
from process_api.app import ProcessApiConfig, create_app
from process_api.reads import ErpReads
from process_api.submissions import TABLES, Submissions
from revsync.connectors.guard import CallBreaker
from revsync.contracts.events import Event, OrderCreated
from revsync.deployables import ApiDeployable, Context, output_topics
from revsync.migrations import ensure
from revsync.oidc import OidcProvider
from revsync.rules.book import RuleBook
from revsync.runtime import storage as runtime_tables
from revsync.runtime.breaker import TripRule
from revsync.runtime.observability import Liveness
from revsync.runtime.outbox import OutboxWriter
from revsync.runtime.served import AppServer
from revsync.settings import ProcessApiSettings, SettingsError

log = logging.getLogger(__name__)
OUTPUTS: tuple[type[Event], ...] = (OrderCreated,)
BREAKER_WINDOW = 20
"""The latest ERP calls the breaker's failure ratio is taken over."""
BREAKER_MAX_FAILED_RATIO = 0.5
POOL_SIZE = 8
"""Database connections, for order submissions only."""


def build(context: Context, liveness: Liveness) -> AppServer:
    own = ProcessApiSettings.load()
    migrated = threading.Event()
    config = configured(context, own, liveness, migrated)
    log.info("process API on %s:%d", own.process_api_host, own.process_api_port)
    return server(config, own.process_api_host, own.process_api_port, migrated)


def server(config: ProcessApiConfig, host: str, port: int, migrated: threading.Event) -> AppServer:
    """uvicorn serving the app until stopped; while it serves, the process is alive."""
    return AppServer("process-api", create_app(config), host, port, config.liveness, migrated)


def configured(
    context: Context, own: ProcessApiSettings, liveness: Liveness, migrated: threading.Event
) -> ProcessApiConfig:
    """The app's configuration from the settings; ``migrated`` is set at start-up, once the
    tables exist."""
    issuer, audience = own.process_api_oidc_issuer, own.process_api_oidc_audience
    if issuer is None or audience is None:
        raise SettingsError(
            "the process API takes only the identity provider's tokens: set "
            "REVSYNC_PROCESS_API_OIDC_ISSUER and REVSYNC_PROCESS_API_OIDC_AUDIENCE"
        )
    service = context.service
    breaker = CallBreaker(
        "erp",
        TripRule(
            BREAKER_WINDOW,
            BREAKER_MAX_FAILED_RATIO,
            own.process_api_breaker_failures,
            "ERP calls",
            "failed",
        ),
        own.process_api_breaker_cool_down_s,
    )
    pool = ConnectionPool(
        context.settings.postgres_dsn.get_secret_value(),
        min_size=1,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True},
        open=False,
    )
    context.resources.callback(pool.close)
    to_provider = httpx.Client(timeout=service.http_timeout_s)
    context.resources.callback(to_provider.close)
    topic = output_topics(context.catalog, OUTPUTS)[OrderCreated]

    def prepare() -> None:
        with pool.connection() as connection:
            ensure(connection, (runtime_tables.PIPELINE, *TABLES))
        migrated.set()
        context.serde.prepare([topic])

    return ProcessApiConfig(
        reads=ErpReads(
            context.erp(),
            breaker,
            master_data_ttl_s=service.master_data_ttl_s,
            live_ttl_s=own.process_api_live_ttl_s,
            stale_for_s=own.process_api_stale_for_s,
        ),
        rules=RuleBook.load(service.order_rules),
        provider=OidcProvider(issuer, to_provider),
        audience=audience,
        limits=logic.RateLimits(own.process_api_rate_per_s, own.process_api_burst),
        submissions=Submissions(pool, OutboxWriter(context.serde, "process_api"), topic),
        prepare=prepare,
        liveness=liveness,
    )


DEPLOYABLE = ApiDeployable(
    name="process-api", service="process_api", outputs=OUTPUTS, build=build, tables=TABLES
)
