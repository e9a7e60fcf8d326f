"""Hostile input meets typed errors: the CDC decoder, the Avro serde and the failure headers are
each fed ten thousand generated values a run, and refuse what is bad only with revsync's own
errors, so the loop can route every record on its error's class.

The hostile classes are named once below and mixed into every strategy, and each is also pinned
as an explicit example: timestamps past the year 9999 (and 10^30 ms), lone surrogates in record
ids and text, nesting deeper than Python recurses, integers past Python's int-string digit limit,
and money at and over the decimal(18,4) limit.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract_fixtures import SCHEMAS_DIR
from revsync.connectors.cdc import MAX_JSON_DEPTH, decode_change
from revsync.connectors.salesforce import decode_json
from revsync.contracts.catalog import load_catalog
from revsync.contracts.events import EVENTS_BY_SCHEMA, Event, OrderCreated
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import FRAME, MAGIC_BYTE, EventSerde
from revsync.errors import (
    RETRYABLE,
    DecodeError,
    ErrorClass,
    MalformedHeader,
    MalformedJson,
    RevsyncError,
    TransientError,
    UnencodableEvent,
    classify,
)
from revsync.runtime import headers as h
from samples import sample_event

T = TypeVar("T")
R = TypeVar("R", bound=RevsyncError)


def refused_or(call: Callable[[], T], refusal: type[R]) -> T | R:
    """What ``call`` returns, or the ``refusal`` it raised; any other error fails the test."""
    try:
        return call()
    except refusal as refused:
        return refused


HOSTILE = settings(
    max_examples=10_000,
    deadline=None,
    # No example database: a failure is reproduced from the example it prints, on CI as here.
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the hostile classes ----------------------------------------------------------------------

DIGIT_LIMIT = sys.get_int_max_str_digits() or 4300
"""Python refuses to turn longer digit strings into ints (0 would mean no limit at all)."""
TOO_MANY_DIGITS = "9" * (DIGIT_LIMIT + 1)
FIRST_MS_OF_YEAR_10000 = 253_402_300_800_000
LAST_MS_OF_YEAR_9999 = FIRST_MS_OF_YEAR_10000 - 1
MS_BEFORE_YEAR_1 = -62_135_596_800_001
FAR_FUTURE_MS = 10**30
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LONE_SURROGATES = ("\ud800", "\udfff", "801AB00000\udc80rd01AAA")
DEEPER_THAN_PYTHON_RECURSES = 5_000
MONEY_LIMIT = Decimal("99999999999999.9999")
"""The largest decimal(18,4): 14 digits before the point, 4 after."""
OVER_THE_LIMIT = MONEY_LIMIT + Decimal("0.0001")
DAYS_OF_9999_12_31 = (date.max - date(1970, 1, 1)).days
TOPIC = "revsync.order.crm-change.v1"
seconds_in_range = st.integers(min_value=-62_135_510_400, max_value=253_402_214_399)
"""Seconds since 1970 a day inside datetime's years 1 to 9999, in any timezone."""

lone_surrogates = st.one_of(
    st.sampled_from(LONE_SURROGATES),
    st.characters(categories=["Cs"]).map(lambda surrogate: f"801AB{surrogate}"),
)
out_of_range_millis = st.one_of(
    st.sampled_from([FIRST_MS_OF_YEAR_10000, FAR_FUTURE_MS, -FAR_FUTURE_MS, INT64_MAX + 1]),
    st.integers(min_value=FIRST_MS_OF_YEAR_10000, max_value=FAR_FUTURE_MS),
)
long_number_literals = st.sampled_from(
    [
        TOO_MANY_DIGITS,
        f"-{TOO_MANY_DIGITS}",
        "1e9999999999999999999",
        "1.5E-9999999999999999999",
        f"{TOO_MANY_DIGITS}.5",
        str(FAR_FUTURE_MS),
        str(FIRST_MS_OF_YEAR_10000),
        "NaN",
        "-Infinity",
    ]
)
"""JSON number text Python's parsers choke on, or that is no JSON number at all."""
MONEY_AT_AND_OVER_THE_LIMIT = (
    MONEY_LIMIT,
    -MONEY_LIMIT,
    OVER_THE_LIMIT,
    -OVER_THE_LIMIT,
    Decimal("1E+30"),
)


