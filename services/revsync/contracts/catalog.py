"""The topic catalog (``schemas/avro/catalog.yaml``) and every topic derived from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from revsync.errors import ContractError
from revsync.yaml_files import load_model

CATALOG_FILE = "catalog.yaml"
TOPIC_NAME = re.compile(
    r"^revsync\.(?P<entity>[a-z][a-z0-9-]*)\.(?P<event>[a-z][a-z0-9-]*)\.v(?P<major>[1-9][0-9]*)$"
)
CONSUMER_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_DURATION = re.compile(r"^(?P<amount>[1-9][0-9]*)(?P<unit>ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class CatalogError(ContractError):
    """The catalog is malformed or inconsistent; the message names the entry."""


class Compatibility(StrEnum):
    """Schema registry compatibility modes revsync accepts (BACKWARD_TRANSITIVE or stricter)."""

    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    """New readers read every released version."""
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    """New readers read every released version, and every released reader reads the new one."""

    @property
    def checks_forward(self) -> bool:
        return self is Compatibility.FULL_TRANSITIVE


class Owner(StrEnum):
    """The system of record for a topic's facts."""

    CRM = "crm"
    ERP = "erp"
    REVSYNC = "revsync"


class TopicFormat(StrEnum):
    """How a topic's values are written."""

    AVRO = "avro"
    """revsync's governed Avro contracts, Confluent wire format, TopicNameStrategy subjects."""
    SALESFORCE_CDC = "salesforce-cdc"
    """Salesforce Change Data Capture events as JSON, as a CDC bridge writes them. Salesforce
    owns that shape; revsync validates it on reading and registers no schema for it."""


class TopicKind(StrEnum):
    """What a topic is for."""

    EVENTS = "events"
    """Business events, in the contract named by the catalog entry."""
    RETRY = "retry"
    """One consumer's delayed retry tier: original bytes and headers, plus error headers."""
    DEAD_LETTER = "dead-letter"
    """One consumer's dead letters: original bytes and headers, plus error headers."""
    REPLAY = "replay"
    """Dead letters an operator sent back to their one consumer (``revsync dlt replay``)."""


def _milliseconds(value: object) -> int:
    """Durations are written ``10s``, ``1m``, ``7d``; kept as milliseconds."""
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 500ms, 10s, 1m, 2h or 7d")
    return int(match["amount"]) * _UNIT_MS[match["unit"]]


