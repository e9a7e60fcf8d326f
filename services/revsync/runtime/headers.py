"""Kafka headers revsync reads and writes: CloudEvents binary mode, tracing, and the error
headers on retry and dead-letter records (replaced, never stacked)."""

from __future__ import annotations

import base64
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeAlias

from revsync.errors import classify

Headers = list[tuple[str, str | bytes | None]]
"""Kafka headers as confluent-kafka takes them; revsync writes bytes."""
HeadersLike: TypeAlias = (
    Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]] | None
)
"""Headers as confluent-kafka may hand them over."""


def as_list(headers: HeadersLike) -> Headers:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


ERROR_PREFIX = "revsync."
ORIGINAL_TOPIC = "revsync.original.topic"
ORIGINAL_PARTITION = "revsync.original.partition"
ORIGINAL_OFFSET = "revsync.original.offset"
ORIGINAL_TIMESTAMP = "revsync.original.timestamp"
CONSUMER_GROUP = "revsync.consumer.group"
SERVICE = "revsync.service"
ERROR_CLASS = "revsync.error.class"
ERROR_TYPE = "revsync.error.type"
ERROR_MESSAGE = "revsync.error.message"
ERROR_STACK = "revsync.error.stack"
ATTEMPTS = "revsync.attempts"
FIRST_FAILURE_AT = "revsync.first.failure.at"
LAST_FAILURE_AT = "revsync.last.failure.at"
CORRELATION_ID = "revsync.correlation.id"
DUE_AT = "revsync.retry.due.at"
REPLAY_ID = "revsync.replay.id"
"""The operator's replay job that sent the record back; kept through later failures."""
REPLAY_COUNT = "revsync.replay.count"
"""How often the record was replayed; the loop guard quarantines past a limit."""
REPLAY_SOURCE = "revsync.replay.source"
"""The dead letter (topic:partition:offset) a replayed record is a copy of."""
TRACEPARENT = "traceparent"
STACK_LIMIT = 4096
MESSAGE_LIMIT = 1024


def get(headers: HeadersLike, name: str) -> str | None:
    for key, value in as_list(headers):
        if key == name and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def without_revsync(headers: HeadersLike) -> Headers:
    """The original headers: everything but revsync's own error headers."""
    return [(k, v) for k, v in as_list(headers) if not k.startswith(ERROR_PREFIX)]


def failure_headers(
    original: HeadersLike,
    *,
    error: BaseException,
    source: tuple[str, int, int, int],
    consumer: str,
    service: str,
    correlation_id: str | None,
    now: datetime,
    due_at: datetime | None = None,
) -> Headers:
    """Headers for a retry or dead-letter copy. The original coordinates and first failure
    time survive from an earlier failure; everything else is replaced."""
    topic, partition, offset, timestamp = source
    first = get(original, FIRST_FAILURE_AT) or now.isoformat()
    attempts = int(get(original, ATTEMPTS) or 0) + 1
    stack = "".join(traceback.format_exception(error))[-STACK_LIMIT:]
    values = {
        ORIGINAL_TOPIC: get(original, ORIGINAL_TOPIC) or topic,
        ORIGINAL_PARTITION: get(original, ORIGINAL_PARTITION) or str(partition),
        ORIGINAL_OFFSET: get(original, ORIGINAL_OFFSET) or str(offset),
        ORIGINAL_TIMESTAMP: get(original, ORIGINAL_TIMESTAMP) or str(timestamp),
        CONSUMER_GROUP: consumer,
        SERVICE: service,
        ERROR_CLASS: classify(error).value,
        ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
        ERROR_MESSAGE: str(error)[:MESSAGE_LIMIT],
        ERROR_STACK: stack,
        ATTEMPTS: str(attempts),
        FIRST_FAILURE_AT: first,
        LAST_FAILURE_AT: now.isoformat(),
    }
    if correlation_id:
        values[CORRELATION_ID] = correlation_id
    for carried in (REPLAY_ID, REPLAY_COUNT):
        value = get(original, carried)
        if value is not None:
            values[carried] = value
    if due_at is not None:
        values[DUE_AT] = str(int(due_at.timestamp() * 1000))
    return without_revsync(original) + [(k, v.encode()) for k, v in values.items()]


def due_at(headers: HeadersLike) -> datetime | None:
    millis = get(headers, DUE_AT)
    return datetime.fromtimestamp(int(millis) / 1000, UTC) if millis else None


def to_json(headers: HeadersLike) -> list[list[str]]:
    """Headers as JSON-safe pairs (values base64), for the outbox and parked rows."""
    return [[k, base64.b64encode(_bytes(v)).decode()] for k, v in as_list(headers)]


def from_json(pairs: Sequence[Sequence[str]]) -> Headers:
    return [(k, base64.b64decode(v)) for k, v in pairs]


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value
