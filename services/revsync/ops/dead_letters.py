"""Reading dead letters: every consumer's DLT topic scanned to its end, each record with its
error headers, what an operator already did with it, and its payload decoded where possible.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import fastavro
import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from revsync.connectors.cdc import RecordChange
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import Event
from revsync.contracts.serde import FRAME, MAGIC_BYTE
from revsync.contracts.topics import watermarks
from revsync.errors import MalformedHeader, RevsyncError
from revsync.runtime import headers as h
from revsync.runtime.records import Decoder

OPEN = "open"
STATES = (OPEN, "replayed", "purged", "archived", "quarantined")


class SelectionError(RevsyncError):
    """A filter names something the catalog does not have; the message says what."""


class DeadLettersUnreadable(RevsyncError):
    """Kafka refused or never delivered the dead letters a command needs to read."""


STALL_S = 60.0
"""How long a scan waits without a record before it gives up on Kafka."""
SCAN_BATCH = 1000
SCAN_WAIT_S = 0.1
"""How long one read waits for a whole batch: a partial one, as a scan's last is, waits it
out, so it is short."""
AT_ONCE = {"enable.sparse.connections": False}
"""A short-lived reader connects to the brokers when it starts: its first request would
otherwise wait out the client's connection back-off (some 50 ms) as often as not."""
UNREADABLE = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
    }
)


