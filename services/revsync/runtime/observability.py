"""Prometheus metrics, /healthz and /readyz, and JSON logs carrying correlation and event ids."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from revsync.errors import described_traceback

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 86400)

CONSUMED = Counter("revsync_consumed_total", "Records taken from Kafka.", ["consumer", "topic"])
PROCESSED = Counter(
    "revsync_processed_total", "Events handled with their effects committed.", ["consumer", "topic"]
)
DUPLICATES = Counter(
    "revsync_duplicates_skipped_total", "Redeliveries recognised by the inbox.", ["consumer"]
)
RETRIED = Counter(
    "revsync_retried_total", "Failures sent to a delayed retry tier.", ["consumer", "tier"]
)
IN_PROCESS_RETRIES = Counter(
    "revsync_in_process_retries_total", "Transient failures retried in process.", ["consumer"]
)
DEAD_LETTERED = Counter(
    "revsync_dead_lettered_total",
    "Records sent to the dead-letter topic.",
    ["consumer", "topic", "error_class"],
)
PARKED = Counter(
    "revsync_parked_total", "Records held behind an earlier failure of their key.", ["consumer"]
)
KEYS_HELD = Gauge("revsync_keys_held", "Keys waiting on a record in retry or DLT.", ["consumer"])
HANDLER_LATENCY = Histogram(
    "revsync_handler_latency_seconds",
    "Time in the handler per event.",
    ["consumer"],
    buckets=LATENCY_BUCKETS,
)
EVENT_AGE = Histogram(
    "revsync_event_age_seconds",
    "Event age (now - occurred_at) when processed.",
    ["consumer"],
    buckets=AGE_BUCKETS,
)
CIRCUIT_OPEN = Gauge(
    "revsync_circuit_open",
    "1 while the consumer's dead-letter circuit breaker is open.",
    ["consumer"],
)
DEPENDENCY_UP = Gauge(
    "revsync_dependency_up",
    "1 while the dependency answers, 0 during an outage (only dependencies that were out).",
    ["dependency"],
)
OUTBOX_BACKLOG = Gauge("revsync_outbox_backlog", "Outbox rows not yet published.", ["outbox"])
OUTBOX_OLDEST_AGE = Gauge(
    "revsync_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.", ["outbox"]
)
CDC_RECEIVED = Counter(
    "revsync_cdc_bridge_events_received_total",
    "Change events received from the Pub/Sub API.",
    ["channel"],
)
CDC_PRODUCED = Counter(
    "revsync_cdc_bridge_records_produced_total",
    "Change records Kafka acknowledged (one per record id of an event).",
    ["channel", "topic"],
)
CDC_UNDECODABLE = Counter(
    "revsync_cdc_bridge_undecodable_total",
    "Change events that could not be decoded, passed on as such for the consumer's DLT.",
    ["channel"],
)
CDC_GAPS = Counter(
    "revsync_cdc_bridge_gaps_total",
    "Positions lost (replay id refused or past retention, or a first start from a time), "
    "each written as a gap record that reconciles from the last known time.",
    ["channel", "reason"],
)
CDC_LAG = Gauge(
    "revsync_cdc_bridge_lag_seconds",
    "Now minus the commit time of the latest change event received.",
    ["channel"],
)
CDC_CHECKPOINT_AGE = Gauge(
    "revsync_cdc_bridge_checkpoint_age_seconds",
    "Seconds since the channel's replay id checkpoint last advanced.",
    ["channel"],
)
CDC_IN_FLIGHT = Gauge(
    "revsync_cdc_bridge_in_flight",
    "Events requested from the Pub/Sub API and not yet acknowledged by Kafka.",
    ["channel"],
)
CDC_LEADER = Gauge(
    "revsync_cdc_bridge_leader",
    "1 while this replica holds the channel's subscription, 0 while it stands by.",
    ["channel"],
)
CDC_SCHEMA_CACHE_MISSES = Counter(
    "revsync_cdc_bridge_schema_cache_misses_total",
    "Schemas fetched from the Pub/Sub API (GetSchema), each once per id.",
)
OUTBOX_PUBLISHED = Counter(
    "revsync_outbox_published_total", "Outbox rows published to Kafka.", ["outbox"]
)

_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_event_id: ContextVar[str | None] = ContextVar("event_id", default=None)


@contextmanager
def event_context(correlation_id: str | None, event_id: str | None) -> Iterator[None]:
    """Within this block every log line carries the event's correlation and event ids."""
    tokens = (_correlation_id.set(correlation_id), _event_id.set(event_id))
    try:
        yield
    finally:
        _correlation_id.reset(tokens[0])
        _event_id.reset(tokens[1])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": _correlation_id.get(),
            "event_id": _event_id.get(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            # As a dead letter's stack tells it: an exception's own text may quote data.
            entry["exception"] = described_traceback(record.exc_info[1])
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP call is per-message logging; their failures reach us as errors.
    for chatty in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))


class Liveness:
    """The poll loop's heartbeat, and whether it can do its work now.

    Alive (``/healthz``) while the loop beat within ``timeout_s``, dependency outage or not:
    an orchestrator must not kill a process that is waiting for PostgreSQL to come back.
    Ready (``/readyz``) once started (``ready``) and while no dependency it needs is out.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last = time.monotonic()
        self.ready = False
        self._outages: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self) -> None:
        self._last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last < self.timeout_s

    def serving(self) -> bool:
        return self.ready and not self._outages

    def is_out(self, dependency: str) -> bool:
        return dependency in self._outages

    def outage(self, dependency: str, error: object) -> None:
        """``dependency`` (postgresql, kafka, schema-registry) cannot be reached."""
        with self._lock:
            if dependency in self._outages:
                return
            self._outages[dependency] = time.monotonic()
        DEPENDENCY_UP.labels(dependency).set(0)
        log.warning("%s unavailable, not ready until it answers again: %s", dependency, error)

    def recovered(self, *dependencies: str) -> None:
        """The given dependencies (every one, if none is named) answer again."""
        with self._lock:
            back = [d for d in (dependencies or list(self._outages)) if d in self._outages]
            lost = {d: self._outages.pop(d) for d in back}
        for dependency, since in lost.items():
            DEPENDENCY_UP.labels(dependency).set(1)
            log.info("%s back after %.1fs", dependency, time.monotonic() - since)


class Backoff:
    """Waits between attempts to reach a dependency: doubling from ``first_s`` to ``max_s``,
    each with up to a quarter of jitter so that replicas do not retry in step."""

    def __init__(self, first_s: float = 0.5, max_s: float = 10.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next_wait(self) -> float:
        wait = self._next * (1 + random.random() / 4)  # noqa: S311 - jitter, not secrecy
        self._next = min(self._next * 2, self.max_s)
        return min(wait, self.max_s)

    def reset(self) -> None:
        self._next = self.first_s


class HealthServer:
    """``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` on one port."""

    def __init__(self, port: int, alive: Callable[[], bool], ready: Callable[[], bool]) -> None:
        checks = {"/healthz": alive, "/readyz": ready}

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API
                if self.path == "/metrics":
                    body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
                elif self.path in checks:
                    ok = checks[self.path]()
                    body, status, kind = (
                        (b"ok\n" if ok else b"failing\n"),
                        (200 if ok else 503),
                        ("text/plain"),
                    )
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)  # noqa: S104
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