def unscaled(amount: Decimal) -> bytes:
    """``amount`` as Avro writes a decimal(18,4): the unscaled two's-complement integer."""
    number = int(amount.scaleb(4))
    return number.to_bytes((number.bit_length() + 8) // 8, "big", signed=True)


# --- the CDC decoder --------------------------------------------------------------------------

CHANGE_HEADER: dict[str, Any] = {
    "entityName": "Order",
    "recordIds": ["801AB00000Ord01AAA"],
    "changeType": "UPDATE",
    "changeOrigin": "com/salesforce/api/rest/62.0;client=dataloader",
    "transactionKey": "0002c3f4-1d2e-9a8b-7c6d-5e4f3a2b1c0d",
    "sequenceNumber": 2,
    "commitTimestamp": 1_764_583_200_123,
    "commitNumber": 1_000_042,
    "commitUser": "005000000000002AAA",
    "changedFields": ["Status"],
    "nulledFields": [],
}
PLACEHOLDER = "@@literal@@"

HOSTILE_JSON_VALUES: list[Any] = [
    None,
    True,
    "",
    0,
    -1,
    INT64_MAX + 1,
    float("nan"),
    float("-inf"),
    1e308,
    FIRST_MS_OF_YEAR_10000,
    FAR_FUTURE_MS,
    -FAR_FUTURE_MS,
    *LONE_SURROGATES,
    [LONE_SURROGATES[2]],
    ["801AB00000Ord01AAA", 42],
    [],
    {"a": LONE_SURROGATES[0]},
]
json_values = st.one_of(
    st.sampled_from(HOSTILE_JSON_VALUES),
    st.integers(),
    st.text(max_size=8),
    lone_surrogates,
    out_of_range_millis,
)
header_field_names = st.sampled_from(list(CHANGE_HEADER))
text_encodings = st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32"])


def change_event(header: dict[str, Any], status: Any = "Activated", wrapped: bool = False) -> str:
    payload = {"ChangeEventHeader": header, "Status": status}
    document = {"replayId": 4711, "payload": payload} if wrapped else payload
    return json.dumps(document)


def with_header(**changes: Any) -> bytes:
    return change_event({**CHANGE_HEADER, **changes}).encode()


def with_literal(field: str, literal: str) -> bytes:
    """A change event whose ``field`` (a header field, or ``Status``) is the raw ``literal``."""
    if field == "Status":
        text = change_event(CHANGE_HEADER, PLACEHOLDER)
    else:
        text = change_event({**CHANGE_HEADER, field: PLACEHOLDER})
    return text.replace(json.dumps(PLACEHOLDER), literal).encode()


def nested(depth: int, opener: str = "[") -> bytes:
    """A change event whose ``Status`` nests ``depth`` arrays or objects."""
    start, end = ("[", "]") if opener == "[" else ('{"a":', "}")
    inner = start * depth + ("" if opener == "[" else "1") + end * depth
    return with_literal("Status", inner)


@st.composite
def hostile_change_events(draw: st.DrawFn) -> bytes:
    header = {**CHANGE_HEADER, draw(header_field_names): draw(json_values)}
    text = change_event(header, draw(json_values), draw(st.booleans()))
    return text.encode(draw(text_encodings))


cdc_values = st.one_of(
    hostile_change_events(),
    st.builds(
        with_literal,
        st.sampled_from(["commitTimestamp", "sequenceNumber", "commitNumber", "Status"]),
        long_number_literals,
    ),
    st.builds(
        nested,
        st.one_of(
            st.integers(min_value=1, max_value=2 * MAX_JSON_DEPTH),
            # Few values, so Hypothesis soon has them all: each costs a full parse.
            st.sampled_from([sys.getrecursionlimit() - 10, DEEPER_THAN_PYTHON_RECURSES]),
        ),
        st.sampled_from("[{"),
    ),
    st.binary(max_size=64),
    st.none(),
)


def is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@HOSTILE
@given(value=cdc_values)
@example(value=with_header(commitTimestamp=FIRST_MS_OF_YEAR_10000))
@example(value=with_header(commitTimestamp=FAR_FUTURE_MS))
@example(value=with_header(recordIds=[LONE_SURROGATES[2]]))
@example(value=with_header(transactionKey="\ud800"))
@example(value=with_literal("Status", '"\\udc80"'))
@example(value='{"Status": "\xed\xa0\x80"}'.encode("latin-1"))
@example(value=nested(DEEPER_THAN_PYTHON_RECURSES))
@example(value=nested(DEEPER_THAN_PYTHON_RECURSES, "{"))
@example(value=with_literal("sequenceNumber", TOO_MANY_DIGITS))
@example(value=with_literal("Status", TOO_MANY_DIGITS))
@example(value=with_literal("Status", "1e9999999999999999999"))
@example(value=with_literal("Status", "NaN"))
def test_the_cdc_decoder_refuses_hostile_values_only_with_decode_errors(
    value: bytes | None,
) -> None:
    if value is not None:
        document = refused_or(lambda: decode_json(value), MalformedJson)
        if isinstance(document, MalformedJson):
            assert classify(document) is ErrorClass.DESERIALIZATION
    change = refused_or(lambda: decode_change(TOPIC, value), DecodeError)
    if isinstance(change, DecodeError):
        assert change.topic == TOPIC
        assert classify(change) in (ErrorClass.DESERIALIZATION, ErrorClass.VALIDATION)
        return
    # What decodes can go anywhere: Unicode text, a time in range, numbers Python can print.
    document = {"header": change.header.model_dump(), "fields": change.fields}
    assert is_unicode(json.dumps(document, ensure_ascii=False, default=str))
    assert change.envelope.occurred_at.tzinfo is not None
    assert decode_change(TOPIC, value).envelope.event_id == change.envelope.event_id


# --- the Avro serde ---------------------------------------------------------------------------

CATALOG = load_catalog(SCHEMAS_DIR)
SCHEMAS = SchemaRepository(SCHEMAS_DIR)
MODELS: dict[str, type[Event]] = {
    topic.name: EVENTS_BY_SCHEMA[topic.avro_schema] for topic in CATALOG.avro_topics
}
TOPIC_OF = {model: name for name, model in MODELS.items()}
TOPIC_NAMES = sorted(MODELS)


@dataclass(frozen=True)
class Wire:
    """A serde over an in-memory registry that holds every topic's schema, and its ids."""

    serde: EventSerde
    schema_ids: dict[str, int]

    def frame(self, frame: Frame) -> bytes:
        if not frame.framed:
            return frame.body
        writer = frame.topic if frame.writer is None else frame.writer
        schema_id = self.schema_ids[writer] if isinstance(writer, str) else writer
        return FRAME.pack(MAGIC_BYTE, schema_id) + frame.body


@dataclass(frozen=True)
class Frame:
    """A record value for ``topic``: ``body`` behind a Confluent frame naming the schema id of
    ``writer`` (a topic, or an id; the topic's own if None), or ``body`` bare if not framed."""

    topic: str
    body: bytes
    writer: str | int | None = None
    framed: bool = True


@pytest.fixture(scope="module")
def wire() -> Wire:
    registry = SchemaRegistryClient.new_client({"url": "mock://hostile-input"})
    schema_ids = {}
    for topic in CATALOG.avro_topics:
        schema = Schema(SCHEMAS.expanded_json(topic.avro_schema), "AVRO")
        schema_ids[topic.name] = registry.register_schema(topic.value_subject, schema)
    serde = EventSerde(registry, CATALOG, SCHEMAS)
    serde.prepare(TOPIC_NAMES)
    return Wire(serde, schema_ids)


def full_name(node: dict[str, Any]) -> str:
    return f"{node['namespace']}.{node['name']}"


def wire_schema(node: Any, named: dict[str, Any]) -> Any:
    """``node`` with logical types, strings and enums as what carries them on the wire (long,
    int, bytes), so that any value of those can be written and framed."""
    if isinstance(node, str):
        return "bytes" if node == "string" else named.get(node, node)
    if isinstance(node, list):
        return [wire_schema(branch, named) for branch in node]
    if "logicalType" in node:
        return wire_schema(node["type"], named)
    kind = node["type"]
    if kind == "enum":
        named[full_name(node)] = "int"
        return "int"
    if kind == "record":
        named[full_name(node)] = full_name(node)
        fields = [{**f, "type": wire_schema(f["type"], named)} for f in node["fields"]]
        return {**node, "fields": fields}
    if kind == "array":
        return {**node, "items": wire_schema(node["items"], named)}
    return wire_schema(kind, named)


def leaves(node: Any, datum: Any, path: tuple[Any, ...], named: dict[str, Any]) -> Iterator[Any]:
    """Every scalar of ``datum`` as (path, kind): the Avro primitive or logical type."""
    if isinstance(node, str):
        if node in named:
            yield from leaves(named[node], datum, path, named)
        else:
            yield path, node
    elif isinstance(node, list):
        if datum is not None:
            branch = next(branch for branch in node if branch != "null")
            yield from leaves(branch, datum, path, named)
    elif "logicalType" in node:
        yield path, node["logicalType"]
    elif node["type"] in ("record", "enum"):
        named[full_name(node)] = node
        if node["type"] == "enum":
            yield path, "enum"
        for field in node.get("fields", []):
            yield from leaves(field["type"], datum[field["name"]], (*path, field["name"]), named)
    elif node["type"] == "array":
        for index, item in enumerate(datum):
            yield from leaves(node["items"], item, (*path, index), named)
    else:
        yield from leaves(node["type"], datum, path, named)


def put(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        document = document[step]
    document[path[-1]] = value


@dataclass(frozen=True)
class WireSample:
    """A valid event of one topic, as written, and as the wire schema reads it back."""

    schema: Any
    body: bytes
    datum: dict[str, Any]
    leaves: list[tuple[tuple[Any, ...], str]]


def wire_sample(topic: str) -> WireSample:
    expanded = SCHEMAS.expanded(MODELS[topic].schema_name)
    schema = fastavro.parse_schema(expanded)
    raw = fastavro.parse_schema(wire_schema(copy.deepcopy(expanded), {}))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, sample_event(MODELS[topic]).to_avro())
    datum = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), raw, None)
    assert isinstance(datum, dict)
    found = list(leaves(expanded, datum, (), {}))
    return WireSample(raw, buffer.getvalue(), datum, found)