class OperationRefused(RevsyncError):
    """The action would be unsafe as asked (a live consumer group, an unknown job)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a consumer's dead-letter topic (a replay holds tens of thousands: no
    ``__dict__`` each)."""

    dlt_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: h.Headers
    timestamp_ms: int
    consumer: str
    state: str = OPEN
    event: Event | RecordChange | None = None
    """The payload as its consumer reads it, when it still decodes."""

    @property
    def ref(self) -> str:
        return f"{self.dlt_topic}:{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        return h.get(self.headers, name)

    @property
    def source_topic(self) -> str:
        return self.header(h.ORIGINAL_TOPIC) or "?"

    @property
    def blocker(self) -> str:
        """The record it is a copy of, as the key hold it caused names it."""
        names = (h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET)
        return ":".join(self.header(name) or "?" for name in names)

    @property
    def service(self) -> str:
        return self.header(h.SERVICE) or "?"

    @property
    def error_class(self) -> str:
        return self.header(h.ERROR_CLASS) or "unknown"

    @property
    def correlation_id(self) -> str | None:
        return self.header(h.CORRELATION_ID)

    @property
    def replay_count(self) -> int:
        """How often it was replayed; a count that does not parse counts as none."""
        try:
            return h.replay_count(self.headers)
        except MalformedHeader:
            return 0

    @property
    def failed_at(self) -> datetime | None:
        """When it last failed; None if its header says nothing that parses."""
        try:
            return h.last_failure_at(self.headers)
        except MalformedHeader:
            return None

    @property
    def key_text(self) -> str:
        return "" if self.key is None else self.key.decode(errors="replace")

    @property
    def event_type(self) -> str | None:
        if self.event is not None:
            return self.event.envelope.event_type
        return self.header("ce_type")

    @property
    def region(self) -> str | None:
        if isinstance(self.event, RecordChange):
            region = self.event.fields.get("Region__c")
            return str(region) if region else None
        region = getattr(self.event, "region", None)
        return str(region) if region else None

    @property
    def product_lines(self) -> tuple[str, ...]:
        lines = getattr(self.event, "lines", None) or []
        return tuple(
            sorted({str(line.product_line) for line in lines if hasattr(line, "product_line")})
        )


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operator means; empty fields match everything."""

    services: frozenset[str] = frozenset()
    source_topics: frozenset[str] = frozenset()
    error_classes: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    correlation_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    refs: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    states: frozenset[str] = field(default_factory=lambda: frozenset({OPEN}))

    def matches(self, letter: DeadLetter) -> bool:
        # Only what the selection names is read from the letter (a replay matches thousands).
        checks = (
            (self.services, "service"),
            (self.source_topics, "source_topic"),
            (self.error_classes, "error_class"),
            (self.keys, "key_text"),
            (self.correlation_ids, "correlation_id"),
            (self.event_types, "event_type"),
            (self.refs, "ref"),
            (self.states, "state"),
        )
        if any(wanted and getattr(letter, name) not in wanted for wanted, name in checks):
            return False
        if self.since is None and self.until is None:
            return True
        moment = letter.failed_at
        if self.since is not None and (moment is None or moment < self.since):
            return False
        return not (self.until is not None and (moment is None or moment >= self.until))

    @property
    def narrows(self) -> bool:
        """Whether anything but the state narrows it: otherwise it names every dead letter of
        every service."""
        sets = (
            self.services,
            self.source_topics,
            self.error_classes,
            self.keys,
            self.correlation_ids,
            self.event_types,
            self.refs,
        )
        return any(sets) or self.since is not None or self.until is not None

    def as_json(self) -> dict[str, Any]:
        """The filter as the audit trail records it."""
        document: dict[str, Any] = {}
        for name in (
            "services",
            "source_topics",
            "error_classes",
            "keys",
            "correlation_ids",
            "event_types",
            "refs",
            "states",
        ):
            values = getattr(self, name)
            if values:
                document[name] = sorted(values)
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None:
                document[name] = moment.isoformat()
        return document


def dead_letter_topics(catalog: Catalog, services: Iterable[str] = ()) -> dict[str, str]:
    """DLT topic -> consumer, for every consumer (or those of the named services)."""
    wanted = set(services)
    known = {spec.service for spec in catalog.consumers.values()}
    unknown = sorted(wanted - known)
    if unknown:
        raise SelectionError(
            f"no consumer belongs to service {', '.join(unknown)}; "
            f"services: {', '.join(sorted(known))}"
        )
    return {
        catalog.dead_letter_topic(name): name
        for name, spec in catalog.consumers.items()
        if not wanted or spec.service in wanted
    }


def scan(
    kafka_config: Mapping[str, Any],
    topics: Mapping[str, str],
    timeout_s: float = 10,
    from_offsets: Mapping[str, Mapping[str, int]] | None = None,
) -> Iterator[DeadLetter]:
    """Every record now on ``topics`` (topic -> its consumer), each partition to its end;
    from its start, or from ``from_offsets`` (topic -> partition -> offset)."""
    consumer = Consumer(
        {
            **kafka_config,
            **AT_ONCE,
            "group.id": f"revsync-dlt-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic, partitions in partitions_of(consumer, topics, timeout_s).items():
            for number in partitions:
                low, high = watermarks(consumer, TopicPartition(topic, number), timeout_s)
                if from_offsets is not None:
                    low = max(low, from_offsets.get(topic, {}).get(str(number), high))
                if high > low:
                    ends[(topic, number)] = high
                    assignment.append(TopicPartition(topic, number, low))
        if not assignment:
            return
        consumer.assign(assignment)
        stalled_at = time.monotonic() + STALL_S
        while ends:
            messages = consumer.consume(SCAN_BATCH, SCAN_WAIT_S)
            if messages:
                stalled_at = time.monotonic() + STALL_S
            elif time.monotonic() > stalled_at:
                raise DeadLettersUnreadable(
                    f"no dead letter arrived for {STALL_S:.0f}s with {len(ends)} partition(s) "
                    "not read to their end; is Kafka reachable?"
                )
            for message in messages:
                _refused(message.error())
                name, partition, offset = message.topic(), message.partition(), message.offset()
                if name is None or partition is None or offset is None:
                    continue
                where = (name, partition)
                end = ends.get(where)
                if end is None:
                    continue
                error = message.error()
                if error is None and offset < end:
                    yield DeadLetter(
                        name,
                        partition,
                        offset,
                        message.key(),
                        message.value(),
                        h.as_list(message.headers()),
                        message.timestamp()[1],
                        topics[name],
                    )
                if (error is None and offset + 1 >= end) or (
                    error is not None and error.code() == KafkaError._PARTITION_EOF
                ):
                    del ends[where]
    finally:
        consumer.close()


def partitions_of(
    consumer: Consumer, topics: Iterable[str], timeout_s: float
) -> dict[str, list[int]]:
    """Each of ``topics`` that exists (and may be described), with its partitions. Asked
    topic by topic: the whole cluster's metadata can be thousands of topics."""
    found: dict[str, list[int]] = {}
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is not None and metadata.error is None:
            found[topic] = sorted(metadata.partitions)
    return found


