"""The simulators' HTTP server: JSON routes, fault knobs, and a control API.

Routes under ``/__sandbox/`` are the control API (faults, seeding, inspection) and never
suffer faults; every other route does, as set with ``PUT /__sandbox/faults``.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx

CONTROL_PREFIX = "/__sandbox/"


@dataclass
class Faults:
    """What goes wrong, and how often. Rates are probabilities per API request."""

    error_rate: float = 0.0
    """Answer 503 without doing the work."""
    error_status: int = 503
    echo_rate: float = 0.0
    """Refuse a request that carries a body with ``echo_status`` and an error body that quotes
    the request's body back, without doing the work, as APIs do that repeat what they refused
    (and with it the customer's data). The body is the ERP's ``{"code", "message"}``; to the
    CRM it is an answer not in Salesforce's shape, as a gateway in front of it might give."""
    echo_status: int = 400
    throttle_rate: float = 0.0
    """Answer ``throttle_status`` with ``Retry-After: retry_after_s`` without doing the work."""
    throttle_status: int = 429
    """429, or 403 as Salesforce answers when the org's API request limit is spent."""
    retry_after_s: int = 1
    latency_ms: int = 0
    """Added before every API answer."""
    timeout_rate: float = 0.0
    """Do the work, then hold the answer for ``hang_s``: the caller times out not knowing
    whether the call happened, the case idempotency keys exist for."""
    hang_s: float = 15.0
    drip_ms: int = 0
    """Write every answer's body ``drip_bytes`` at a time, ``drip_ms`` apart: each read of
    the caller's gets something soon, yet the whole answer comes late."""
    drip_bytes: int = 64
    pad_bytes: int = 0
    """Append this many spaces to every JSON answer: still the same JSON, only larger."""
    chunked: bool = False
    """Send answers with ``Transfer-Encoding: chunked`` and no ``Content-Length``, so only the
    bytes themselves tell the caller how large an answer is."""

    def delivery(self, delay_s: float) -> Delivery:
        """How an answer goes out under these faults, held back ``delay_s`` first."""
        return Delivery(
            delay_s, self.drip_ms / 1000, max(self.drip_bytes, 1), self.pad_bytes, self.chunked
        )

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise KeyError(name)
            setattr(self, name, type(getattr(self, name))(value))


@dataclass(frozen=True)
class Delivery:
    """How an answer is written to the wire; the default is at once, whole, as it is."""

    delay_s: float = 0.0
    """Held back this long before the status line."""
    drip_s: float = 0.0
    """The pause before each ``drip_bytes`` of the body, when above zero."""
    drip_bytes: int = 64
    pad_bytes: int = 0
    chunked: bool = False


PROMPTLY = Delivery()


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    """Named groups of the matched route."""
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any
    """Decoded JSON, or a dict of the first value of each field of a form-encoded body."""


@dataclass
class Response:
    status: int = 200
    body: Any = None
    """Sent as JSON; ``bytes`` are sent as they are (an HTML page, say), typed by the
    ``Content-Type`` among ``headers``."""
    headers: dict[str, str] = field(default_factory=dict)


class HttpFailure(Exception):
    """Raised by a route to answer with an error body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.response = Response(status, body, headers or {})


Route = Callable[[Request], Response]
JsonLoads = Callable[[bytes], Any]
JsonDumps = Callable[[Any], bytes]


def _default_dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


class JsonServer:
    """A threaded HTTP/1.1 server (keep-alive) dispatching to regex routes."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        *,
        loads: JsonLoads = json.loads,
        dumps: JsonDumps = _default_dumps,
    ) -> None:
        """``loads`` and ``dumps`` replace the JSON codec, e.g. to keep numbers exact."""
        self.faults = Faults()
        self.loads = loads
        self.dumps = dumps
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not secrets
        self._random_lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern[str], Route, bool]] = []
        self.counters: dict[str, int] = {}
        self._counter_lock = threading.Lock()
        self.route("GET", CONTROL_PREFIX + "faults", lambda _: Response(body=asdict(self.faults)))
        self.route("PUT", CONTROL_PREFIX + "faults", self._set_faults)
        self.route("GET", CONTROL_PREFIX + "counters", lambda _: Response(body=self.counters))
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, pattern: str, handler: Route, *, faults: bool = True) -> None:
        """Serve ``method`` on paths matching ``pattern``; ``faults=False`` spares a route
        outside the control API (a sign-in endpoint, say) from the fault knobs."""
        self._routes.append((method, re.compile(f"^{pattern}$"), handler, faults))

    def count(self, name: str, amount: int = 1) -> None:
        with self._counter_lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def start(self) -> JsonServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _set_faults(self, request: Request) -> Response:
        try:
            self.faults.update(request.body or {})
        except (KeyError, TypeError, ValueError) as error:
            raise HttpFailure(400, {"error": f"bad fault setting: {error}"}) from None
        return Response(body=asdict(self.faults))

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._random_lock:
            return self._random.random() < rate

    def dispatch(self, request: Request) -> tuple[Response, Delivery]:
        """The answer to ``request``, and how to send it."""
        allowed = False
        for method, pattern, handler, faulty in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            allowed = True
            if method != request.method:
                continue
            request.params = match.groupdict()
            if not faulty or request.path.startswith(CONTROL_PREFIX):
                return self._run(handler, request), PROMPTLY
            return self._faulty(handler, request)
        if allowed:
            return Response(405, {"error": f"{request.method} not allowed"}), PROMPTLY
        missing = [{"errorCode": "NOT_FOUND", "message": "no such resource"}]
        return Response(404, missing), PROMPTLY

    def _faulty(self, handler: Route, request: Request) -> tuple[Response, Delivery]:
        faults = self.faults
        delay = faults.latency_ms / 1000
        if self._chance(faults.throttle_rate):
            self.count("faults.throttled")
            headers = {"Retry-After": str(faults.retry_after_s)}
            body = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "request limit exceeded"}]
            return Response(faults.throttle_status, body, headers), faults.delivery(delay)
        if self._chance(faults.error_rate):
            self.count("faults.errors")
            unavailable = [{"errorCode": "SERVER_UNAVAILABLE"}]
            return Response(faults.error_status, unavailable), faults.delivery(delay)
        if request.body is not None and self._chance(faults.echo_rate):
            self.count("faults.echoed")
            quoted = self.dumps(request.body).decode()
            echoed = {"code": "invalid_request", "message": f"cannot process {quoted}"}
            return Response(faults.echo_status, echoed), faults.delivery(delay)
        response = self._run(handler, request)
        if self._chance(faults.timeout_rate):
            self.count("faults.timeouts")
            delay += faults.hang_s
        return response, faults.delivery(delay)

    @staticmethod
    def _run(handler: Route, request: Request) -> Response:
        try:
            return handler(request)
        except HttpFailure as failure:
            return failure.response

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the body waits for the
            # client's delayed ACK (40 ms) on every keep-alive request.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                form = self.headers.get("Content-Type", "").startswith(
                    "application/x-www-form-urlencoded"
                )
                try:
                    if form:
                        body: Any = {
                            name: values[0] for name, values in parse_qs(raw.decode()).items()
                        }
                    else:
                        body = server.loads(raw) if raw else None
                except (UnicodeDecodeError, ValueError):
                    self._answer(Response(400, [{"errorCode": "JSON_PARSER_ERROR"}]), PROMPTLY)
                    return
                request = Request(
                    self.command,
                    parts.path,
                    {},
                    parse_qs(parts.query),
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                )
                self._answer(*server.dispatch(request))

            def _answer(self, response: Response, delivery: Delivery) -> None:
                if delivery.delay_s:
                    time.sleep(delivery.delay_s)
                raw = isinstance(response.body, bytes)
                if raw:
                    payload: bytes = response.body
                else:
                    payload = b"" if response.body is None else server.dumps(response.body)
                if payload and delivery.pad_bytes and not raw:
                    payload += b" " * delivery.pad_bytes
                if not payload:
                    delivery = replace(delivery, chunked=False)  # a 204 has no body to chunk
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    if payload and not raw:
                        self.send_header("Content-Type", "application/json")
                    if delivery.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self._write_body(payload, delivery)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up waiting (a timeout or drip fault)

            def _write_body(self, payload: bytes, delivery: Delivery) -> None:
                size = delivery.drip_bytes if delivery.drip_s > 0 else len(payload) or 1
                for start in range(0, len(payload), size):
                    if delivery.drip_s > 0:
                        time.sleep(delivery.drip_s)
                    part = payload[start : start + size]
                    if delivery.chunked:
                        part = b"%x\r\n%s\r\n" % (len(part), part)
                    self.wfile.write(part)
                if delivery.chunked:
                    self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815 - http.server API

            def log_message(self, format: str, *args: object) -> None:
                pass

        return _Handler


class ControlClient:
    """A typed client of a simulator's control API at ``url`` (its subclasses name the
    routes); closed on leaving a ``with`` block."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._client = httpx.Client(base_url=url, timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
