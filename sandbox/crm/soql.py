"""The SOQL subset the simulated org answers:
``SELECT f1, f2 FROM SObject [WHERE f op literal [AND ...]] [ORDER BY f [ASC|DESC]] [LIMIT n]``,
with ops ``= != < <= > >= IN (...)`` and string, number, date, datetime, boolean and null
literals."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sandbox.crm.model import FieldError, Kind, SObjectType, sobject_type

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>'(?:[^'\\]|\\.)*')
    |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    |(?P<date>\d{4}-\d{2}-\d{2})
    |(?P<number>-?\d+(?:\.\d+)?)
    |(?P<op>!=|<>|<=|>=|=|<|>)
    |(?P<punct>[(),])
    |(?P<word>[A-Za-z_]\w*)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    """One of the comparison operators, or ``IN``."""
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    sobject: SObjectType
    fields: tuple[str, ...]
    conditions: tuple[Condition, ...]
    order_by: tuple[str, bool] | None
    """(field, descending)."""
    limit: int | None

    def run(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The selected fields of the matching records, ordered and limited."""
        kinds = {name: spec.kind for name, spec in self.sobject.fields.items()}
        matched = [r for r in records if all(_holds(c, r, kinds[c.field]) for c in self.conditions)]
        if self.order_by is not None:
            name, descending = self.order_by
            # Salesforce sorts nulls first ascending, last descending.
            matched.sort(
                key=lambda r: (r[name] is not None, _comparable(r[name], kinds[name])),
                reverse=descending,
            )
        if self.limit is not None:
            matched = matched[: self.limit]
        return [{name: record[name] for name in self.fields} for record in matched]


class _Tokens:
    def __init__(self, soql: str) -> None:
        self.items: list[tuple[str, str]] = []
        position = 0
        text = soql.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                raise _malformed(f"unexpected token at '{text[position : position + 20]}'")
            self.items.append((match.lastgroup, match.group(match.lastgroup)))
            position = match.end()
        self.position = 0

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.position] if self.position < len(self.items) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _malformed("unexpected end of query")
        self.position += 1
        return token

    def keyword(self, *words: str) -> str | None:
        """Consume the next token if it is one of ``words`` (any case)."""
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].upper() in words:
            self.position += 1
            return token[1].upper()
        return None

    def expect(self, *words: str) -> None:
        if self.keyword(*words) is None:
            raise _malformed(f"expected {' '.join(words)} near {self.peek()}")

    def name(self) -> str:
        kind, value = self.take()
        if kind != "word":
            raise _malformed(f"expected a field name, got '{value}'")
        return value

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token == ("punct", char):
            self.position += 1
            return True
        return False


def parse(soql: str) -> Query:
    """A parsed query; raises FieldError (MALFORMED_QUERY, INVALID_TYPE, INVALID_FIELD)."""
    tokens = _Tokens(soql)
    tokens.expect("SELECT")
    fields = [tokens.name()]
    while tokens.punct(","):
        fields.append(tokens.name())
    tokens.expect("FROM")
    name = tokens.name()
    try:
        sobject = sobject_type(name)
    except FieldError:
        raise FieldError("INVALID_TYPE", f"sObject type '{name}' is not supported.") from None
    conditions: list[Condition] = []
    if tokens.keyword("WHERE"):
        conditions.append(_condition(tokens))
        while tokens.keyword("AND"):
            conditions.append(_condition(tokens))
    order_by = None
    if tokens.keyword("ORDER"):
        tokens.expect("BY")
        order_field = tokens.name()
        order_by = (order_field, tokens.keyword("ASC", "DESC") == "DESC")
    limit = None
    if tokens.keyword("LIMIT"):
        kind, value = tokens.take()
        if kind != "number" or not value.isdigit():
            raise _malformed(f"LIMIT needs a whole number, got '{value}'")
        limit = int(value)
    extra = tokens.peek()
    if extra is not None:
        raise _malformed(f"unexpected '{extra[1]}'")
    sorted_by = [order_by[0]] if order_by else []
    sobject.check_fields(fields + [c.field for c in conditions] + sorted_by)
    return Query(sobject, tuple(fields), tuple(conditions), order_by, limit)


def _condition(tokens: _Tokens) -> Condition:
    name = tokens.name()
    if tokens.keyword("IN"):
        if not tokens.punct("("):
            raise _malformed("IN needs a parenthesised list")
        values = [_literal(tokens)]
        while tokens.punct(","):
            values.append(_literal(tokens))
        if not tokens.punct(")"):
            raise _malformed("unclosed IN list")
        return Condition(name, "IN", tuple(values))
    kind, op = tokens.take()
    if kind != "op":
        raise _malformed(f"expected an operator after {name}, got '{op}'")
    return Condition(name, op, (_literal(tokens),))


def _literal(tokens: _Tokens) -> Any:
    kind, value = tokens.take()
    match kind:
        case "string":
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        case "number":
            return Decimal(value)
        case "date":
            return date.fromisoformat(value)
        case "datetime":
            return datetime.fromisoformat(value)
        case "word" if value.lower() in ("true", "false"):
            return value.lower() == "true"
        case "word" if value.lower() == "null":
            return None
    raise _malformed(f"expected a literal, got '{value}'")


def _comparable(value: Any, kind: Kind) -> Any:
    """A stored value (or a literal) in a form that compares correctly for its field kind."""
    if value is None:
        return None
    if kind is Kind.DATETIME and isinstance(value, str):
        return datetime.fromisoformat(value)
    if kind is Kind.DATE and isinstance(value, str):
        return date.fromisoformat(value)
    if kind is Kind.NUMBER and not isinstance(value, Decimal):
        return Decimal(value)
    return value


def _holds(condition: Condition, record: Mapping[str, Any], kind: Kind) -> bool:
    stored = _comparable(record[condition.field], kind)
    try:
        wanted = [_comparable(value, kind) for value in condition.values]
    except (TypeError, ValueError, ArithmeticError):
        raise _malformed(f"{condition.values} does not suit {condition.field}") from None
    if condition.op == "IN":
        return stored in wanted
    literal = wanted[0]
    if stored is None or literal is None:
        return (
            _COMPARE[condition.op](stored, literal) if condition.op in ("=", "!=", "<>") else False
        )
    try:
        return _COMPARE[condition.op](stored, literal)
    except TypeError:
        raise _malformed(f"{condition.values[0]!r} does not suit {condition.field}") from None


def _malformed(reason: str) -> FieldError:
    return FieldError("MALFORMED_QUERY", reason)