def _refused(error: KafkaError | None) -> None:
    """Raise for an error that no waiting mends (no right to read, no such topic, a fatal
    client): a scan would otherwise wait for records that never come."""
    if error is None or error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal() or error.code() in UNREADABLE:
        raise DeadLettersUnreadable(f"reading the dead letters failed: {error.name()}")


def with_state(
    connection: psycopg.Connection[Any], letters: Iterable[DeadLetter]
) -> Iterator[DeadLetter]:
    """Each letter with what the ledger says an operator did with it."""
    batch = list(letters)
    rows = connection.execute(
        'SELECT dlt_topic, partition, "offset", state FROM revsync_dlt_ledger '
        "WHERE dlt_topic = ANY(%s)",
        (sorted({letter.dlt_topic for letter in batch}),),
    ).fetchall()
    states = {(topic, partition, offset): state for topic, partition, offset, state in rows}
    for letter in batch:
        state = states.get((letter.dlt_topic, letter.partition, letter.offset), OPEN)
        yield letter if state == letter.state else _replace(letter, state=state)


def decoded(letters: Iterable[DeadLetter], decoder: Decoder) -> Iterator[DeadLetter]:
    """Each letter with its payload decoded as its consumer reads it, when it still does."""
    for letter in letters:
        try:
            event = decoder(letter.source_topic, letter.value)
        except Exception:  # a poison record stays undecoded; show falls back to raw bytes
            yield letter
            continue
        yield _replace(letter, event=event if isinstance(event, Event | RecordChange) else None)


def _replace(letter: DeadLetter, **changes: Any) -> DeadLetter:
    fields = {name: getattr(letter, name) for name in letter.__dataclass_fields__}
    return DeadLetter(**{**fields, **changes})


# --- show ---------------------------------------------------------------------------------


def payload(letter: DeadLetter, registry: SchemaRegistryClient) -> tuple[str, Any]:
    """How the value reads: ``("event", ...)`` as its consumer decodes it, ``("avro", ...)``
    through the registry with its writer schema, ``("json", ...)``, or ``("bytes", ...)``:
    then only its length and first bytes (where a Confluent frame would be), since masking
    cannot see into bytes nothing can read (``dlt export --raw`` has them all)."""
    if letter.event is not None:
        if isinstance(letter.event, RecordChange):
            return "event", {
                "ChangeEventHeader": letter.event.header.model_dump(),
                **letter.event.fields,
            }
        return "event", letter.event.model_dump(mode="json")
    data = letter.value or b""
    if len(data) > FRAME.size and data[0] == MAGIC_BYTE:
        schema_id = FRAME.unpack_from(data)[1]
        try:
            schema_str = registry.get_schema(schema_id).schema_str or "null"
            schema = fastavro.parse_schema(json.loads(schema_str))
            datum = fastavro.schemaless_reader(io.BytesIO(data[FRAME.size :]), schema)
            return "avro", _plain(datum)
        except (SchemaRegistryError, ValueError, EOFError, IndexError, TypeError):
            pass
    try:
        return "json", json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "bytes", {"length": len(data), "first_bytes": data[: FRAME.size].hex()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal | datetime | uuid.UUID) or hasattr(value, "isoformat"):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def refuse_unfiltered(action: str, selection: Selection, everything: bool) -> None:
    """A destructive ``action`` without a filter only with ``everything`` (``--all``), so
    that a forgotten filter acts on nothing."""
    if not selection.narrows and not everything:
        raise OperationRefused(
            f"{action} every dead letter of every service? Name a filter (--service, --key, "
            "--error-class, ...), or say --all"
        )
