"""The process API's wiring: its app bound to the ERP adapter (behind a circuit breaker and
caches), the shared order rules, the identity provider and revsync's outbox, served by uvicorn;
and its declaration for ``revsync run process-api``.

It emits the ``order.created`` events of the orders submitted to it, through revsync's outbox
(the relay beside it publishes them), and consumes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import httpx
import uvicorn
from psycopg_pool import ConnectionPool

from process_api import logic
from process_api.app import ProcessApiConfig, create_app
from process_api.reads import ErpReads
from process_api.submissions import TABLES, Submissions
from revsync.connectors.guard import CallBreaker
from revsync.contracts.events import Event, OrderCreated
from revsync.deployables import ApiDeployable, Context, output_topics
from revsync.errors import RevsyncError
from revsync.migrations import ensure
from revsync.oidc import OidcProvider
from revsync.rules.book import RuleBook
from revsync.runtime import storage as runtime_tables
from revsync.runtime.breaker import TripRule
from revsync.runtime.observability import Liveness
from revsync.runtime.outbox import OutboxWriter
from revsync.settings import ProcessApiSettings, SettingsError

log = logging.getLogger(__name__)
OUTPUTS: tuple[type[Event], ...] = (OrderCreated,)
BREAKER_WINDOW = 20
"""The latest ERP calls the breaker's failure ratio is taken over."""
BREAKER_MAX_FAILED_RATIO = 0.5
POOL_SIZE = 8
"""Database connections, for order submissions only."""


class ServerStopped(RevsyncError):
    """The server stopped by itself: it could not start (a port taken, the database or the
    registry out at start-up), which its log says."""


class ProcessApiServer:
    """uvicorn serving the app until stopped; while it serves, the process is alive."""

    def __init__(
        self, config: ProcessApiConfig, host: str, port: int, migrated: threading.Event
    ) -> None:
        self.liveness = config.liveness
        self.migrated = migrated
        self._stopping = False
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(config),
                host=host,
                port=port,
                proxy_headers=True,
                server_header=False,
                log_level="warning",
            )
        )

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Serve until stopped (an API is never idle: ``max_idle_s`` does not apply)."""
        server = threading.Thread(target=self._serve, name="process-api")
        server.start()
        while server.is_alive():
            self.liveness.beat()
            server.join(1.0)
        if not self._stopping:
            raise ServerStopped("the process API stopped serving by itself; see its log")

    def _serve(self) -> None:
        # uvicorn says its start failed with SystemExit; run() tells it on.
        with contextlib.suppress(SystemExit):
            self._server.run()

    def stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True


def build(context: Context, liveness: Liveness) -> ProcessApiServer:
    own = ProcessApiSettings.load()
    migrated = threading.Event()
    config = configured(context, own, liveness, migrated)
    log.info("process API on %s:%d", own.process_api_host, own.process_api_port)
    return ProcessApiServer(config, own.process_api_host, own.process_api_port, migrated)


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
