"""Typed events: business validation, the Avro form, and agreement with the .avsc contracts."""

from __future__ import annotations

import io
import types
import typing
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import fastavro
import pytest
from pydantic import AwareDatetime, BaseModel, ValidationError

from contract_fixtures import SCHEMAS_DIR
from revsync.contracts.catalog import load_catalog
from revsync.contracts.events import (
    EVENT_TYPES,
    EVENTS_BY_SCHEMA,
    Event,
    InvoicePosted,
    OrderCreated,
    OrderRejected,
    PaymentReceived,
    ShipmentConfirmed,
)
from revsync.contracts.schemas import SchemaRepository
from samples import sample_envelope, sample_event, sample_events, sample_order_line

SCHEMAS = SchemaRepository(SCHEMAS_DIR)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_event_survives_its_avro_form(event_type: type[Event]) -> None:
    event = sample_event(event_type)
    schema = fastavro.parse_schema(SCHEMAS.expanded(event_type.schema_name))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, event.to_avro())
    buffer.seek(0)
    datum = fastavro.schemaless_reader(buffer, schema, None)
    assert isinstance(datum, dict)
    assert event_type.from_avro(datum) == event


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_model_agrees_with_its_avsc_field_by_field(event_type: type[Event]) -> None:
    assert python_shape(event_type) == avro_shape(SCHEMAS.expanded(event_type.schema_name))


def test_every_catalog_topic_has_a_model_with_its_event_type() -> None:
    for topic in load_catalog(SCHEMAS_DIR).avro_topics:
        assert EVENTS_BY_SCHEMA[topic.avro_schema].event_type == topic.event_type


MONEY_LIMIT = Decimal("99999999999999.9999")
"""The largest decimal(18,4)."""
LINE_AT_THE_MONEY_LIMIT = {
    "quantity": MONEY_LIMIT,
    "unit_price": MONEY_LIMIT,
    "discount_amount": Decimal(0),
    "line_total": MONEY_LIMIT,
}
FIVE_HOURS_BEHIND = timezone(-timedelta(hours=5))


def order(**overrides: object) -> OrderCreated:
    return sample_event(OrderCreated, **overrides)


