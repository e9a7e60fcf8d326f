"""Typed events to and from Confluent wire format, through the schema registry.

Nothing auto-registers: registering is the governance step (``revsync schemas register``), and
a subject missing from the registry stops a service at start-up, naming it.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from pydantic import ValidationError

from revsync.contracts.catalog import Catalog, TopicSpec
from revsync.contracts.events import EVENTS_BY_SCHEMA, Event
from revsync.contracts.schemas import SchemaRepository
from revsync.errors import (
    ContractError,
    CorruptPayload,
    IncompatibleWriterSchema,
    NotConfluentFramed,
    PayloadInvalid,
    TransientError,
    UnencodableEvent,
    UnknownSchemaId,
    invalid_fields,
)

MAGIC_BYTE = 0
FRAME = struct.Struct(">bI")
# For confluent-kafka's own serializers (the stack check's, a test's stand-in for another
# producer): subjects follow TopicNameStrategy (<topic>-value). Said explicitly: its default
# first asks the registry for topic "associations", an API other registries do not serve.
TOPIC_NAME_STRATEGY = {"subject.name.strategy.type": "TOPIC"}
# Registry error codes (Confluent API, also spoken by Apicurio's ccompat layer).
SUBJECT_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40403


class RegistryUnavailable(TransientError):
    """The registry did not answer (down, timing out, 5xx): the record is fine, and the
    consumer rewinds its batch to try again rather than dead-letter it."""


def _unreachable(error: BaseException) -> bool:
    """A transport failure of the registry's HTTP client, whichever client library it is."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError | TimeoutError) or module in ("httpx", "httpx2", "httpcore")


class SubjectNotRegistered(ContractError):
    """A topic's subject (or its current schema) is not in the registry."""


@dataclass(frozen=True)
class _TopicCodec:
    topic: TopicSpec
    model: type[Event]
    schema_id: int
    schema: Any
    """The topic's schema as fastavro parsed it: what revsync writes, and reads into."""
    frame: bytes = field(repr=False)
    """The magic byte and schema id every value revsync writes begins with."""