WIRE_SAMPLES = {topic: wire_sample(topic) for topic in TOPIC_NAMES}

any_int = st.integers(min_value=INT32_MIN, max_value=INT32_MAX)
any_long = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
wire_values: dict[str, st.SearchStrategy[Any]] = {
    "timestamp-millis": st.one_of(
        st.sampled_from([LAST_MS_OF_YEAR_9999, FIRST_MS_OF_YEAR_10000, MS_BEFORE_YEAR_1]),
        st.sampled_from([INT64_MAX, INT64_MIN]),
        any_long,
    ),
    "date": st.one_of(
        st.sampled_from([DAYS_OF_9999_12_31, DAYS_OF_9999_12_31 + 1, INT32_MAX, INT32_MIN]),
        any_int,
    ),
    "decimal": st.one_of(
        st.sampled_from(
            [*map(unscaled, MONEY_AT_AND_OVER_THE_LIMIT), (10**40).to_bytes(17, "big")]
        ),
        st.binary(max_size=24),
    ),
    "string": st.one_of(
        st.sampled_from(
            [text.encode("utf-8", "surrogatepass") for text in LONE_SURROGATES]
            + [b"", b"\xff", b"\x00", "caf\u00e9".encode()]
        ),
        st.binary(max_size=16),
    ),
    "uuid": st.one_of(st.uuids().map(lambda u: str(u).encode()), st.binary(max_size=36)),
    "enum": st.one_of(st.integers(min_value=-2, max_value=12), any_int),
    "int": st.one_of(st.sampled_from([0, -1, INT32_MAX, INT32_MIN]), any_int),
    "long": any_long,
    "boolean": st.booleans(),
}


