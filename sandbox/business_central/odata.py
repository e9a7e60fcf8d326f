"""The OData v4 conventions Business Central's API speaks, as far as the simulator needs them:
``$filter`` expressions turned into SQL over a whitelist of fields, weak ETags, exact decimal
numbers in JSON, and BC's error bodies."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sandbox.http import HttpFailure

TOKEN = re.compile(
    r"\s*(?:(?P<lparen>\()|(?P<rparen>\))|(?P<string>'(?:[^']|'')*')"
    r"|(?P<word>[A-Za-z0-9_.:+\-/@]+))"
)
COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
NUMBER = re.compile(r"-?\d+(\.\d+)?")
_DECIMAL_MARK = "\x00decimal:"


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> HttpFailure:
    """A failure answered with BC's error body ``{"error": {"code", "message"}}``."""
    return HttpFailure(status, {"error": {"code": code, "message": message}}, headers)


def bad_request(message: str) -> HttpFailure:
    return error(400, "BadRequest", message)


def not_found(what: str) -> HttpFailure:
    return error(404, "BadRequest_NotFound", f"The {what} does not exist.")


@dataclass(frozen=True)
class Field:
    """A field of an entity ``$filter`` may name: its SQL expression and its kind
    (``text``, ``number``, ``datetime``, ``date``, ``bool``)."""

    expression: str
    kind: str = "text"


def filter_sql(text: str, fields: Mapping[str, Field]) -> tuple[str, dict[str, Any]]:
    """``$filter`` as a SQL condition with its named parameters: comparisons (``eq``, ``ne``,
    ``gt``, ``ge``, ``lt``, ``le``) of a field with a literal, joined by ``and``/``or``,
    grouped by parentheses, negated by ``not``. A field or form outside ``fields`` is a 400,
    as BC answers it. Field expressions come from ``fields`` alone, never from the text."""
    tokens = _tokens(text)
    parameters: dict[str, Any] = {}
    position = 0

    def peek() -> tuple[str, str] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal position
        if position >= len(tokens):
            raise bad_request("The $filter expression ends too early.")
        position += 1
        return tokens[position - 1]

    def disjunction() -> str:
        parts = [conjunction()]
        while peek() == ("word", "or"):
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction() -> str:
        parts = [term()]
        while peek() == ("word", "and"):
            take()
            parts.append(term())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def term() -> str:
        kind, value = take()
        if kind == "lparen":
            inner = disjunction()
            if take()[0] != "rparen":
                raise bad_request("A parenthesis in $filter is not closed.")
            return inner
        if (kind, value) == ("word", "not"):
            return f"NOT ({term()})"
        if kind != "word" or value not in fields:
            raise bad_request(f"Could not find a property named '{value}' on this entity.")
        field = fields[value]
        operator_kind, operator = take()
        if operator_kind != "word" or operator not in COMPARISONS:
            raise bad_request(f"The operator '{operator}' is not supported in $filter.")
        literal_kind, literal = take()
        if (literal_kind, literal) == ("word", "null"):
            if operator not in ("eq", "ne"):
                raise bad_request("null compares only with eq and ne.")
            return f"({field.expression} IS {'' if operator == 'eq' else 'NOT '}NULL)"
        name = f"filter_{len(parameters)}"
        parameters[name] = _literal(field, literal_kind, literal)
        return f"({field.expression} {COMPARISONS[operator]} %({name})s)"

    condition = disjunction()
    if position != len(tokens):
        raise bad_request("The $filter expression has text left over.")
    return condition, parameters


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = TOKEN.match(text, at)
        if match is None:
            raise bad_request("The $filter expression is malformed.")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        at = match.end()
    return tokens


def _literal(field: Field, kind: str, literal: str) -> Any:
    if field.kind == "text":
        if kind != "string":
            # BC accepts a guid without quotes; anything else is a type error.
            if re.fullmatch(r"[0-9a-fA-F-]{36}", literal):
                return literal
            raise bad_request(f"A text value in $filter is quoted: {literal}.")
        return literal[1:-1].replace("''", "'")
    if kind == "string":
        raise bad_request("A quoted value in $filter compares with text fields only.")
    if field.kind == "datetime":
        if not DATETIME.fullmatch(literal):
            raise bad_request("A datetime in $filter is ISO 8601 with a zone.")
        return datetime.fromisoformat(literal.replace("Z", "+00:00"))
    if field.kind == "date":
        if not DATE.fullmatch(literal):
            raise bad_request("A date in $filter is YYYY-MM-DD.")
        return datetime.fromisoformat(literal).date()
    if field.kind == "bool":
        if literal not in ("true", "false"):
            raise bad_request("A boolean in $filter is true or false.")
        return literal == "true"
    if not NUMBER.fullmatch(literal):
        raise bad_request("A number in $filter is digits.")
    return Decimal(literal)


def timestamp(value: datetime) -> str:
    """A ``lastModifiedDateTime``: UTC, milliseconds, ``Z``."""
    moment = value.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def etag(*parts: object) -> str:
    """A weak ETag of a record's version, in BC's form (``W/"JzE..."``)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]
    inner = base64.b64encode(f"20;{digest};".encode()).decode()
    return f'W/"{inner}"'


def matches_etag(given: str | None, current: str) -> bool:
    """Whether an ``If-Match`` header allows a write to a record at ``current``."""
    if given is None:
        raise bad_request("An If-Match header is required to change or delete this record.")
    return given.strip() in ("*", current)


def dumps(body: Any) -> bytes:
    """JSON with decimals written as exact numbers, as BC writes amounts."""

    def mark(value: object) -> str:
        if isinstance(value, Decimal):
            return _DECIMAL_MARK + format(value, "f")
        raise TypeError(f"{type(value).__name__} is not JSON")

    text = json.dumps(body, default=mark)
    return re.sub(r'"\\u0000decimal:(-?[0-9.]+)"', r"\1", text).encode()


def loads(raw: bytes) -> Any:
    """JSON with every number that has a fraction read as an exact decimal."""
    return json.loads(raw, parse_float=Decimal)
