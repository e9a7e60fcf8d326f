"""The Avro schemas of ``schemas/avro``: loading, expansion into self-contained schemas, the
release record, and the compatibility check against every released version."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.errors import AvroException
from avro.schema import Schema as AvroSchema
from avro.schema import parse as parse_avro

from revsync.contracts.catalog import Catalog, Compatibility
from revsync.errors import ContractError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
RELEASES = "releases"


class SchemaError(ContractError):
    """A schema file is missing, unreadable or refers to a type nobody defines."""


def full_name(definition: dict[str, Any], namespace: str | None = None) -> str:
    name = str(definition["name"])
    space = definition.get("namespace", namespace)
    return name if "." in name or not space else f"{space}.{name}"


def namespace_of(name: str) -> str | None:
    """The namespace of a full name, or None for a name in no namespace."""
    return name.rpartition(".")[0] or None


class SchemaRepository:
    """The ``.avsc`` files of one folder, one named type each, filed as ``<full name>.avsc``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, Path] = {}
        self.definitions: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.avsc")):
            try:
                definition = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise SchemaError(f"{path.name}: not valid JSON: {error}") from None
            if not isinstance(definition, dict) or "name" not in definition:
                raise SchemaError(f"{path.name}: must hold one named Avro type")
            name = full_name(definition)
            self.files[name] = path
            self.definitions[name] = definition

    def expanded(self, name: str) -> dict[str, Any]:
        """``name`` as one self-contained schema: each referenced type inlined where first used."""
        if name not in self.definitions:
            raise SchemaError(f"no schema {name} in {self.directory} (expected {name}.avsc)")
        defined: set[str] = set()
        result = self._expand(copy.deepcopy(self.definitions[name]), None, defined)
        assert isinstance(result, dict)
        return result

    def expanded_json(self, name: str) -> str:
        return json.dumps(self.expanded(name), separators=(",", ":"))

    def parsed(self, name: str) -> AvroSchema:
        try:
            return parse_avro(self.expanded_json(name))
        except AvroException as error:
            raise SchemaError(
                f"{self.files[name].name}: not a valid Avro schema: {error}"
            ) from None

    def _expand(self, node: Any, namespace: str | None, defined: set[str]) -> Any:
        if isinstance(node, list):
            return [self._expand(branch, namespace, defined) for branch in node]
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node
            name = node if "." in node else f"{namespace}.{node}" if namespace else node
            if name in defined:
                return name
            if name not in self.definitions:
                raise SchemaError(f"type {name} is used but no {name}.avsc defines it")
            return self._expand(copy.deepcopy(self.definitions[name]), None, defined)
        kind = node.get("type")
        if kind in NAMED_KINDS:
            name = full_name(node, namespace)
            defined.add(name)
            space = namespace_of(name)
            node["name"] = name.rpartition(".")[2]
            if space is None:
                node.pop("namespace", None)  # a type in no namespace, which lint reports
            else:
                node["namespace"] = space
            if kind in ("record", "error"):
                for field in node["fields"]:
                    field["type"] = self._expand(field["type"], space, defined)
            return node
        if kind == "array":
            node["items"] = self._expand(node["items"], namespace, defined)
        elif kind == "map":
            node["values"] = self._expand(node["values"], namespace, defined)
        elif isinstance(kind, (list, dict)) or (isinstance(kind, str) and kind not in PRIMITIVES):
            return self._expand(kind, namespace, defined)
        return node


class ReleaseRecord:
    """Released versions per subject, ``releases/<subject>/<version>.avsc``, oldest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / RELEASES

    def versions(self, subject: str) -> list[str]:
        folder = self.directory / subject
        files = sorted(folder.glob("*.avsc"), key=lambda path: int(path.stem))
        return [path.read_text() for path in files]

    def release(self, subject: str, schema_json: str) -> int:
        folder = self.directory / subject
        folder.mkdir(parents=True, exist_ok=True)
        version = len(self.versions(subject)) + 1
        pretty = json.dumps(json.loads(schema_json), indent=2) + "\n"
        (folder / f"{version}.avsc").write_text(pretty)
        return version


@dataclass(frozen=True)
class Break:
    """One way the working tree breaks a released version."""

    subject: str
    version: int
    direction: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.subject}: {self.direction} incompatible with released v{self.version}: "
            f"{self.reason}"
        )


def check_compatibility(
    catalog: Catalog, schemas: SchemaRepository, releases: ReleaseRecord
) -> list[Break]:
    """Every way the working tree breaks any released version, in the catalog's mode.

    Beyond the Avro resolution rules, enum symbols are append-only: with an enum default a
    removed or renamed symbol still resolves, but silently turns old data into the default.
    """
    breaks: list[Break] = []
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    for topic in catalog.avro_topics:
        current = schemas.parsed(topic.avro_schema)
        for version, released_json in enumerate(releases.versions(topic.value_subject), 1):
            released = parse_avro(released_json)
            directions = [("backward", current, released)]
            if catalog.compatibility is Compatibility.FULL_TRANSITIVE:
                directions.append(("forward", released, current))
            for direction, reader, writer in directions:
                result = checker.get_compatibility(reader, writer)
                if result.compatibility is not SchemaCompatibilityType.compatible:
                    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
                    # The root "/" is listed beside the real places; keep only the real ones.
                    where = ", ".join(sorted(set(result.locations) - {"/"}) or ["/"])
                    about = ", ".join(sorted(str(message) for message in result.messages))
                    reason = f"{kinds} at {where} ({about})"
                    breaks.append(Break(topic.value_subject, version, direction, reason))
            breaks += [
                Break(topic.value_subject, version, "enum", reason)
                for reason in _dropped_enum_symbols(json.loads(released_json), current.to_json())
            ]
    return breaks


def release_changed(
    catalog: Catalog, schemas: SchemaRepository, releases: ReleaseRecord
) -> list[tuple[str, int]]:
    """Record the working tree as a new release of every subject that changed."""
    released = []
    for topic in catalog.avro_topics:
        current = schemas.expanded_json(topic.avro_schema)
        history = releases.versions(topic.value_subject)
        if not history or _canonical(history[-1]) != _canonical(current):
            released.append((topic.value_subject, releases.release(topic.value_subject, current)))
    return released


def _canonical(schema_json: str) -> str:
    return json.dumps(json.loads(schema_json), sort_keys=True, separators=(",", ":"))


def _named_enums(node: Any, found: dict[str, list[str]]) -> dict[str, list[str]]:
    if isinstance(node, list):
        for branch in node:
            _named_enums(branch, found)
    elif isinstance(node, dict):
        if node.get("type") == "enum":
            found[full_name(node)] = list(node["symbols"])
        for value in node.values():
            if isinstance(value, (dict, list)):
                _named_enums(value, found)
    return found


def _dropped_enum_symbols(released: Any, current: Any) -> list[str]:
    old, new = _named_enums(released, {}), _named_enums(current, {})
    return [
        f"enum {name} lost symbol(s) {', '.join(missing)}; enum symbols may only be added"
        for name, symbols in old.items()
        if name in new and (missing := [s for s in symbols if s not in new[name]])
    ]