def written(schema: Any, datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, datum)
    return buffer.getvalue()


def with_wire_values(topic: str, values: list[tuple[tuple[Any, ...], Any]]) -> Frame:
    sample = WIRE_SAMPLES[topic]
    datum = copy.deepcopy(sample.datum)
    for path, value in values:
        put(datum, path, value)
    return Frame(topic, written(sample.schema, datum))


def every_leaf_of_a_kind(topic: str, kind: str, value: Any) -> list[tuple[tuple[Any, ...], Any]]:
    return [(path, value) for path, of_kind in WIRE_SAMPLES[topic].leaves if of_kind == kind]


def hostile_fields_of(topic: str) -> st.SearchStrategy[Frame]:
    """``topic``'s valid sample with one or two of its values, or every value of one kind,
    replaced by hostile values of what carries them on the wire. Each choice draws its own
    value, so that Hypothesis can vary one without invalidating the rest."""
    scalars_of_topic = WIRE_SAMPLES[topic].leaves
    some = st.lists(
        st.one_of([st.tuples(st.just(path), wire_values[kind]) for path, kind in scalars_of_topic]),
        min_size=1,
        max_size=2,
    )
    kinds = sorted({kind for _, kind in scalars_of_topic})
    all_of_a_kind = st.one_of(
        [
            st.builds(every_leaf_of_a_kind, st.just(topic), st.just(kind), wire_values[kind])
            for kind in kinds
        ]
    )
    return st.builds(with_wire_values, st.just(topic), st.one_of(some, all_of_a_kind))


def damage(topic: str, overwrites: list[tuple[int, int]], cut: int | None) -> Frame:
    body = bytearray(WIRE_SAMPLES[topic].body)
    for position, byte in overwrites:
        body[position] = byte
    return Frame(topic, bytes(body if cut is None else body[:cut]))


def damaged_sample_of(topic: str) -> st.SearchStrategy[Frame]:
    """``topic``'s valid sample, with a few bytes overwritten, or cut short."""
    size = len(WIRE_SAMPLES[topic].body)
    overwrites = st.lists(
        st.tuples(st.integers(min_value=0, max_value=size - 1), st.integers(0, 255)), max_size=3
    )
    cuts = st.one_of(st.none(), st.integers(min_value=0, max_value=size))
    return st.builds(damage, st.just(topic), overwrites, cuts)


