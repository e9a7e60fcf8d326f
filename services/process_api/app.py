"""The process API's HTTP surface: four endpoints the CRM's Apex callouts and CPQ call while a
person waits, described as OpenAPI 3.1 at ``/v1/openapi.json``.

Every call carries an access token of the company's identity provider, verified against its
published keys, with the endpoint's scope; each client has a rate limit (429 with
``Retry-After``). ``X-Correlation-Id`` and ``traceparent`` are taken and answered (a new one
where none came); ``/healthz``, ``/readyz`` and ``/metrics`` sit beside.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import OpenIdConnect, SecurityScopes
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.responses import Response

from process_api import logic
from process_api.models import (
    AvailabilityAnswer,
    AvailabilityRequest,
    CreditAnswer,
    CreditRequest,
    OrderSubmission,
    PricingAnswer,
    PricingRequest,
    Problem,
    SubmissionAnswer,
)
from process_api.reads import ErpReads
from process_api.submissions import KeyReused, OrderSubmittedBefore, Submissions
from revsync.connectors.guard import Unavailable
from revsync.errors import RevsyncError, described, refused_fields
from revsync.oidc import OidcProvider, ProviderUnreachable, SignInRefused
from revsync.rules.book import RuleBook
from revsync.runtime.observability import LATENCY_BUCKETS, Liveness, event_context

log = logging.getLogger(__name__)
REALM = 'Bearer realm="revsync-process-api"'

REQUESTS = Counter(
    "revsync_process_api_requests_total", "Requests answered, by endpoint.", ["endpoint", "status"]
)
LATENCY = Histogram(
    "revsync_process_api_request_seconds",
    "Time to answer, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)


@dataclass
class ProcessApiConfig:
    reads: ErpReads
    rules: RuleBook
    provider: OidcProvider
    audience: str
    """What the callers' access tokens must be for."""
    limits: logic.RateLimits
    submissions: Submissions
    prepare: Callable[[], None]
    """At start-up, once the submissions' pool is open: the tables made, the contracts looked
    up."""
    liveness: Liveness


@dataclass(frozen=True)
class Trace:
    correlation_id: str
    traceparent: str


class Refused(Exception):
    """An answer other than the endpoint's own: status, the problem, and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = Problem(code=code, message=message, fields=fields or [])
        self.headers = headers or {}


def _described(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The refusals an endpoint may answer, for its OpenAPI operation."""
    why = {
        401: "No access token, or one the identity provider did not issue for this API.",
        403: "The token lacks the endpoint's scope.",
        409: "The order was submitted before, with other content.",
        422: "A malformed request (each field named), or a key reused with another body.",
        429: "Over the client's rate limit; Retry-After says when to call again.",
        502: "The ERP answered what the API does not understand.",
        503: "The ERP (or the database) cannot be asked and nothing is cached; see Retry-After.",
    }
    header = {
        401: ("WWW-Authenticate", "The Bearer challenge (RFC 6750)."),
        403: ("WWW-Authenticate", "The Bearer challenge, naming the scope needed."),
        429: ("Retry-After", "Seconds until the client may call again."),
        503: ("Retry-After", "Seconds until the API may answer again."),
    }
    return {
        status: {
            "model": Problem,
            "description": why[status],
            "headers": {
                header[status][0]: {
                    "description": header[status][1],
                    "schema": {"type": "string"},
                }
            }
            if status in header
            else {},
        }
        for status in statuses
    }


TRACE_HEADERS = [
    {
        "name": "X-Correlation-Id",
        "in": "header",
        "required": False,
        "description": "Carried into the logs and the events; answered back (a new one if none).",
        "schema": {"type": "string", "maxLength": 128},
    },
    {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "W3C Trace Context; answered with this service's span as the parent.",
        "schema": {"type": "string"},
    },
]


