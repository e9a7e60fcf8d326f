"""``revsync schemas register``: the governance step that puts the contracts in the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from revsync.contracts.catalog import Catalog
from revsync.contracts.schemas import ReleaseRecord, SchemaRepository
from revsync.errors import ContractError


class RegistrationRefused(ContractError):
    """The registry would not take a schema (incompatible, or invalid)."""


@dataclass(frozen=True)
class Registration:
    subject: str
    version: int
    schema_id: int
    registered_now: bool

    def __str__(self) -> str:
        action = "registered" if self.registered_now else "unchanged"
        return f"{self.subject}  version {self.version}  id {self.schema_id}  {action}"


def register_contracts(
    registry: SchemaRegistryClient,
    catalog: Catalog,
    schemas: SchemaRepository,
    releases: ReleaseRecord,
) -> Iterator[Registration]:
    """Per subject: set the catalog's compatibility level, then register every released
    version in order and the working tree last. Already registered versions are left as they
    are, so a second run changes nothing."""
    for topic in catalog.avro_topics:
        subject = topic.value_subject
        registry.set_compatibility(subject_name=subject, level=catalog.compatibility.value)
        history = [*releases.versions(subject), schemas.expanded_json(topic.avro_schema)]
        compact = list(dict.fromkeys(_compact(schema_json) for schema_json in history))
        for schema_json in compact:
            yield _register(registry, subject, schema_json)


def _register(registry: SchemaRegistryClient, subject: str, schema_json: str) -> Registration:
    schema = Schema(schema_json, "AVRO")
    try:
        found = registry.lookup_schema(subject, schema)
        registered_now = False
    except SchemaRegistryError as error:
        if error.http_status_code != 404:
            raise
        try:
            registry.register_schema(subject, schema)
        except SchemaRegistryError as refusal:
            if refusal.http_status_code in (409, 422):
                raise RegistrationRefused(
                    f"{subject}: the registry refused the schema "
                    f"(HTTP {refusal.http_status_code}): {refusal.error_message}"
                ) from None
            raise
        found = registry.lookup_schema(subject, schema)
        registered_now = True
    assert found.version is not None
    assert found.schema_id is not None
    return Registration(subject, found.version, found.schema_id, registered_now)


def _compact(schema_json: str) -> str:
    return json.dumps(json.loads(schema_json), separators=(",", ":"))