# One strategy per topic, so that every value drawn fits the topic it was drawn for.
hostile_fields = st.one_of([hostile_fields_of(topic) for topic in TOPIC_NAMES])
damaged_samples = st.one_of([damaged_sample_of(topic) for topic in TOPIC_NAMES])
topics = st.sampled_from(TOPIC_NAMES)
frames = st.one_of(
    hostile_fields,
    damaged_samples,
    st.builds(
        Frame,
        topics,
        st.binary(max_size=96),
        st.one_of(st.none(), topics, st.integers(min_value=0, max_value=2**32 - 1)),
    ),
    st.builds(Frame, topics, st.binary(max_size=8), framed=st.just(False)),
)
ORDER_CREATED_TOPIC = TOPIC_OF[OrderCreated]


def order_created_wire(**changes: Any) -> Frame:
    """The OrderCreated sample with top-level or first-line values replaced on the wire."""
    sample = WIRE_SAMPLES[ORDER_CREATED_TOPIC]
    datum = copy.deepcopy(sample.datum)
    for name, value in changes.items():
        if name.startswith("line_"):
            datum["lines"][0][name.removeprefix("line_")] = value
        elif name.startswith("envelope_"):
            datum["envelope"][name.removeprefix("envelope_")] = value
        else:
            datum[name] = value
    return Frame(ORDER_CREATED_TOPIC, written(sample.schema, datum))


@HOSTILE
@given(frame=frames)
@example(frame=order_created_wire(ordered_at=FIRST_MS_OF_YEAR_10000))
@example(frame=order_created_wire(ordered_at=INT64_MAX))
@example(frame=order_created_wire(envelope_occurred_at=MS_BEFORE_YEAR_1))
@example(frame=order_created_wire(requested_delivery_date=DAYS_OF_9999_12_31 + 1))
@example(frame=order_created_wire(requested_delivery_date=INT32_MAX))
@example(frame=order_created_wire(crm_order_id="801\ud800".encode("utf-8", "surrogatepass")))
@example(frame=order_created_wire(line_quantity=unscaled(OVER_THE_LIMIT)))
@example(
    frame=order_created_wire(
        line_quantity=unscaled(MONEY_LIMIT),
        line_unit_price=unscaled(MONEY_LIMIT),
        line_line_total=unscaled(MONEY_LIMIT),
    )
)
@example(frame=order_created_wire(line_unit_price=(10**40).to_bytes(17, "big")))
@example(frame=Frame(ORDER_CREATED_TOPIC, b"", writer=2**32 - 1))
@example(frame=Frame(ORDER_CREATED_TOPIC, b"\x00\x00\x00\x00", framed=False))
def test_the_serde_refuses_hostile_bytes_only_with_decode_errors(wire: Wire, frame: Frame) -> None:
    event = refused_or(lambda: wire.serde.deserialize(frame.topic, wire.frame(frame)), DecodeError)
    if isinstance(event, DecodeError):
        assert event.topic == frame.topic
        assert classify(event) not in RETRYABLE
        return
    # What decodes is a valid event of the topic, and can be published again.
    assert isinstance(event, MODELS[frame.topic])
    assert wire.serde.serialize(frame.topic, event)


BEHIND_UTC = timezone(-timedelta(hours=5))
AHEAD_OF_UTC = timezone(timedelta(hours=5))
HOSTILE_EVENT_VALUES: dict[type, list[Any]] = {
    str: [*LONE_SURROGATES, "", "\x00", TOO_MANY_DIGITS, "USD", "US"],
    Decimal: [
        *MONEY_AT_AND_OVER_THE_LIMIT,
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("-Infinity"),
        Decimal("1E-30"),
        Decimal("0.00005"),
        Decimal("1E+13"),
    ],
    int: [0, -1, INT32_MAX, INT32_MAX + 1, INT64_MAX + 1, 10**30],
    datetime: [
        datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 0, tzinfo=BEHIND_UTC),
        datetime(1, 1, 1, 1, 0, tzinfo=AHEAD_OF_UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 1, 9, 30),
    ],
    date: [date.min, date.max],
    uuid.UUID: [uuid.UUID(int=0)],
}
"""Per Python type of a field, the values it is hostile to: out of the contract's range, at its
edge, or of no type the field has."""
event_values: dict[type, st.SearchStrategy[Any]] = {
    str: st.one_of(
        st.sampled_from(HOSTILE_EVENT_VALUES[str]), lone_surrogates, st.text(max_size=8)
    ),
    Decimal: st.one_of(
        st.sampled_from(HOSTILE_EVENT_VALUES[Decimal]),
        st.integers(min_value=-(10**18), max_value=10**18).map(lambda n: Decimal(n).scaleb(-4)),
        st.builds(Decimal(1).scaleb, st.integers(min_value=-40, max_value=40)),
    ),
    int: st.one_of(st.sampled_from(HOSTILE_EVENT_VALUES[int]), st.integers()),
    datetime: st.one_of(
        st.sampled_from(HOSTILE_EVENT_VALUES[datetime]),
        st.builds(
            datetime.fromtimestamp,
            seconds_in_range,
            st.sampled_from([UTC, BEHIND_UTC, AHEAD_OF_UTC]),
        ),
    ),
    date: st.one_of(
        st.sampled_from(HOSTILE_EVENT_VALUES[date]),
        st.builds(date.fromordinal, st.integers(min_value=1, max_value=date.max.toordinal())),
    ),
    uuid.UUID: st.uuids(),
}
any_event_value = st.sampled_from([None, *(v for vs in HOSTILE_EVENT_VALUES.values() for v in vs)])
"""A hostile value of any type, to slip into a field of another."""


