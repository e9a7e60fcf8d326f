"""The exception console: server-rendered pages and a JSON API over the same reads and the
same audited actions as the CLI.

Pages: overview (business telemetry as charts), exceptions (the worklist, its filters, counts
and actions, a bulk action shown before it is done), one order's journey, one dead letter
(masked as ``dlt show`` masks), consumers. API: ``/api/v1/…``, described at
``/api/openapi.json``. Health at ``/healthz`` and ``/readyz``; metrics at ``/metrics``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import psycopg
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import Response

from revsync.console import charts, reads
from revsync.console.auth import (
    LocalAccounts,
    OidcClient,
    Principal,
    Role,
    csrf_token,
    same_token,
)
from revsync.contracts.catalog import Catalog
from revsync.errors import RevsyncError
from revsync.migrations import ensure
from revsync.oidc import SignInRefused
from revsync.ops import dead_letters as dl
from revsync.ops import exceptions as ex
from revsync.ops import masking
from revsync.ops import storage as ops_tables
from revsync.ops.operations import Operations
from revsync.runtime import storage as runtime_tables

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PAGE_SIZE = 50

REQUESTS = Histogram(
    "revsync_console_request_seconds",
    "Console requests by route and status.",
    ["route", "method", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5),
)
ACTIONS = Counter(
    "revsync_console_actions_total", "Actions taken in the console.", ["action", "via"]
)
SIGN_INS = Counter("revsync_console_sign_ins_total", "Sign-in attempts.", ["via", "outcome"])


@dataclass
class ConsoleConfig:
    """What the console runs with."""

    catalog: Catalog
    kafka_config: dict[str, Any]
    dsn: str
    operations: Callable[[str], Operations]
    """The operators' tooling acting for a named person (audited as them)."""
    session_secret: str
    public_url: str
    accounts: LocalAccounts | None
    oidc: OidcClient | None
    stage_ages: dict[str, timedelta]
    mask_fields: frozenset[str]
    max_replays: int = 3
    session_hours: float = 8.0
    pool_size: int = 8


class ActionRequest(BaseModel):
    action: str = Field(description="retry, discard, resolve, assign or tag")
    refs: list[str] = Field(min_length=1, max_length=1000)
    value: str = Field(default="", max_length=500, description="note, assignee or tags")
    dry_run: bool = Field(default=False, description="only say what it would do")


class NotSignedIn(Exception):
    """A page asked for without a session: to the sign-in page."""


