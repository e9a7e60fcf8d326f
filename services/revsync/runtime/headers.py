"""Kafka headers revsync reads and writes: CloudEvents binary mode, tracing, and the error
headers on retry and dead-letter records (replaced, never stacked), and the parsers of their
values: each returns the value or raises MalformedHeader."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from revsync.errors import MalformedHeader, classify, described, described_traceback

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


# --- parsing the values revsync writes ---------------------------------------------------------

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_MILLISECOND = -62_135_596_800_000
"""0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the range of a datetime, in epoch ms."""
LAST_MILLISECOND = 253_402_300_799_999
_INTEGER = re.compile(r"-?[0-9]+")
"""What revsync writes: ``str(int)``. No sign, spaces, underscores or non-ASCII digits."""


def _integer(headers: HeadersLike, name: str, low: int, high: int) -> int | None:
    text = get(headers, name)
    if text is None:
        return None
    # Checked before int(): a digit string past Python's int-string limit raises ValueError.
    if not _INTEGER.fullmatch(text) or len(text.lstrip("-")) > 19:
        raise MalformedHeader(name, text, f"not an integer from {low} to {high}")
    number = int(text)
    if not low <= number <= high:
        raise MalformedHeader(name, text, f"not an integer from {low} to {high}")
    return number


def attempts(headers: HeadersLike) -> int:
    """How often the record has failed so far (0 if never)."""
    return _integer(headers, ATTEMPTS, 0, INT64_MAX) or 0


def replay_count(headers: HeadersLike) -> int:
    """How often the record has been replayed (0 if never)."""
    return _integer(headers, REPLAY_COUNT, 0, INT64_MAX) or 0


def original_partition(headers: HeadersLike) -> int | None:
    """The partition the record was first consumed from; -1 if that was not known."""
    return _integer(headers, ORIGINAL_PARTITION, -1, INT32_MAX)


def original_offset(headers: HeadersLike) -> int | None:
    """The offset the record was first consumed at; -1 if that was not known."""
    return _integer(headers, ORIGINAL_OFFSET, -1, INT64_MAX)


def original_timestamp(headers: HeadersLike) -> int | None:
    """The first record's Kafka timestamp, in epoch ms (negative when Kafka had none)."""
    return _integer(headers, ORIGINAL_TIMESTAMP, INT64_MIN, INT64_MAX)


def due_at(headers: HeadersLike) -> datetime | None:
    """When a retry-tier record is due. Any integer of epoch ms parses: one past what a
    datetime holds (after the year 9999, 10^30 ms) is held at its last or first moment."""
    millis = get(headers, DUE_AT)
    if not millis:
        return None
    if not _INTEGER.fullmatch(millis):
        raise MalformedHeader(DUE_AT, millis, "not a time in epoch milliseconds")
    negative, digits = millis.startswith("-"), len(millis.lstrip("-"))
    if digits > 19:  # compared as text: past Python's int-string limit int() would refuse
        moment = FIRST_MILLISECOND if negative else LAST_MILLISECOND
    else:
        moment = min(max(int(millis), FIRST_MILLISECOND), LAST_MILLISECOND)
    return EPOCH + timedelta(milliseconds=moment)


def _moment(headers: HeadersLike, name: str) -> datetime | None:
    text = get(headers, name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedHeader(name, text, "not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise MalformedHeader(name, text, "an ISO 8601 time without its UTC offset")
    return moment


def first_failure_at(headers: HeadersLike) -> datetime | None:
    return _moment(headers, FIRST_FAILURE_AT)


def last_failure_at(headers: HeadersLike) -> datetime | None:
    return _moment(headers, LAST_FAILURE_AT)


def _carried(parse: Callable[[HeadersLike], object], headers: HeadersLike) -> bool:
    """Whether an earlier failure's header is there and parses, so it can be carried on."""
    try:
        return parse(headers) is not None
    except MalformedHeader:
        return False


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
    time survive from an earlier failure; everything else is replaced. An earlier value that
    does not parse is replaced as if it were missing, so that a record whose headers were
    damaged can still be sent on to its retry tier or the dead letters."""
    topic, partition, offset, timestamp = source

    def earlier(name: str, parse: Callable[[HeadersLike], object], otherwise: str) -> str:
        value = get(original, name)
        return value if value is not None and _carried(parse, original) else otherwise

    try:
        failures = attempts(original)
    except MalformedHeader:
        failures = 0
    stack = described_traceback(error)[-STACK_LIMIT:]
    values = {
        ORIGINAL_TOPIC: get(original, ORIGINAL_TOPIC) or topic,
        ORIGINAL_PARTITION: earlier(ORIGINAL_PARTITION, original_partition, str(partition)),
        ORIGINAL_OFFSET: earlier(ORIGINAL_OFFSET, original_offset, str(offset)),
        ORIGINAL_TIMESTAMP: earlier(ORIGINAL_TIMESTAMP, original_timestamp, str(timestamp)),
        CONSUMER_GROUP: consumer,
        SERVICE: service,
        ERROR_CLASS: classify(error).value,
        ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
        ERROR_MESSAGE: described(error)[:MESSAGE_LIMIT],
        ERROR_STACK: stack,
        ATTEMPTS: str(min(failures + 1, INT64_MAX)),
        FIRST_FAILURE_AT: earlier(FIRST_FAILURE_AT, first_failure_at, now.isoformat()),
        LAST_FAILURE_AT: now.isoformat(),
    }
    if correlation_id:
        values[CORRELATION_ID] = correlation_id
    replay_id = get(original, REPLAY_ID)
    if replay_id is not None:
        values[REPLAY_ID] = replay_id
    if _carried(replay_count, original):
        values[REPLAY_COUNT] = str(replay_count(original))
    if due_at is not None:
        # Exact to the millisecond, where seconds as a float can land one short.
        since = due_at - EPOCH if due_at.tzinfo else timedelta(seconds=due_at.timestamp())
        values[DUE_AT] = str(since // timedelta(milliseconds=1))
    return without_revsync(original) + [(k, _bytes(v)) for k, v in values.items()]


def to_json(headers: HeadersLike) -> list[list[str]]:
    """Headers as JSON-safe pairs (values base64), for the outbox and parked rows."""
    return [[k, base64.b64encode(_bytes(v)).decode()] for k, v in as_list(headers)]


def from_json(pairs: Sequence[Sequence[str]]) -> Headers:
    """Pairs ``to_json`` wrote back to headers; a pair that is not one raises MalformedHeader."""
    headers: Headers = []
    for pair in pairs:
        if len(pair) != 2:
            raise MalformedHeader("?", repr(pair)[:80], "not a [name, base64 value] pair")
        name, value = pair
        try:
            # base64.b64decode's own decoder, without its wrapper's cost on the relay's path.
            headers.append((name, binascii.a2b_base64(value)))
        except (binascii.Error, ValueError):  # also a value that is not ASCII text
            raise MalformedHeader(name, value, "not base64") from None
    return headers


def _bytes(value: str | bytes | None) -> bytes:
    """A header value as bytes; a lone surrogate in text is written as its escape."""
    if value is None:
        return b""
    return value.encode(errors="backslashreplace") if isinstance(value, str) else value