@pytest.mark.parametrize(
    ("build", "field", "says"),
    [
        (lambda: order(currency="USX"), "currency", "not an ISO 4217 currency code"),
        (lambda: order(lines=[]), "lines", "at least 1 item"),
        (
            lambda: order(lines=[sample_order_line(1, quantity=Decimal(0))]),
            "lines.0.quantity",
            "greater than 0",
        ),
        (
            lambda: order(lines=[sample_order_line(1, tax_amount=Decimal("-1"))]),
            "lines.0.tax_amount",
            "greater than or equal to 0",
        ),
        (
            lambda: order(lines=[sample_order_line(1, line_total=Decimal("600"))]),
            "lines.0",
            "line_total 600 is not quantity * unit_price - discount_amount",
        ),
        (
            lambda: order(lines=[sample_order_line(1, discount_amount=Decimal("700"))]),
            "lines.0",
            "discount_amount 700 exceeds quantity * unit_price",
        ),
        (
            lambda: order(lines=[sample_order_line(1, unit_price=Decimal("0.00001"))]),
            "lines.0.unit_price",
            "no more than 4 decimal places",
        ),
        (lambda: order(subtotal=Decimal("1.0000")), "", "subtotal 1.0000 is not the lines' sum"),
        (lambda: order(grand_total=Decimal("1180")), "", "grand_total 1180 is not subtotal"),
        (
            lambda: order(
                lines=[sample_order_line(1), sample_order_line(1)],
                subtotal=Decimal("1180"),
                discount_total=Decimal("19.94"),
                tax_total=Decimal("228"),
                grand_total=Decimal("1408"),
            ),
            "",
            "line numbers repeat",
        ),
        (
            lambda: order(shipping_address={"street": "x", "city": "y", "country_code": "ZZ"}),
            "shipping_address.country_code",
            "not an ISO 3166-1 alpha-2 country code",
        ),
        (
            lambda: order(ordered_at=datetime(2026, 12, 1, 9, 30)),
            "ordered_at",
            "timezone info",
        ),
        (
            lambda: sample_event(InvoicePosted, amount_due=Decimal("2000")),
            "",
            "amount_due 2000 exceeds grand_total",
        ),
        (
            lambda: sample_event(InvoicePosted, due_date=date(2026, 11, 1)),
            "",
            "due_date 2026-11-01 is before posting_date",
        ),
        (
            lambda: sample_event(PaymentReceived, amount=Decimal(0)),
            "amount",
            "greater than 0",
        ),
        (lambda: sample_event(ShipmentConfirmed, lines=[]), "lines", "at least 1 item"),
        # Hostile values the Avro contract cannot carry are refused here, naming the field.
        (
            lambda: order(lines=[sample_order_line(1, **LINE_AT_THE_MONEY_LIMIT)]),
            "lines.0",
            "line_total 99999999999999.9999 is not quantity * unit_price - discount_amount = "
            "9999999999999999980000000000.0000",
        ),
        (
            lambda: order(ordered_at=datetime(9999, 12, 31, 23, 0, tzinfo=FIVE_HOURS_BEHIND)),
            "ordered_at",
            "outside the years 1 to 9999 in UTC",
        ),
        (
            lambda: order(purchase_order_number="PO-\ud800"),
            "purchase_order_number",
            "a lone surrogate",
        ),
        (
            lambda: sample_event(OrderRejected, offending_skus=["SKU-\udfff"]),
            "offending_skus.0",
            "a lone surrogate",
        ),
        (
            lambda: order(lines=[sample_order_line(2**31)]),
            "lines.0.line_number",
            "less than or equal to 2147483647",
        ),
        (
            lambda: sample_envelope(OrderCreated.event_type, schema_version=2**31),
            "schema_version",
            "less than or equal to 2147483647",
        ),
        (
            lambda: sample_event(ShipmentConfirmed, tracking_number=""),
            "tracking_number",
            "at least 1 character",
        ),
    ],
)
def test_business_rules_reject_with_the_field_named(
    build: typing.Callable[[], Event], field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        build()
    first = raised.value.errors()[0]
    assert ".".join(str(part) for part in first["loc"]) == field
    assert says in first["msg"]


def test_envelope_event_type_must_match_the_event() -> None:
    fields = {"envelope": sample_event(PaymentReceived).envelope, **sample_events()[OrderCreated]}
    with pytest.raises(ValidationError, match=r"expected 'io\.revsync\.order\.created'"):
        OrderCreated.model_validate(fields)


def test_timestamps_are_kept_in_utc() -> None:
    berlin = datetime(2026, 12, 1, 10, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    ordered_at = order(ordered_at=berlin).ordered_at
    assert ordered_at.utcoffset() == timedelta(0)
    assert (ordered_at.hour, ordered_at.minute) == (9, 30)


# --- the shapes compared by the agreement test ---------------------------------------------

LOGICAL = {
    "uuid": "uuid",
    "timestamp-millis": "timestamp",
    "timestamp-micros": "timestamp",
    "date": "date",
    "decimal": "decimal",
}


def avro_shape(node: Any, named: dict[str, Any] | None = None) -> Any:
    named = {} if named is None else named
    if isinstance(node, str):
        return named.get(node, node)
    if isinstance(node, list):
        assert node[0] == "null", f"only [null, T] unions are used: {node}"
        assert len(node) == 2, f"only [null, T] unions are used: {node}"
        return ("optional", avro_shape(node[1], named))
    if "logicalType" in node:
        return LOGICAL[node["logicalType"]]
    kind = node["type"]
    if kind == "record":
        fields = tuple((f["name"], avro_shape(f["type"], named)) for f in node["fields"])
        shape: Any = ("record", node["name"], fields)
    elif kind == "enum":
        shape = ("enum", node["name"], tuple(node["symbols"]))
    elif kind == "array":
        return ("array", avro_shape(node["items"], named))
    else:
        return avro_shape(kind, named)
    named[f"{node['namespace']}.{node['name']}"] = shape
    return shape


def python_shape(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # a constrained type: its shape is its base type's
        return python_shape(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return ("optional", python_shape(inner))
    if origin is list:
        return ("array", python_shape(typing.get_args(annotation)[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = tuple(
            (name, python_shape(info.annotation)) for name, info in annotation.model_fields.items()
        )
        return ("record", annotation.__name__, fields)
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return ("enum", annotation.__name__, tuple(member.value for member in annotation))
    simple = {
        str: "string",
        int: "int",
        uuid.UUID: "uuid",
        datetime: "timestamp",
        AwareDatetime: "timestamp",
        date: "date",
        Decimal: "decimal",
        bool: "boolean",
    }
    return simple[annotation]