Milliseconds = Annotated[int, BeforeValidator(_milliseconds), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    partitions: int = Field(ge=1)
    retention: Milliseconds
    cleanup_policy: str = Field(pattern=r"^(delete|compact|compact,delete)$")


class CircuitBreakerSpec(_Strict):
    """When a consumer stops taking records rather than dead-letter everything: a bad deploy
    or a changed ERP contract fails every record alike."""

    window: int = Field(default=100, ge=1)
    """How many of the latest handled records the ratio is taken over."""
    max_dead_letter_ratio: float = Field(default=0.5, gt=0, le=1)
    """Trips when more than this share of a full window was dead-lettered."""
    consecutive_dead_letters: int = Field(default=20, ge=1)
    """Trips after this many dead letters in a row, window or not."""
    cool_down: Milliseconds = 300_000
    """Open this long, then one probe record: its success closes the breaker."""


class ConsumerSpec(_Strict):
    service: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    retry_tiers: list[Milliseconds] = Field(min_length=0)
    dead_letter_retention: Milliseconds
    preserve_key_order: bool = True
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()


class TopicSpec(_Strict):
    name: str
    format: TopicFormat = TopicFormat.AVRO
    schema_name: str | None = Field(default=None, alias="schema")
    key: str
    owner: Owner
    producers: list[str]
    consumers: list[str]
    description: str
    partitions: int | None = Field(default=None, ge=1)
    retention: Milliseconds | None = None
    cleanup_policy: str | None = Field(default=None, pattern=r"^(delete|compact|compact,delete)$")
    entities: list[str] = Field(default_factory=list)
    """A change data capture topic's Salesforce sObjects (``Order``): the CDC bridge writes
    each change event to the topic of its entity."""

    @model_validator(mode="after")
    def _name_follows_convention(self) -> Self:
        if not TOPIC_NAME.match(self.name):
            raise ValueError(
                f"topic {self.name!r} does not follow revsync.<entity>.<event>.v<major>"
            )
        if (self.format is TopicFormat.AVRO) != (self.schema_name is not None):
            raise ValueError(
                f"topic {self.name}: an Avro topic names its schema, and only an Avro topic does"
            )
        if (self.format is TopicFormat.SALESFORCE_CDC) != bool(self.entities):
            raise ValueError(
                f"topic {self.name}: a {TopicFormat.SALESFORCE_CDC} topic names the sObjects "
                "whose changes it carries (entities), and only such a topic does"
            )
        return self

    @property
    def avro_schema(self) -> str:
        """The full name of the topic's Avro contract."""
        if self.schema_name is None:
            raise CatalogError(f"topic {self.name} carries {self.format}, not an Avro contract")
        return self.schema_name

    @property
    def value_subject(self) -> str:
        """The registry subject of the topic's values (TopicNameStrategy)."""
        return f"{self.name}-value"

    @property
    def event_type(self) -> str:
        """The envelope's ``event_type`` and CloudEvents ``ce_type`` for this topic."""
        match = TOPIC_NAME.match(self.name)
        assert match is not None
        return f"io.revsync.{match['entity']}.{match['event']}"

    @property
    def major_version(self) -> int:
        match = TOPIC_NAME.match(self.name)
        assert match is not None
        return int(match["major"])


@dataclass(frozen=True)
class TopicPlan:
    """One topic as it must exist on the broker."""

    name: str
    kind: TopicKind
    partitions: int
    config: dict[str, str]
    consumer: str | None = None
    source: TopicSpec | None = None


class Catalog(_Strict):
    compatibility: Compatibility
    defaults: Defaults
    consumers: dict[str, ConsumerSpec]
    topics: list[TopicSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        names = [topic.name for topic in self.topics]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"topics listed twice: {', '.join(duplicates)}")
        for consumer in self.consumers:
            if not CONSUMER_NAME.match(consumer):
                raise ValueError(f"consumer name {consumer!r} must be lower-case-with-dashes")
        for topic in self.topics:
            unknown = [name for name in topic.consumers if name not in self.consumers]
            if unknown:
                raise ValueError(
                    f"topic {topic.name} names consumers not declared under consumers: "
                    f"{', '.join(unknown)}"
                )
        entities = [entity for topic in self.topics for entity in topic.entities]
        twice = sorted({entity for entity in entities if entities.count(entity) > 1})
        if twice:
            raise ValueError(f"sObjects whose changes two topics carry: {', '.join(twice)}")
        return self

    @property
    def change_topics(self) -> dict[str, str]:
        """The change data capture topic of each sObject whose changes revsync takes."""
        return {entity: topic.name for topic in self.topics for entity in topic.entities}

    @property
    def avro_topics(self) -> list[TopicSpec]:
        """The topics with a governed Avro contract: registered, checked and documented."""
        return [topic for topic in self.topics if topic.format is TopicFormat.AVRO]

    def topic(self, name: str) -> TopicSpec:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise CatalogError(f"topic {name!r} is not in the catalog")

    def topic_for(self, schema_name: str) -> TopicSpec:
        """The topic that carries the contract ``schema_name``."""
        for topic in self.avro_topics:
            if topic.schema_name == schema_name:
                return topic
        raise CatalogError(f"no topic in the catalog carries {schema_name}")

    def consumer_of(self, service: str) -> str:
        """The consumer (and Kafka group) that service package ``service`` runs."""
        for name, consumer in self.consumers.items():
            if consumer.service == service:
                return name
        raise CatalogError(f"no consumer in the catalog belongs to service {service}")

    def consumed_by(self, consumer: str) -> list[TopicSpec]:
        return [topic for topic in self.topics if consumer in topic.consumers]

    def retry_topic(self, consumer: str, delay_ms: int) -> str:
        return f"revsync.{consumer}.retry.{format_duration(delay_ms)}"

    def dead_letter_topic(self, consumer: str) -> str:
        return f"revsync.{consumer}.dlt"

    def replay_topic(self, consumer: str) -> str:
        return f"revsync.{consumer}.replay"

    def topic_plan(self) -> list[TopicPlan]:
        """Every topic the broker must have: event topics, then each consumer's retry and DLT."""
        plan = [
            TopicPlan(
                name=topic.name,
                kind=TopicKind.EVENTS,
                partitions=topic.partitions or self.defaults.partitions,
                config=self._config(topic.retention, topic.cleanup_policy),
                source=topic,
            )
            for topic in self.topics
        ]
        for name, consumer in self.consumers.items():
            # As many partitions as the widest input, so a key's retries stay together.
            partitions = max(
                (topic.partitions or self.defaults.partitions for topic in self.consumed_by(name)),
                default=self.defaults.partitions,
            )
            plan += [
                TopicPlan(
                    self.retry_topic(name, delay),
                    TopicKind.RETRY,
                    partitions,
                    self._config(None, "delete"),
                    consumer=name,
                )
                for delay in consumer.retry_tiers
            ]
            plan.append(
                TopicPlan(
                    self.dead_letter_topic(name),
                    TopicKind.DEAD_LETTER,
                    partitions,
                    self._config(consumer.dead_letter_retention, "delete"),
                    consumer=name,
                )
            )
            plan.append(
                TopicPlan(
                    self.replay_topic(name),
                    TopicKind.REPLAY,
                    partitions,
                    self._config(None, "delete"),
                    consumer=name,
                )
            )
        return plan

    def _config(self, retention: int | None, cleanup_policy: str | None) -> dict[str, str]:
        return {
            "retention.ms": str(retention or self.defaults.retention),
            "cleanup.policy": cleanup_policy or self.defaults.cleanup_policy,
        }


def format_duration(milliseconds: int) -> str:
    """The shortest exact spelling: 10000 -> ``10s``, 60000 -> ``1m``."""
    for unit in ("d", "h", "m", "s"):
        if milliseconds % _UNIT_MS[unit] == 0:
            return f"{milliseconds // _UNIT_MS[unit]}{unit}"
    return f"{milliseconds}ms"


def load_catalog(directory: Path) -> Catalog:
    return load_model(directory / CATALOG_FILE, Catalog, CatalogError, "catalog")