class EventSerde:
    """Encodes and decodes the events of the catalog's topics; one per process.

    Values are written with the schema id revsync registered for their topic. A value read
    with that id is read with the topic's own parsed schema; one with another id is read
    with its writer's schema, fetched once from the registry and kept, resolved to the
    topic's.
    """

    def __init__(
        self, registry: SchemaRegistryClient, catalog: Catalog, schemas: SchemaRepository
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self.schemas = schemas
        self._codecs: dict[str, _TopicCodec] = {}
        self._writers: dict[int, Any] = {}

    def prepare(self, topics: list[str]) -> None:
        """Look up every topic's registered schema now, so a missing one fails at start-up."""
        missing = []
        for name in topics:
            try:
                self._codec(name)
            except SubjectNotRegistered as error:
                missing.append(str(error))
        if missing:
            raise SubjectNotRegistered("; ".join(missing))

    def serialize(self, topic: str, event: Event) -> bytes:
        """An event in wire format; a value its schema cannot carry raises UnencodableEvent.
        A validated event always fits: only one changed past validation (``model_copy``)
        can hold such a value."""
        codec = self._codec(topic)
        if not isinstance(event, codec.model):
            raise TypeError(f"{topic} carries {codec.model.__name__}, not {type(event).__name__}")
        buffer = io.BytesIO(codec.frame)
        buffer.seek(FRAME.size)
        try:
            schemaless_writer(buffer, codec.schema, event.to_avro())
        # fastavro's refusals: out of range (OverflowError), wrong type or scale, not UTF-8.
        except (ValueError, TypeError, ArithmeticError, struct.error) as error:
            # By the refusal's type: fastavro's text quotes the value that did not fit.
            raise UnencodableEvent(
                topic,
                f"{codec.model.__name__} does not fit {codec.topic.avro_schema} "
                f"({type(error).__name__})",
            ) from None
        return buffer.getvalue()

    def deserialize(self, topic: str, data: bytes | None) -> Event:
        """Bytes to a validated event, or the typed error that says what is wrong with them."""
        codec = self._codec(topic)
        if data is None or len(data) < FRAME.size or data[0] != MAGIC_BYTE:
            # Told by its size and first byte only: the bytes may be a payload in clear.
            told = (
                "no value"
                if data is None
                else f"{len(data)} bytes" + (f", first byte 0x{data[0]:02x}" if data else "")
            )
            raise NotConfluentFramed(topic, f"no Confluent frame (magic byte 0, schema id): {told}")
        schema_id = FRAME.unpack_from(data)[1]
        body = io.BytesIO(data)
        body.seek(FRAME.size)
        try:
            if schema_id == codec.schema_id:
                datum = schemaless_reader(body, codec.schema, None)
            else:
                datum = schemaless_reader(body, self._writer(topic, schema_id), codec.schema)
        except SchemaResolutionError as error:
            raise IncompatibleWriterSchema(
                topic,
                f"writer schema id {schema_id} does not resolve to "
                f"{codec.topic.avro_schema}: {error}",
            ) from None
        # ArithmeticError: a long, int or decimal past what Python's datetime, date or Decimal
        # holds (a timestamp after 9999, a date of 2^31 days) is read as an OverflowError.
        except (EOFError, ValueError, IndexError, struct.error, ArithmeticError) as error:
            raise CorruptPayload(
                topic, f"Avro body unreadable with writer schema id {schema_id}: {error}"
            ) from None
        if not isinstance(datum, dict):
            raise IncompatibleWriterSchema(topic, f"schema id {schema_id} is not a record")
        try:
            return codec.model.from_avro(datum)
        except ValidationError as error:
            # pydantic's reason when it names the rule broken; a validator's own message may
            # quote the value, so then its type only (invalid_fields).
            field, reason = invalid_fields(error)[0]
            raise PayloadInvalid(topic, field or codec.model.__name__, reason) from None

    def _writer(self, topic: str, schema_id: int) -> Any:
        """The parsed writer schema of ``schema_id``, from the registry once."""
        parsed = self._writers.get(schema_id)
        if parsed is not None:
            return parsed
        try:
            schema = self.registry.get_schema(schema_id)
            named: dict[str, Any] = {}
            for reference in schema.references or ():
                referenced = self.registry.get_version(
                    str(reference.subject), reference.version or "latest"
                )
                parse_schema(json.loads(str(referenced.schema.schema_str)), named_schemas=named)
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise UnknownSchemaId(topic, schema_id) from None
            raise RegistryUnavailable(f"schema id {schema_id}: {error}") from error
        except Exception as error:
            if _unreachable(error):
                raise RegistryUnavailable(f"schema id {schema_id}: {error!r}") from error
            raise
        if (schema.schema_type or "AVRO") != "AVRO":
            raise IncompatibleWriterSchema(
                topic, f"schema id {schema_id} is {schema.schema_type}, not Avro"
            )
        try:
            parsed = parse_schema(json.loads(str(schema.schema_str)), named_schemas=named)
        except (ValueError, TypeError, KeyError) as error:
            raise IncompatibleWriterSchema(
                topic, f"schema id {schema_id} is not a valid Avro schema: {error}"
            ) from None
        self._writers[schema_id] = parsed
        return parsed

    def _codec(self, name: str) -> _TopicCodec:
        codec = self._codecs.get(name)
        if codec is None:
            codec = self._codecs[name] = self._build(self.catalog.topic(name))
        return codec

    def _build(self, topic: TopicSpec) -> _TopicCodec:
        schema_json = self.schemas.expanded_json(topic.avro_schema)
        try:
            registered = self.registry.lookup_schema(
                topic.value_subject, Schema(schema_json, "AVRO")
            )
        except SchemaRegistryError as error:
            if error.error_code in (SUBJECT_NOT_FOUND, SCHEMA_NOT_FOUND):
                raise SubjectNotRegistered(
                    f"subject {topic.value_subject} has no registered version matching "
                    f"{topic.avro_schema}; register it first "
                    "(revsync schemas register)"
                ) from None
            raise RegistryUnavailable(f"{topic.value_subject}: {error}") from error
        except Exception as error:
            if _unreachable(error):
                raise RegistryUnavailable(f"{topic.value_subject}: {error!r}") from error
            raise
        assert registered.schema_id is not None
        return _TopicCodec(
            topic=topic,
            model=EVENTS_BY_SCHEMA[topic.avro_schema],
            schema_id=registered.schema_id,
            schema=parse_schema(json.loads(schema_json)),
            frame=FRAME.pack(MAGIC_BYTE, registered.schema_id),
        )
