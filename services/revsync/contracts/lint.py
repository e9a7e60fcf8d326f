"""``revsync schemas lint``: the house rules for event contracts, each finding as file:field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from revsync.contracts.catalog import Catalog
from revsync.contracts.schemas import (
    NAMED_KINDS,
    ReleaseRecord,
    SchemaError,
    SchemaRepository,
    full_name,
    namespace_of,
)

NAMESPACE = "io.revsync.events"
PASCAL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# Field names that carry money; they must be Avro decimals, never floats.
MONEY = re.compile(r"(^|_)(amount|total|subtotal|price|balance|cost|fee)$")
TIMESTAMP_TYPES = frozenset({"timestamp-millis", "timestamp-micros"})


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.field}: {self.message}"


def lint(catalog: Catalog, schemas: SchemaRepository, releases: ReleaseRecord) -> list[Finding]:
    findings: list[Finding] = []
    for name, definition in schemas.definitions.items():
        file = schemas.files[name].name
        if file != f"{name}.avsc":
            findings.append(Finding(file, name, f"file must be named {name}.avsc"))
        findings += _named_type(file, definition, None, "")
    for topic in catalog.avro_topics:
        if topic.avro_schema not in schemas.definitions:
            findings.append(
                Finding("catalog.yaml", topic.name, f"schema {topic.avro_schema} has no .avsc")
            )
            continue
        file = schemas.files[topic.avro_schema].name
        findings += _fields_added_without_default(
            file, topic.value_subject, schemas, releases, topic.avro_schema
        )
    return sorted(set(findings))


def _named_type(
    file: str, definition: dict[str, Any], namespace: str | None, path: str
) -> Iterator[Finding]:
    kind = definition["type"]
    name = definition["name"]
    here = path or name
    # The namespace Avro gives the type: its own, the enclosing type's, or none at all.
    space = namespace_of(full_name(definition, namespace))
    if space is None:
        yield Finding(file, here, f"has no namespace; namespace must be {NAMESPACE}")
    elif space != NAMESPACE:
        yield Finding(file, here, f"namespace must be {NAMESPACE}")
    if not PASCAL_CASE.match(name):
        yield Finding(file, here, f"type name {name!r} must be PascalCase")
    if not str(definition.get("doc", "")).strip():
        yield Finding(file, here, "needs a doc")
    if kind == "enum":
        yield from _enum(file, definition, here)
    if kind in ("record", "error"):
        for field in definition["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            yield from _field(file, field, space, field_path)


def _enum(file: str, definition: dict[str, Any], path: str) -> Iterator[Finding]:
    symbols = definition["symbols"]
    for symbol in symbols:
        if not UPPER_SNAKE.match(symbol):
            yield Finding(file, path, f"enum symbol {symbol!r} must be UPPER_SNAKE_CASE")
    if definition.get("default") not in symbols:
        yield Finding(
            file, path, "enum needs a default symbol, so readers survive symbols added later"
        )


def _field(file: str, field: dict[str, Any], namespace: str | None, path: str) -> Iterator[Finding]:
    name = field["name"]
    if not SNAKE_CASE.match(name):
        yield Finding(file, path, f"field name {name!r} must be snake_case")
    if not str(field.get("doc", "")).strip():
        yield Finding(file, path, "needs a doc")
    branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
    optional = len(branches) > 1 and "null" in branches
    if optional and (branches[0] != "null" or field.get("default", ...) is not None):
        yield Finding(file, path, 'an optional field is ["null", T] with "default": null')
    values = [branch for branch in branches if branch != "null"]
    logical = {branch.get("logicalType") for branch in values if isinstance(branch, dict)}
    if MONEY.search(name) and "decimal" not in logical:
        yield Finding(file, path, "money must be an Avro decimal (bytes, logicalType decimal)")
    if name.endswith("_at") and not logical & TIMESTAMP_TYPES:
        yield Finding(file, path, "an _at field is a UTC timestamp-millis or timestamp-micros")
    if name.endswith("_date") and "date" not in logical:
        yield Finding(file, path, "a _date field is an Avro date")
    for branch in values:
        yield from _nested(file, branch, namespace, path)


def _nested(file: str, node: Any, namespace: str | None, path: str) -> Iterator[Finding]:
    if not isinstance(node, dict):
        return
    if node.get("type") in NAMED_KINDS:
        yield from _named_type(file, node, namespace, f"{path}<{node['name']}>")
    elif node.get("type") == "array":
        yield from _nested(file, node["items"], namespace, path)
    elif node.get("type") == "map":
        yield from _nested(file, node["values"], namespace, path)


def _fields_added_without_default(
    file: str, subject: str, schemas: SchemaRepository, releases: ReleaseRecord, name: str
) -> Iterator[Finding]:
    history = releases.versions(subject)
    if not history:
        return
    released = _field_paths(json.loads(history[-1]), "")
    try:
        current = schemas.expanded(name)
    except SchemaError as error:  # a type it uses is not defined: a finding, not a crash
        yield Finding(file, name, str(error))
        return
    for path, field in _field_paths(current, "").items():
        if path not in released and "default" not in field:
            yield Finding(
                file,
                path.lstrip("."),
                f"added since {subject} v{len(history)}; a new field needs a default",
            )


def _field_paths(node: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """Every record field reachable from ``node``, by dotted path."""
    paths: dict[str, dict[str, Any]] = {}
    if isinstance(node, list):
        for branch in node:
            paths |= _field_paths(branch, prefix)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "error"):
            for field in node["fields"]:
                path = f"{prefix}.{field['name']}"
                paths[path] = field
                paths |= _field_paths(field["type"], path)
        elif node.get("type") == "array":
            paths |= _field_paths(node["items"], prefix)
        elif node.get("type") == "map":
            paths |= _field_paths(node["values"], prefix)
    return paths