def create_app(config: ProcessApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        config.submissions.pool.open(wait=False)
        config.prepare()
        config.liveness.ready = True
        try:
            yield
        finally:
            config.liveness.ready = False

    app = FastAPI(
        lifespan=lifespan,
        title="revsync process API",
        version="1",
        description=(
            "Pricing, credit and availability answered with the rules order_sync applies at "
            "order time, and order submission for channels without change data capture. "
            "Scopes: " + "; ".join(f"{scope} ({what})" for scope, what in logic.SCOPES.items())
        ),
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    oidc = OpenIdConnect(
        openIdConnectUrl=config.provider.issuer.rstrip("/") + "/.well-known/openid-configuration",
        scheme_name="identityProvider",
        description="An access token (client credentials) for this API's audience.",
        auto_error=False,
    )

    authorized_by = Security(oidc)

    @app.middleware("http")
    async def traced(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        trace = Trace(
            logic.correlation_id(request.headers.get("x-correlation-id"), str(uuid.uuid4())),
            logic.traceparent(
                request.headers.get("traceparent"), secrets.token_hex(16), secrets.token_hex(8)
            ),
        )
        request.state.trace = trace
        with event_context(trace.correlation_id, None):
            response = await call_next(request)
        response.headers["X-Correlation-Id"] = trace.correlation_id
        response.headers["traceparent"] = trace.traceparent
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        endpoint = getattr(request.scope.get("route"), "path", "other")
        REQUESTS.labels(endpoint, str(response.status_code)).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(Refused)
    def _refused(_: Request, error: Refused) -> Response:
        return JSONResponse(
            error.problem.model_dump(), status_code=error.status, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    def _malformed(_: Request, error: RequestValidationError) -> Response:
        fields = _fields(error.errors())
        problem = Problem(code="invalid_request", message="the request is malformed", fields=fields)
        return JSONResponse(problem.model_dump(), status_code=422)

    @app.exception_handler(Unavailable)
    def _unavailable(_: Request, error: Unavailable) -> Response:
        retry = str(max(math.ceil(error.retry_after or 1), 1))
        problem = Problem(code="erp_unavailable", message=str(error))
        return JSONResponse(problem.model_dump(), status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(RevsyncError)
    def _misunderstood(_: Request, error: RevsyncError) -> Response:
        # The ERP answered what its adapter does not understand: looked at, not retried.
        problem = Problem(code="bad_gateway", message=described(error))
        return JSONResponse(problem.model_dump(), status_code=502)

    def caller(scopes: SecurityScopes, authorization: str | None = authorized_by) -> logic.Caller:
        """The verified caller, with the endpoint's scope, within its rate limit."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(
                401,
                "unauthenticated",
                "send Authorization: Bearer <token>",
                {"WWW-Authenticate": REALM},
            )
        try:
            claims = config.provider.verified(token.strip(), config.audience)
        except ProviderUnreachable as error:
            raise Refused(503, "provider_unreachable", str(error), {"Retry-After": "5"}) from None
        except SignInRefused as error:
            challenge = f'{REALM}, error="invalid_token"'
            raise Refused(
                401, "invalid_token", str(error), {"WWW-Authenticate": challenge}
            ) from None
        who = logic.caller(claims)
        missing = [scope for scope in scopes.scopes if scope not in who.scopes]
        if missing:
            challenge = f'{REALM}, error="insufficient_scope", scope="{" ".join(missing)}"'
            raise Refused(
                403,
                "insufficient_scope",
                f"the token lacks scope {' '.join(missing)}",
                {"WWW-Authenticate": challenge},
            )
        wait = config.limits.take(who.client_id, time.monotonic())
        if wait:
            raise Refused(
                429,
                "rate_limited",
                f"over {config.limits.rate_per_s:g} requests a second for client {who.client_id}",
                {"Retry-After": str(max(math.ceil(wait), 1))},
            )
        return who

    def endpoint(
        path: str, tag: str, *refusals: int, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A POST operation, its refusals and the trace headers described."""
        return app.post(
            path,
            tags=[tag],
            responses=_described(*refusals),
            openapi_extra={"parameters": TRACE_HEADERS},
            **options,
        )

    may_price = Security(caller, scopes=["pricing:read"])
    may_check_credit = Security(caller, scopes=["credit:read"])
    may_check_stock = Security(caller, scopes=["availability:read"])
    may_submit = Security(caller, scopes=["orders:write"])

    @endpoint("/v1/pricing/validate", "pricing", 401, 403, 422, 429, 502, 503)
    def validate_pricing(
        quote: PricingRequest,
        who: logic.Caller = may_price,
    ) -> PricingAnswer:
        """Each line as order-time validation will judge it: accepted, or the rule it breaks
        with the ERP's list price and the tolerance."""
        price_book, book_freshness = config.reads.price_book(quote.price_book_id)
        products, products_freshness = config.reads.products(line.sku for line in quote.lines)
        rules = config.rules.for_order(quote.legal_entity, quote.region)
        freshness = book_freshness | products_freshness
        return logic.price_quote(quote, price_book, products, rules, freshness)

    @endpoint("/v1/credit/check", "credit", 401, 403, 422, 429, 502, 503)
    def check_credit(
        request: CreditRequest,
        who: logic.Caller = may_check_credit,
    ) -> CreditAnswer:
        """Approved, or held with the reason order-time validation (or the ERP's credit
        limit) would give; with the credit available. ``customer_id`` wins over
        ``account_id`` when both are given."""
        if request.customer_id is not None:
            customer, freshness = config.reads.customer(request.customer_id)
        else:
            assert request.account_id is not None
            customer, freshness = config.reads.customer_by_account(request.account_id)
        position = None
        if customer is not None:
            position, credit_freshness = config.reads.credit(customer.id)
            freshness |= credit_freshness
        return logic.judge_credit(request, customer, position, freshness)

    @endpoint("/v1/availability", "availability", 401, 403, 422, 429, 502, 503)
    def check_availability(
        request: AvailabilityRequest,
        who: logic.Caller = may_check_stock,
    ) -> AvailabilityAnswer:
        """Per product: whether the quantity is available to promise in the region now, and
        when more arrives where it is not."""
        levels, freshness = config.reads.stock((line.sku for line in request.lines), request.region)
        return logic.availability(request, levels, freshness)

    @endpoint(
        "/v1/orders",
        "orders",
        401,
        403,
        409,
        422,
        429,
        503,
        status_code=202,
        response_model=SubmissionAnswer,
    )
    def submit_order(
        submission: OrderSubmission,
        request: Request,
        idempotency_key: Annotated[
            str,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=255,
                pattern=r"^[\x21-\x7e]+$",
                description="The client's key for this submission: a repeat with the same "
                "key and body gets the first answer.",
            ),
        ],
        who: logic.Caller = may_submit,
    ) -> Response:
        """An order from a web shop or partner portal, accepted into order_sync's pipeline
        (as ``order.created``, through revsync's outbox): validated and placed in the ERP as
        a CRM order is, its outcome on ``order.accepted`` or ``order.rejected``."""
        trace: Trace = request.state.trace
        try:
            order = logic.submitted_order(submission, trace.correlation_id, datetime.now(UTC))
        except ValidationError as error:
            raise Refused(
                422, "invalid_order", "the order does not add up", fields=_fields(error.errors())
            ) from None
        answer = logic.submission_answer(order).model_dump(mode="json")
        try:
            submitted = config.submissions.submit(
                who.client_id,
                idempotency_key,
                logic.fingerprint(submission),
                order,
                answer,
                trace.traceparent,
            )
        except KeyReused as error:
            raise Refused(422, "idempotency_key_reused", str(error)) from None
        except OrderSubmittedBefore as error:
            raise Refused(409, "order_submitted_before", str(error)) from None
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            log.warning("order submission not recorded: %s", type(error).__name__)
            raise Refused(503, "database_unavailable", "try again", {"Retry-After": "1"}) from None
        headers = {"Idempotent-Replayed": "true"} if submitted.replayed else {}
        return JSONResponse(submitted.answer, status_code=202, headers=headers)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        alive = config.liveness.alive()
        return PlainTextResponse("ok" if alive else "failing", status_code=200 if alive else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        ready = config.liveness.serving()
        return PlainTextResponse("ready" if ready else "not ready", 200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _fields(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Each refused field (a body's without the leading ``body``) and why, never the value
    it was given."""
    located = [
        {**detail, "loc": detail["loc"][1:] if detail["loc"][:1] == ("body",) else detail["loc"]}
        for detail in errors
    ]
    return [{"field": field, "problem": why} for field, why in refused_fields(located)]