def create_app(config: ConsoleConfig) -> FastAPI:
    secure = config.public_url.startswith("https://")
    pool = ConnectionPool(
        config.dsn,
        min_size=1,
        max_size=config.pool_size,
        kwargs={"autocommit": True},
        open=False,
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["since"] = reads.since

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        with pool.connection() as connection:
            # What it reads must exist (or, in development, is made): the journey and the
            # operators' tables.
            ensure(connection, (*runtime_tables.TABLES, *ops_tables.TABLES))
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        lifespan=lifespan,
        title="revsync console API",
        version="1",
        description="The exception worklist, order journeys and consumers; actions audited.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.pool = pool

    app.add_middleware(
        SessionMiddleware,
        secret_key=config.session_secret,
        session_cookie="revsync_console",
        max_age=int(config.session_hours * 3600),
        same_site="lax",
        https_only=secure,
    )

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        if secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        route = request.scope.get("route")
        REQUESTS.labels(
            getattr(route, "path", "other"), request.method, str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @contextmanager
    def db() -> Iterator[psycopg.Connection[Any]]:
        with pool.connection() as connection:
            yield connection

    # --- who is asking ---------------------------------------------------------------------

    def principal(request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            if config.oidc is None:
                raise HTTPException(401, "bearer tokens need an identity provider configured")
            try:
                return config.oidc.bearer(header[7:].strip())
            except SignInRefused as error:
                raise HTTPException(401, str(error)) from None
        found = request.session.get("who")
        if not isinstance(found, dict):
            return None
        if found.get("until", 0) < time.time():
            request.session.clear()
            return None
        return Principal(str(found["name"]), Role(int(found["role"])), str(found["via"]))

    def requires(role: Role, *, page: bool) -> Callable[[Request], Principal]:
        def check(request: Request) -> Principal:
            who = principal(request)
            if who is None:
                if page:
                    raise NotSignedIn
                raise HTTPException(401, "sign in, or send a bearer token")
            if not who.may(role):
                raise HTTPException(403, f"needs the {role.label} role; you are {who.role.label}")
            if request.method == "POST" and who.via != "bearer":
                _check_origin(request, config.public_url)
            return who

        return check

    viewer_page = Depends(requires(Role.VIEWER, page=True))
    operator_page = Depends(requires(Role.OPERATOR, page=True))
    admin_page = Depends(requires(Role.ADMIN, page=True))
    viewer_api = Depends(requires(Role.VIEWER, page=False))
    operator_api = Depends(requires(Role.OPERATOR, page=False))

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = csrf_token()
            request.session["csrf"] = token
        return token

    def check_csrf(request: Request, given: str | None) -> None:
        if not same_token(given, request.session.get("csrf")):
            raise HTTPException(403, "the form is stale or not ours (CSRF token); reload it")

    def render(
        request: Request, name: str, who: Principal | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        flash = request.session.pop("flash", None)
        return templates.TemplateResponse(
            request,
            name,
            {
                "who": who,
                "csrf": csrf(request),
                "flash": flash,
                "Role": Role,
                "oidc": config.oidc is not None,
                "local": config.accounts is not None,
                **context,
            },
            status_code=status,
        )

    @app.exception_handler(NotSignedIn)
    def _to_sign_in(request: Request, _: NotSignedIn) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(HTTPException)
    def _refused(request: Request, error: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path in ("/readyz",):
            return JSONResponse({"detail": error.detail}, status_code=error.status_code)
        return render(
            request,
            "error.html",
            principal_or_none(request),
            status=error.status_code,
            message=error.detail,
        )

    def principal_or_none(request: Request) -> Principal | None:
        try:
            return principal(request)
        except HTTPException:
            return None

    # --- sign-in -------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", None, next=_local_path(next), error=None)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(
        request: Request,
        name: Annotated[str, Form(max_length=200)],
        password: Annotated[str, Form(max_length=1000)],
        token: Annotated[str, Form(alias="csrf")],
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        check_csrf(request, token)
        _check_origin(request, config.public_url)
        if config.accounts is None:
            raise HTTPException(404, "local accounts are off; sign in with the identity provider")
        try:
            who = config.accounts.sign_in(name, password)
        except SignInRefused as error:
            SIGN_INS.labels("local", "refused").inc()
            return render(
                request, "login.html", None, status=401, next=_local_path(next), error=str(error)
            )
        SIGN_INS.labels("local", "ok").inc()
        return _signed_in(request, who, next)

    @app.get("/login/oidc", include_in_schema=False)
    def login_oidc(request: Request, next: str = "/") -> Response:
        if config.oidc is None:
            raise HTTPException(404, "no identity provider is configured")
        try:
            started = config.oidc.authorization()
        except SignInRefused as error:
            raise HTTPException(502, str(error)) from None
        request.session["oidc"] = {
            "state": started.state,
            "nonce": started.nonce,
            "verifier": started.verifier,
            "next": _local_path(next),
        }
        return RedirectResponse(started.url, status_code=303)

    @app.get("/auth/callback", include_in_schema=False)
    def oidc_callback(
        request: Request, code: str = "", state: str = "", error: str = ""
    ) -> Response:
        pending = request.session.pop("oidc", None)
        if config.oidc is None or not isinstance(pending, dict):
            raise HTTPException(400, "no sign-in is under way; start again")
        if error or not same_token(state, pending.get("state")):
            SIGN_INS.labels("oidc", "refused").inc()
            raise HTTPException(400, f"sign-in not completed ({error or 'state differs'})")
        try:
            who = config.oidc.finish(code, pending["nonce"], pending["verifier"])
        except SignInRefused as refused:
            SIGN_INS.labels("oidc", "refused").inc()
            raise HTTPException(403, str(refused)) from None
        SIGN_INS.labels("oidc", "ok").inc()
        return _signed_in(request, who, str(pending.get("next", "/")))

    def _signed_in(request: Request, who: Principal, next: str) -> Response:
        request.session.clear()  # a new session for the person: nothing of before carries over
        request.session["who"] = {
            "name": who.name,
            "role": int(who.role),
            "via": who.via,
            "until": time.time() + config.session_hours * 3600,
        }
        request.session["csrf"] = csrf_token()
        return RedirectResponse(_local_path(next), status_code=303)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, token: Annotated[str, Form(alias="csrf")]) -> Response:
        check_csrf(request, token)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- pages ---------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(
        request: Request, who: Principal = viewer_page, days: int = Query(7, ge=1, le=90)
    ) -> HTMLResponse:
        with db() as connection:
            seen = reads.overview(connection, days)
        days_shown = [str(row["day"]) for row in seen.daily]
        reasons = sorted({str(row["reason"]) for row in seen.exceptions_daily})
        per_reason = {
            reason: [
                float(
                    sum(
                        int(row["n"])
                        for row in seen.exceptions_daily
                        if str(row["day"]) == day and row["reason"] == reason
                    )
                )
                for day in days_shown
            ]
            for reason in reasons
        }
        figures = {
            "orders": charts.columns(
                "Orders per day",
                days_shown,
                {
                    "accepted": [float(row["accepted"]) for row in seen.daily],
                    "rejected": [float(row["rejected"]) for row in seen.daily],
                },
            ),
            "exceptions": charts.columns("Exceptions opened per day", days_shown, per_reason),
            **{
                f"aging_{stage}": charts.bars(
                    f"Orders waiting to be {stage}, by age",
                    {k: float(v) for k, v in buckets.items()},
                )
                for stage, buckets in seen.aging.items()
            },
            **{
                f"by_{facet.replace(' ', '_')}": charts.bars(
                    f"Exceptions by {facet}", {k: float(v) for k, v in values.items()}
                )
                for facet, values in seen.exceptions_by.items()
            },
        }
        return render(request, "overview.html", who, seen=seen, figures=figures, days=days)

    @app.get("/exceptions", response_class=HTMLResponse, include_in_schema=False)
    def exceptions_page(
        request: Request, who: Principal = viewer_page, page: int = Query(1, ge=1, le=10_000)
    ) -> HTMLResponse:
        filters = _filters(request)
        with db() as connection:
            found = ex.worklist(
                connection,
                filters,
                config.stage_ages,
                limit=PAGE_SIZE,
                offset=(page - 1) * PAGE_SIZE,
            )
        pages = max((found.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
        query = request.url.query
        base = "&".join(p for p in query.split("&") if p and not p.startswith("page="))
        return render(
            request,
            "exceptions.html",
            who,
            found=found,
            filters=filters,
            page=page,
            pages=pages,
            base=base,
            kinds=ex.KINDS,
            statuses=(*ex.STATUSES, "all"),
            back=f"/exceptions?{query}" if query else "/exceptions",
        )

    @app.post("/exceptions/preview", response_class=HTMLResponse, include_in_schema=False)
    def exceptions_preview(
        request: Request,
        action: Annotated[str, Form()],
        token: Annotated[str, Form(alias="csrf")],
        refs: Annotated[list[str] | None, Form()] = None,
        value: Annotated[str, Form(max_length=500)] = "",
        back: Annotated[str, Form()] = "/exceptions",
        who: Principal = operator_page,
    ) -> HTMLResponse:
        check_csrf(request, token)
        if not refs:
            raise HTTPException(400, "choose at least one exception first")
        effects = _desk(who).plan(action, refs, value)
        return render(
            request,
            "preview.html",
            who,
            action=action,
            refs=refs,
            value=value,
            effects=effects,
            back=_local_path(back),
        )

    @app.post("/exceptions/act", include_in_schema=False)
    def exceptions_act(
        request: Request,
        action: Annotated[str, Form()],
        token: Annotated[str, Form(alias="csrf")],
        refs: Annotated[list[str] | None, Form()] = None,
        value: Annotated[str, Form(max_length=500)] = "",
        back: Annotated[str, Form()] = "/exceptions",
        who: Principal = operator_page,
    ) -> Response:
        check_csrf(request, token)
        effects = _act(who, action, refs or [], value)
        done = sum(e.change is not None for e in effects)
        request.session["flash"] = f"{action}: done for {done} of {len(effects)}."
        return RedirectResponse(_local_path(back), status_code=303)

    @app.get("/orders", include_in_schema=False)
    def order_search(q: str = "", who: Principal = viewer_page) -> Response:
        with db() as connection:
            found = reads.find_order(connection, q) if q.strip() else None
        if found is None:
            raise HTTPException(404, "no order by that CRM id or number, ERP number or correlation")
        return RedirectResponse(f"/orders/{quote(found, safe='')}", status_code=303)

    @app.get("/orders/{ref}", response_class=HTMLResponse, include_in_schema=False)
    def order_page(request: Request, ref: str, who: Principal = viewer_page) -> HTMLResponse:
        view = _order(ref)
        return render(request, "order.html", who, view=view, limit=reads.JOURNEY_LIMIT)

    @app.get("/dead-letters/{ref}", response_class=HTMLResponse, include_in_schema=False)
    def dead_letter_page(
        request: Request, ref: str, who: Principal = operator_page
    ) -> HTMLResponse:
        shown = _dead_letter(who, ref)
        return render(request, "dead_letter.html", who, **shown)

    @app.get("/consumers", response_class=HTMLResponse, include_in_schema=False)
    def consumers_page(request: Request, who: Principal = viewer_page) -> HTMLResponse:
        with db() as connection:
            views = reads.consumers(connection, config.catalog, config.kafka_config)
        return render(request, "consumers.html", who, consumers=views)

    @app.post("/consumers/{name}/resume", include_in_schema=False)
    def consumer_resume(
        request: Request,
        name: str,
        token: Annotated[str, Form(alias="csrf")],
        who: Principal = admin_page,
    ) -> Response:
        check_csrf(request, token)
        try:
            config.operations(who.name).resume_consumer(name)
        except RevsyncError as error:
            raise HTTPException(409, str(error)) from None
        ACTIONS.labels("resume", who.via).inc()
        request.session["flash"] = f"{name}: circuit breaker closed."
        return RedirectResponse("/consumers", status_code=303)

    # --- API -------------------------------------------------------------------------------

    @app.get("/api/v1/me", tags=["session"])
    def api_me(who: Principal = viewer_api) -> dict[str, str]:
        return {"name": who.name, "role": who.role.label, "via": who.via}

    @app.get("/api/v1/exceptions", tags=["exceptions"])
    def api_exceptions(
        request: Request,
        who: Principal = viewer_api,
        limit: int = Query(PAGE_SIZE, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """The worklist; filters: status (open, resolved, discarded, all), kind, reason,
        consumer, region, legal_entity, product_line (each repeatable), assignee, tag, order."""
        with db() as connection:
            found = ex.worklist(
                connection, _filters(request), config.stage_ages, limit=limit, offset=offset
            )
        return {
            "total": found.total,
            "counts": found.counts,
            "items": [item.as_json() for item in found.items],
        }

    @app.get("/api/v1/exceptions/{ref}", tags=["exceptions"])
    def api_exception(ref: str, who: Principal = viewer_api) -> dict[str, Any]:
        with db() as connection:
            found = ex.items(connection, [ref], config.stage_ages)
        if not found:
            raise HTTPException(404, f"no exception {ref}")
        return found[0].as_json()

    @app.post("/api/v1/exceptions/actions", tags=["exceptions"])
    def api_act(
        request: Request, body: ActionRequest, who: Principal = operator_api
    ) -> dict[str, Any]:
        """Act on exceptions (or, with dry_run, say what would be done); audited."""
        if who.via != "bearer":
            check_csrf(request, request.headers.get("x-csrf-token"))
        if body.dry_run:
            effects = _desk(who).plan(body.action, body.refs, body.value)
        else:
            effects = _act(who, body.action, body.refs, body.value)
        return {
            "action": body.action,
            "dry_run": body.dry_run,
            "effects": [{"ref": e.ref, "change": e.change, "why_not": e.why_not} for e in effects],
        }

    @app.get("/api/v1/orders/{ref}", tags=["orders"])
    def api_order(ref: str, who: Principal = viewer_api) -> dict[str, Any]:
        """One order (by CRM id or number, ERP number or correlation id): its identities and
        stages, every journey entry in order, its exceptions."""
        view = _order(ref)
        return {"order": view.order, "journey": view.journey, "exceptions": view.exceptions}

    @app.get("/api/v1/overview", tags=["overview"])
    def api_overview(
        who: Principal = viewer_api, days: int = Query(7, ge=1, le=90)
    ) -> dict[str, Any]:
        with db() as connection:
            return reads.overview(connection, days).__dict__

    @app.get("/api/v1/consumers", tags=["consumers"])
    def api_consumers(who: Principal = viewer_api) -> list[dict[str, Any]]:
        with db() as connection:
            views = reads.consumers(connection, config.catalog, config.kafka_config)
        return [view.__dict__ for view in views]

    # --- health and metrics ------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> PlainTextResponse:
        try:
            with pool.connection(timeout=2) as connection:
                connection.execute("SELECT 1")
        except Exception as error:
            raise HTTPException(503, f"database unreachable ({type(error).__name__})") from None
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # --- helpers ----------------------------------------------------------------------------

    def _desk(who: Principal) -> ex.ExceptionDesk:
        return config.operations(who.name).exception_desk(config.stage_ages, config.max_replays)

    def _act(who: Principal, action: str, refs: list[str], value: str) -> list[ex.Effect]:
        try:
            effects = _desk(who).act(action, refs, value)
        except RevsyncError as error:
            raise HTTPException(409, str(error)) from None
        ACTIONS.labels(action, who.via).inc()
        return effects

    def _order(ref: str) -> reads.OrderView:
        with db() as connection:
            crm_order_id = reads.find_order(connection, ref)
            view = reads.order_view(connection, crm_order_id) if crm_order_id else None
        if view is None:
            raise HTTPException(404, f"no order {ref}")
        return view

    def _dead_letter(who: Principal, ref: str) -> dict[str, Any]:
        operations = config.operations(who.name)
        try:
            letter = operations.show_letter(ref)
        except RevsyncError as error:
            raise HTTPException(404, str(error)) from None
        kind, payload = dl.payload(letter, operations.registry)
        shown, headers = masking.masked_letter(letter, payload, config.mask_fields)
        return {"letter": letter, "kind": kind, "payload": shown, "headers": headers}

    return app


def _filters(request: Request) -> ex.Filters:
    q = request.query_params

    def many(name: str) -> frozenset[str]:
        return frozenset(v for v in q.getlist(name) if v)

    return ex.Filters(
        status=q.get("status") or "open",
        kinds=many("kind"),
        reasons=many("reason"),
        consumers=many("consumer"),
        regions=many("region"),
        legal_entities=many("legal_entity"),
        product_lines=many("product_line"),
        assignee=q.get("assignee") or None,
        tag=q.get("tag") or None,
        order=q.get("order") or None,
    )


def _local_path(target: str) -> str:
    """Only a path on this site: a sign-in never sends anyone elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _check_origin(request: Request, public_url: str) -> None:
    """A form post from another site is refused, whatever cookies it carries."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    wanted = urlsplit(public_url)
    given = urlsplit(origin)
    if (given.scheme, given.netloc) != (wanted.scheme, wanted.netloc):
        raise HTTPException(403, "cross-site request refused")


def new_session_secret() -> str:
    return secrets.token_urlsafe(48)
