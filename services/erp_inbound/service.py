"""erp_inbound's wiring: ``revsync run erp-inbound`` brings the changes of the ERPs reached
through their APIs into Kafka as revsync's canonical events, beside the relay of its own rows
of revsync's outbox.

For NetSuite, a loop polls SuiteQL on a durable watermark, and ``POST /erp/netsuite/changes``
takes the posts of the account's afterSubmit script (when its secret is set). For Business
Central, ``POST /erp/business-central/notifications`` answers the subscription handshake and
takes notifications; a loop works them, keeps the subscriptions renewed and polls for what
webhooks do not carry. Which ERPs it reads follows the ERP settings
(:class:`revsync.erp_settings.ErpSettings`): those of them reached through an API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from erp_inbound import business_central, netsuite
from erp_inbound.sink import OUTPUTS, TABLES, InboundSink
from revsync.connectors.business_central import BusinessCentralAdapter
from revsync.connectors.erps import business_central_config, netsuite_config
from revsync.connectors.netsuite import NetSuiteAdapter
from revsync.deployables import ApiDeployable, Context, output_topics
from revsync.erp_settings import API_REACHED, BUSINESS_CENTRAL, NETSUITE, ErpSettings
from revsync.errors import RevsyncError, TransientError, described
from revsync.migrations import ensure
from revsync.runtime import storage as runtime_tables
from revsync.runtime.observability import Liveness
from revsync.runtime.served import AppServer, Loop
from revsync.settings import SettingsError

log = logging.getLogger(__name__)
T = TypeVar("T")
POOL_SIZE = 4
"""Database connections: the sources' loops and the receiver's requests."""
NOTIFICATIONS = "/erp/business-central/notifications"
AFTER_SUBMIT = "/erp/netsuite/changes"


def build(context: Context, liveness: Liveness) -> AppServer:
    erp = ErpSettings.load()
    reached = [system for system in API_REACHED if system in erp.systems]
    if not reached:
        raise SettingsError(
            "erp-inbound reads ERPs reached through their APIs, and the ERP settings name none "
            "(REVSYNC_ERP_SYSTEM or REVSYNC_ERP_ROUTES: netsuite or business-central); a "
            "reference ERP's changes come through erp-outbox-publisher"
        )
    pool = ConnectionPool(
        context.settings.postgres_dsn.get_secret_value(),
        min_size=1,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True},
        open=False,
    )
    context.resources.callback(pool.close)
    timeout_s = context.service.http_timeout_s
    netsuite_source = _netsuite(context, erp, pool, timeout_s) if NETSUITE in reached else None
    business_central_source = (
        _business_central(context, erp, pool, timeout_s) if BUSINESS_CENTRAL in reached else None
    )
    pool.open(wait=True, timeout=30)
    with pool.connection() as connection:
        ensure(
            connection,
            (
                runtime_tables.PIPELINE,
                *TABLES,
                *(netsuite.TABLES if netsuite_source else ()),
                *(business_central.TABLES if business_central_source else ()),
            ),
        )
    context.serde.prepare(sorted(output_topics(context.catalog, OUTPUTS).values()))
    migrated = threading.Event()
    migrated.set()
    loops: list[Loop] = [
        source.run for source in (netsuite_source, business_central_source) if source is not None
    ]
    own = erp.erp_inbound_host, erp.erp_inbound_port
    log.info("erp-inbound: %s; receiver on %s:%d", ", ".join(reached), *own)
    app = receiver(netsuite_source, business_central_source, liveness)
    return AppServer("erp-inbound", app, *own, liveness, migrated, beside=loops)


def _netsuite(
    context: Context, erp: ErpSettings, pool: ConnectionPool[Any], timeout_s: float
) -> netsuite.NetSuiteInbound:
    config = netsuite_config(erp, timeout_s)
    adapter = NetSuiteAdapter(config)
    context.resources.callback(adapter.close)
    return netsuite.NetSuiteInbound(
        adapter,
        pool,
        InboundSink(context.catalog, context.serde, netsuite.SOURCE),
        netsuite.NetSuiteInboundConfig(
            account_id=config.account_id,
            subsidiaries=config.subsidiaries,
            timezone=erp.netsuite_timezone,
            overlap_s=erp.netsuite_overlap_s,
            poll_interval_s=erp.netsuite_poll_interval_s,
            after_submit_secret=erp.netsuite_after_submit_secret,
            locations=config.locations,
            regions=erp.erp_regions,
        ),
    )


def _business_central(
    context: Context, erp: ErpSettings, pool: ConnectionPool[Any], timeout_s: float
) -> business_central.BusinessCentralInbound:
    erp.required("business_central_notification_url", "business_central_client_state")
    assert erp.business_central_notification_url
    assert erp.business_central_client_state
    config = business_central_config(erp, timeout_s)
    adapter = BusinessCentralAdapter(config)  # which finds the companies' ids by their names
    context.resources.callback(adapter.close)
    return business_central.BusinessCentralInbound(
        business_central.BusinessCentralHttpApi(adapter.wire, config),
        pool,
        InboundSink(context.catalog, context.serde, business_central.SYSTEM),
        business_central.BusinessCentralInboundConfig(
            companies=adapter.company_ids(),
            notification_url=erp.business_central_notification_url,
            client_state=erp.business_central_client_state,
            renew_before_s=erp.business_central_renew_before_s,
            reconcile_interval_s=erp.business_central_reconcile_interval_s,
        ),
    )


def receiver(
    netsuite_source: netsuite.NetSuiteInbound | None,
    business_central_source: business_central.BusinessCentralInbound | None,
    liveness: Liveness,
) -> FastAPI:
    """The receiver of what the ERPs post: Business Central's handshake and notifications,
    and NetSuite's afterSubmit notices. An ERP not in use has no route. Ready while it
    serves."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        liveness.ready = True
        try:
            yield
        finally:
            liveness.ready = False

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    if business_central_source is not None:
        bc = business_central_source

        @app.post(NOTIFICATIONS)
        async def notifications(request: Request) -> Response:
            token = request.query_params.get("validationToken")
            if token is not None:
                return PlainTextResponse(bc.validation(token))
            return Response(status_code=await _off_loop(bc.notified, await request.body()))

    if netsuite_source is not None:
        ns = netsuite_source

        @app.post(AFTER_SUBMIT)
        async def after_submit(request: Request) -> Response:
            body = await request.body()
            signature = request.headers.get(netsuite.SIGNATURE_HEADER)
            status, answer = await _off_loop(_after_submit, ns, body, signature)
            return JSONResponse(answer, status_code=status)

    return app


def _after_submit(
    source: netsuite.NetSuiteInbound, body: bytes, signature: str | None
) -> tuple[int, dict[str, object]]:
    """An afterSubmit notice's answer: what it wrote, or why not (never the body)."""
    try:
        return 200, {"written": source.after_submit(body, signature)}
    except netsuite.SignatureInvalid:
        return 401, {"error": "signature"}
    except netsuite.NoticeInvalid as error:
        return 400, {"error": "notice", "field": error.field}
    except TransientError:
        return 503, {"error": "unavailable"}
    except RevsyncError as error:
        log.warning("netsuite afterSubmit notice not taken: %s", described(error))
        return 502, {"error": "netsuite"}


async def _off_loop(work: Callable[..., T], *arguments: object) -> T:
    """Blocking work (database, ERP calls) on a worker thread, not the server's loop."""
    return await run_in_threadpool(work, *arguments)


DEPLOYABLE = ApiDeployable(
    name="erp-inbound",
    service="erp_inbound",
    outputs=OUTPUTS,
    build=build,
    tables=(*TABLES, *netsuite.TABLES, *business_central.TABLES),
)