def scalars(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], type]]:
    """Every scalar of a model dump as (path, the type its hostile values take)."""
    if isinstance(document, dict):
        for name, value in document.items():
            yield from scalars(value, (*path, name))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from scalars(value, (*path, index))
    elif document is not None:
        kind = next(kind for kind in event_values if isinstance(document, kind))
        yield path, kind


SAMPLE_EVENTS = {model: sample_event(model) for model in MODELS.values()}
SAMPLE_SCALARS = {
    model: list(scalars(sample.model_dump())) for model, sample in SAMPLE_EVENTS.items()
}


@dataclass(frozen=True)
class HostileEvent:
    """An event type and values for some of its fields, given to the model's validation or
    slipped past it (``model_copy``), as a careless handler could."""

    model: type[Event]
    values: tuple[tuple[tuple[Any, ...], Any], ...]
    validated: bool = True

    def build(self) -> Event:
        sample = SAMPLE_EVENTS[self.model]
        if not self.validated:
            changed: Any = sample
            for path, value in self.values:
                changed = slipped_in(changed, path, value)
            assert isinstance(changed, Event)
            return changed
        document = sample.model_dump()
        for path, value in self.values:
            put(document, path, value)
        return self.model.model_validate(document)


def slipped_in(model: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``model`` with the value at ``path`` replaced, unvalidated."""
    head, rest = path[0], path[1:]
    if not rest:
        return model.model_copy(update={head: value})
    child = getattr(model, head)
    if isinstance(child, list):
        index, rest = rest[0], rest[1:]
        replaced = slipped_in(child[index], rest, value) if rest else value
        return model.model_copy(update={head: [*child[:index], replaced, *child[index + 1 :]]})
    return model.model_copy(update={head: slipped_in(child, rest, value)})


values_for = {kind: st.one_of(own, any_event_value) for kind, own in event_values.items()}
"""A value of the field's own type, or one of any type."""


def hostile_events_of(model: type[Event]) -> st.SearchStrategy[HostileEvent]:
    """``model`` with one or two of its fields, or every field of one type, hostile; the
    values given to its validation or slipped past it. As for the wire, each choice draws its
    own value."""
    fields = SAMPLE_SCALARS[model]
    some = st.lists(
        st.one_of([st.tuples(st.just(path), values_for[kind]) for path, kind in fields]),
        min_size=1,
        max_size=2,
    ).map(tuple)
    kinds = sorted({kind for _, kind in fields}, key=str)
    all_of_a_kind = st.one_of(
        [
            st.builds(every_field_of_a_kind, st.just(model), st.just(kind), event_values[kind])
            for kind in kinds
        ]
    )
    return st.builds(HostileEvent, st.just(model), st.one_of(some, all_of_a_kind), st.booleans())


def every_field_of_a_kind(
    model: type[Event], kind: type, value: Any
) -> tuple[tuple[tuple[Any, ...], Any], ...]:
    return tuple((path, value) for path, of_kind in SAMPLE_SCALARS[model] if of_kind is kind)


hostile_events = st.one_of([hostile_events_of(model) for model in SAMPLE_EVENTS])


def order_values(**changes: Any) -> tuple[tuple[tuple[Any, ...], Any], ...]:
    """Values for the OrderCreated sample: top-level names, or ``line_*`` for its first line."""
    return tuple(
        (("lines", 0, name.removeprefix("line_")) if name.startswith("line_") else (name,), value)
        for name, value in changes.items()
    )


def in_millis(document: Any) -> Any:
    """A model dump with its datetimes cut to the milliseconds Avro's timestamp-millis keeps."""
    if isinstance(document, dict):
        return {name: in_millis(value) for name, value in document.items()}
    if isinstance(document, list):
        return [in_millis(value) for value in document]
    if isinstance(document, datetime):
        return document.replace(microsecond=document.microsecond // 1000 * 1000)
    return document


LINE_AT_THE_LIMIT = order_values(
    line_quantity=MONEY_LIMIT,
    line_unit_price=MONEY_LIMIT,
    line_discount_amount=Decimal(0),
    line_line_total=MONEY_LIMIT,
)


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@HOSTILE
@given(case=hostile_events)
@example(case=HostileEvent(OrderCreated, order_values(crm_order_id=LONE_SURROGATES[2])))
@example(case=HostileEvent(OrderCreated, order_values(crm_order_id="\ud800"), validated=False))
@example(case=HostileEvent(OrderCreated, order_values(line_sku="SKU-\udfff")))
@example(case=HostileEvent(OrderCreated, order_values(ordered_at=datetime.max.replace(tzinfo=UTC))))
@example(
    case=HostileEvent(
        OrderCreated, order_values(ordered_at=datetime(9999, 12, 31, 23, 0, tzinfo=BEHIND_UTC))
    )
)
@example(
    case=HostileEvent(
        OrderCreated, order_values(ordered_at=datetime(1, 1, 1, 1, 0, tzinfo=AHEAD_OF_UTC))
    )
)
@example(case=HostileEvent(OrderCreated, LINE_AT_THE_LIMIT))
@example(case=HostileEvent(OrderCreated, order_values(line_quantity=OVER_THE_LIMIT)))
@example(case=HostileEvent(OrderCreated, order_values(subtotal=OVER_THE_LIMIT), validated=False))
@example(case=HostileEvent(OrderCreated, order_values(subtotal=Decimal("NaN")), validated=False))
@example(case=HostileEvent(OrderCreated, order_values(line_line_number=INT32_MAX + 1)))
@example(case=HostileEvent(OrderCreated, order_values(line_line_number=INT64_MAX + 1)))
@example(case=HostileEvent(OrderCreated, order_values(line_line_number=10**30), validated=False))
def test_the_serde_encodes_hostile_field_values_or_refuses_them_typed(
    wire: Wire, case: HostileEvent
) -> None:
    topic = TOPIC_OF[case.model]
    try:
        event = case.build()
    except ValidationError:
        return  # the model refuses the values at construction, naming the field
    data = refused_or(lambda: wire.serde.serialize(topic, event), UnencodableEvent)
    if isinstance(data, UnencodableEvent):
        assert not case.validated, f"a valid event must encode: {data}"
        assert data.topic == topic
        assert classify(data) is ErrorClass.VALIDATION
        return
    decoded = refused_or(lambda: wire.serde.deserialize(topic, data), DecodeError)
    if isinstance(decoded, DecodeError):
        assert not case.validated, f"a valid event must decode again: {decoded}"
        assert classify(decoded) not in RETRYABLE
        return
    if case.validated:
        assert in_millis(decoded.model_dump()) == in_millis(event.model_dump())


# --- the failure headers ----------------------------------------------------------------------

NUMERIC_HEADERS = (
    h.ATTEMPTS,
    h.REPLAY_COUNT,
    h.ORIGINAL_PARTITION,
    h.ORIGINAL_OFFSET,
    h.ORIGINAL_TIMESTAMP,
    h.DUE_AT,
)
TIME_HEADERS = (h.FIRST_FAILURE_AT, h.LAST_FAILURE_AT)
TEXT_HEADERS = (h.ORIGINAL_TOPIC, h.CORRELATION_ID, h.REPLAY_ID, h.TRACEPARENT)

HOSTILE_HEADER_TEXTS = [
    TOO_MANY_DIGITS,
    f"-{TOO_MANY_DIGITS}",
    str(FIRST_MS_OF_YEAR_10000),
    str(FAR_FUTURE_MS),
    f"-{FAR_FUTURE_MS}",
    str(INT64_MAX + 1),
    *LONE_SURROGATES,
    "",
    " 7",
    "+3",
    "\u0663",
    "1_000",
    "1e3",
    "NaN",
    "9999-12-31T23:59:59.999+00:00",
    "9999-12-31T23:59:59-05:00",
    "2026-12-01T09:30:00",
    "not a time",
]
header_values = st.one_of(
    st.sampled_from(
        [None, *HOSTILE_HEADER_TEXTS]
        + [text.encode("utf-8", "surrogatepass") for text in HOSTILE_HEADER_TEXTS]
    ),
    st.integers().map(str),
    out_of_range_millis.map(str),
    lone_surrogates,
    st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(datetime.fromtimestamp, seconds_in_range, st.just(BEHIND_UTC)).map(
        datetime.isoformat
    ),
)
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EARLIER_FAILURE = h.failure_headers(
    [(h.TRACEPARENT, TRACEPARENT), (h.REPLAY_ID, b"17"), (h.REPLAY_COUNT, b"1")],
    error=TransientError("ERP answered 503"),
    source=("revsync.order.created.v1", 3, 41, 1_764_583_200_000),
    consumer="order-sync",
    service="order_sync",
    correlation_id="corr-8015g00000AbCdE",
    now=datetime(2026, 12, 1, 9, 29, tzinfo=UTC),
    due_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
)
"""The headers of a record that failed once already: the background a hostile value sits in."""


def damaged(name: str, value: str | bytes | None, among_earlier: bool = False) -> h.Headers:
    """``name`` holding ``value``, alone or in place of its value in EARLIER_FAILURE."""
    rest = [(key, held) for key, held in EARLIER_FAILURE if key != name] if among_earlier else []
    return [(name, value), *rest]


header_lists = st.builds(
    damaged,
    st.sampled_from(NUMERIC_HEADERS + TIME_HEADERS + TEXT_HEADERS),
    header_values,
    st.booleans(),
)
due_times = st.one_of(
    st.sampled_from([None, datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)]),
    st.builds(datetime.fromtimestamp, seconds_in_range, st.just(UTC)),
)
error_messages = st.one_of(st.sampled_from(["", *LONE_SURROGATES]), st.text(max_size=8))


@HOSTILE
@given(headers=header_lists, due=due_times, message=error_messages)
@example(headers=damaged(h.DUE_AT, str(FIRST_MS_OF_YEAR_10000)), due=None, message="")
@example(headers=damaged(h.DUE_AT, str(FAR_FUTURE_MS)), due=None, message="")
@example(headers=damaged(h.DUE_AT, f"-{FAR_FUTURE_MS}"), due=None, message="")
@example(headers=damaged(h.DUE_AT, TOO_MANY_DIGITS), due=None, message="")
@example(headers=damaged(h.DUE_AT, "soon"), due=None, message="")
@example(headers=damaged(h.ATTEMPTS, TOO_MANY_DIGITS), due=None, message="")
@example(headers=damaged(h.ATTEMPTS, "9" * (DIGIT_LIMIT - 1)), due=None, message="")
@example(headers=damaged(h.ATTEMPTS, "three"), due=None, message="")
@example(headers=damaged(h.ORIGINAL_PARTITION, "\ud800"), due=None, message="")
@example(headers=damaged(h.ORIGINAL_OFFSET, str(FAR_FUTURE_MS)), due=None, message="")
@example(headers=damaged(h.FIRST_FAILURE_AT, "yesterday"), due=None, message="")
@example(headers=damaged(h.CORRELATION_ID, "corr-\udc80"), due=None, message="")
@example(headers=[], due=datetime.max.replace(tzinfo=UTC), message="boom \ud800")
def test_header_parsers_return_a_value_or_refuse_with_malformed_header(
    headers: h.Headers, due: datetime | None, message: str
) -> None:
    def parsed(parse: Callable[[h.Headers], T]) -> T | None:
        value = refused_or(lambda: parse(headers), MalformedHeader)
        if isinstance(value, MalformedHeader):
            assert value.header in NUMERIC_HEADERS + TIME_HEADERS
            assert classify(value) is ErrorClass.DESERIALIZATION
            return None
        return value

    due_at = parsed(h.due_at)
    assert due_at is None or due_at.tzinfo is not None
    # The copy of a failed record carries on what parses and replaces what does not: a record
    # with a damaged header can still be sent to its retry tier or the dead letters.
    failed = h.failure_headers(
        headers,
        error=TransientError(message),
        source=("revsync.order.created.v1", 3, 42, 1_764_583_200_123),
        consumer="order-sync",
        service="order_sync",
        correlation_id=message or None,
        now=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        due_at=due,
    )
    assert all(isinstance(value, bytes) for name, value in failed if name.startswith("revsync."))
    assert h.attempts(failed) == min((parsed(h.attempts) or 0) + 1, INT64_MAX)
    assert (h.due_at(failed) is None) is (due is None)
    for coordinate in (h.original_partition, h.original_offset, h.original_timestamp):
        assert coordinate(failed) is not None
    for moment in (h.first_failure_at, h.last_failure_at):
        assert moment(failed) is not None
        parsed(moment)
    for count in (h.replay_count, h.original_partition, h.original_offset):
        number = parsed(count)
        assert number is None or number >= -1
    parsed(h.original_timestamp)
    # Parked and outbox rows keep headers as base64 JSON; what is not base64 is refused.
    stored = h.to_json(headers)
    assert h.to_json(h.from_json(stored)) == stored
    broken = refused_or(lambda: h.from_json([*stored, ["x", "abc"]]), MalformedHeader)
    assert isinstance(broken, MalformedHeader)
    assert broken.header == "x"
