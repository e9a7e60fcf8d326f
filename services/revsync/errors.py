"""revsync's error taxonomy: every failure is typed, classed, and says what to act on; and
what may be told of any failure where it is kept (dead-letter headers, logs)."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import ValidationError


class ErrorClass(StrEnum):
    """How a failure is handled; recorded on every dead letter."""

    DESERIALIZATION = "deserialization"
    """The bytes are not a revsync event at all (not Confluent-framed, corrupt Avro). Permanent."""
    SCHEMA = "schema"
    """The bytes name a schema the registry does not know, or one the reader cannot resolve."""
    VALIDATION = "validation"
    """A well-formed event whose content breaks the contract's business rules. Permanent."""
    BUSINESS_RULE = "business rule"
    """The event is valid but the business refuses it (credit hold, unknown product). Permanent."""
    DEPENDENCY_NOT_READY = "dependency-not-ready"
    """Something the event needs has not happened yet (the CRM does not know the order yet)."""
    TRANSIENT = "transient"
    """Timeouts, 5xx, 429: the same call may succeed later."""
    UNKNOWN = "unknown"
    """Anything unclassified; treated as permanent so it is looked at."""


class RevsyncError(Exception):
    """Base of every revsync error; ``error_class`` decides retry or dead letter."""

    error_class: ClassVar[ErrorClass] = ErrorClass.UNKNOWN


class ContractError(RevsyncError):
    """The contracts themselves are wrong or missing (catalog, schemas, registry subjects)."""

    error_class = ErrorClass.SCHEMA


class DecodeError(RevsyncError):
    """A consumed record could not become a typed event; says which topic and why."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


class NotConfluentFramed(DecodeError):
    """The value does not start with the Confluent magic byte and a schema id."""

    error_class = ErrorClass.DESERIALIZATION


class CorruptPayload(DecodeError):
    """Framed correctly, but the Avro body cannot be read with its writer schema."""

    error_class = ErrorClass.DESERIALIZATION


class UnknownSchemaId(DecodeError):
    """The schema id in the frame is not in the registry."""

    error_class = ErrorClass.SCHEMA

    def __init__(self, topic: str, schema_id: int) -> None:
        super().__init__(topic, f"schema id {schema_id} is not in the registry")
        self.schema_id = schema_id


class IncompatibleWriterSchema(DecodeError):
    """The writer's schema cannot be resolved to the schema this consumer reads with."""

    error_class = ErrorClass.SCHEMA


class PayloadInvalid(DecodeError):
    """The event decodes but breaks its contract's rules; ``field`` names the first culprit."""

    error_class = ErrorClass.VALIDATION

    def __init__(self, topic: str, field: str, reason: str) -> None:
        super().__init__(topic, f"{field}: {reason}")
        self.field = field


class MalformedInput(RevsyncError, ValueError):
    """Text that is not what it claims to be: not strict JSON, a header value that does not
    parse. Permanent, so a record carrying it is dead-lettered at once; a ValueError too, so
    code written against the standard library's parsers still catches it."""

    error_class = ErrorClass.DESERIALIZATION


class MalformedJson(MalformedInput):
    """Not JSON revsync reads: bytes that are not Unicode, a lone surrogate, NaN or Infinity,
    a number past Python's digit limit or Decimal's range, nesting too deep."""


class MalformedHeader(MalformedInput):
    """A ``revsync.*`` header value that does not parse (not a number, out of range, not a
    time); names the header and shows the start of the value."""

    def __init__(self, header: str, value: str, reason: str) -> None:
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        super().__init__(f"header {header} = {shown!r}: {reason}")
        self.header = header
        self.value = value
        self.reason = reason


class UnencodableEvent(RevsyncError):
    """An event revsync is about to publish does not fit its topic's Avro schema (a value the
    schema cannot carry, a field of the wrong type); says which topic and why. Permanent."""

    error_class = ErrorClass.VALIDATION

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


class TransientError(RevsyncError):
    """A dependency failed in a way that may pass (timeout, 5xx, 429); retried in process,
    then through the consumer's retry tiers. ``retry_after`` (seconds) is honoured."""

    error_class = ErrorClass.TRANSIENT

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DependencyNotReady(RevsyncError):
    """Something the event needs has not happened yet; retried through the tiers, later."""

    error_class = ErrorClass.DEPENDENCY_NOT_READY


class BusinessRuleViolation(RevsyncError):
    """The business refuses the event; dead-lettered at once (retrying cannot help)."""

    error_class = ErrorClass.BUSINESS_RULE


RETRYABLE = frozenset({ErrorClass.TRANSIENT, ErrorClass.DEPENDENCY_NOT_READY})


def classify(error: BaseException) -> ErrorClass:
    """The class of any exception: revsync's own know theirs, anything else is unknown."""
    return error.error_class if isinstance(error, RevsyncError) else ErrorClass.UNKNOWN


VALUE_QUOTING = frozenset(
    {
        "value_error",
        "assertion_error",
        "union_tag_invalid",
        "get_attribute_error",
        "iteration_error",
        "mapping_type",
        "datetime_object_invalid",
    }
)
"""pydantic error types whose message may quote the value refused: a validator's own
ValueError or assertion, and the few of pydantic's own that repeat what they were given."""


def invalid_fields(error: ValidationError) -> list[tuple[str, str]]:
    """Each field ``error`` refused, as a dotted path, and why, without its value."""
    return refused_fields(
        error.errors(include_url=False, include_context=False, include_input=False)
    )


def refused_fields(details: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Each field of pydantic's error ``details`` (as ``errors()`` lists them), as a dotted
    path, and why, without its value. pydantic's own reasons name the rule broken (a bound, a
    pattern, the choices); a message that may quote the value (see :data:`VALUE_QUOTING`) is
    replaced by its error type."""
    return [
        (
            ".".join(str(part) for part in detail["loc"]),
            f"not a valid value ({detail['type']})"
            if detail["type"] in VALUE_QUOTING
            else str(detail["msg"]),
        )
        for detail in details
    ]


def described(error: BaseException) -> str:
    """What may be told of ``error`` where it is kept or shown: failure headers, logs.

    revsync's own errors tell it all: their text names codes, statuses and fields, never a
    foreign body or a payload value. A pydantic ValidationError tells its fields and why (its
    own text quotes every input). Any other exception tells only its type: what a library, a
    database or the standard library writes may quote the data it failed on.
    """
    if isinstance(error, RevsyncError):
        return str(error)
    if isinstance(error, ValidationError):
        fields = "; ".join(f"{field or error.title}: {why}" for field, why in invalid_fields(error))
        return f"{error.title}: {fields}"
    return f"{type(error).__name__} (its text is not kept: it may quote the data it failed on)"


CAUSED = "\nThe above exception was the direct cause of the following exception:\n\n"
DURING = "\nDuring handling of the above exception, another exception occurred:\n\n"


def described_traceback(error: BaseException) -> str:
    """``error``'s traceback with those of its causes, as Python prints them but each
    exception told by :func:`described`: the usual last line of each is the exception's own
    text, which may quote the data it failed on. Its frames' source lines are code."""
    # Newest first, each with how the exception after it (its cause or context) led to it.
    chain: list[tuple[BaseException, str]] = []
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            chain.append((current, CAUSED))
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append((current, DURING))
            current = current.__context__
        else:
            chain.append((current, ""))
            current = None
    parts: list[str] = []
    for failure, link in reversed(chain):
        kind = type(failure)
        parts.append(link)
        parts.append(
            "Traceback (most recent call last):\n"
            + "".join(traceback.format_tb(failure.__traceback__))
            + f"{kind.__module__}.{kind.__qualname__}: {described(failure)}\n"
        )
    return "".join(parts)
