"""What a revsync deployable declares, once, and how the installed ones are found.

Each service package declares one :class:`ConsumerDeployable` (or, for a publisher of an
outbox, one :class:`RelayDeployable`; for a bridge from an external system's stream into
Kafka, one :class:`SourceDeployable`; for an HTTP API, one :class:`ApiDeployable`): its name
for ``revsync run``, the inputs it takes, the events it emits and the factory of its handler
or server. It is published as a Python entry point in
the ``revsync.deployables`` group, so this library imports no service: ``revsync run``
discovers what is installed, and :func:`declaration_problems` holds every declaration to the
catalog.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from revsync.connectors.cdc import RecordChange, decode_change
from revsync.connectors.erps import erp_port
from revsync.connectors.pubsub import PubSubClient, PubSubConfig
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.contracts.catalog import Catalog, CatalogError, TopicFormat
from revsync.contracts.events import Event
from revsync.contracts.serde import EventSerde
from revsync.erp_settings import ErpSettings
from revsync.errors import RevsyncError
from revsync.migrations import Tables
from revsync.ports.erp import ErpPort
from revsync.runtime.handler import Handler, Inbound
from revsync.runtime.observability import Liveness
from revsync.runtime.records import Decoder
from revsync.runtime.relay import OutboxRelay
from revsync.settings import ServiceSettings, Settings

ENTRY_POINTS = "revsync.deployables"


class UnknownDeployable(RevsyncError):
    """``revsync run`` was given a name no installed deployable has."""


@dataclass
class Context:
    """What a deployable is built from; adapters are made on first use and closed when the
    deployable stops."""

    settings: Settings
    service: ServiceSettings
    catalog: Catalog
    serde: EventSerde
    resources: ExitStack

    def crm(self) -> SalesforceClient:
        s = self.service
        s.required("crm_instance_url", "crm_client_id", "crm_client_secret")
        assert s.crm_instance_url
        assert s.crm_client_id
        assert s.crm_client_secret
        client = SalesforceClient(
            SalesforceConfig(
                instance_url=s.crm_instance_url,
                client_id=s.crm_client_id,
                client_secret=s.crm_client_secret,
                api_version=s.crm_api_version,
                client_name=s.crm_client_name,
                timeout_s=s.http_timeout_s,
            )
        )
        self.resources.callback(client.close)
        return client

    def pubsub(self) -> PubSubClient:
        """Salesforce's Pub/Sub API, signed in with the CRM's OAuth session."""
        s = self.service
        session = self.crm().session  # which requires the instance URL and credentials
        assert s.crm_instance_url
        client = PubSubClient(
            PubSubConfig(
                endpoint=s.crm_pubsub_endpoint,
                instance_url=s.crm_instance_url,
                tls=s.crm_pubsub_tls,
                timeout_s=s.http_timeout_s,
            ),
            session,
        )
        self.resources.callback(client.close)
        return client

    def erp(self) -> ErpPort:
        """The ERP of every legal entity, as the ERP settings choose
        (:mod:`revsync.erp_settings`)."""
        port = erp_port(self.service, ErpSettings.load())
        self.resources.callback(port.close)
        return port


@dataclass(frozen=True)
class ConsumerDeployable:
    """A service that is one catalog consumer: the shared consumer loop around its handler,
    and, when it emits, a relay for revsync's outbox beside it."""

    name: str
    """What ``revsync run`` calls it: ``order-sync``."""
    service: str
    """Its package, which the catalog names as the consumer's service and as a producer."""
    inputs: tuple[type[Inbound], ...]
    """What it takes: revsync events, or Salesforce change events (:class:`RecordChange`)."""
    outputs: tuple[type[Event], ...]
    build: Callable[[Context], Handler]

    @property
    def emits(self) -> bool:
        return bool(self.outputs)


@dataclass(frozen=True)
class RelayDeployable:
    """A publisher of an outbox that is not revsync's own (an ERP's): the shared relay with a
    translation of its rows into ``outputs``."""

    name: str
    service: str
    outputs: tuple[type[Event], ...]
    build: Callable[[Context, Liveness], OutboxRelay]


class Runnable(Protocol):
    """A deployable's own loop: runs in the foreground until stopped."""

    def run(self, *, max_idle_s: float | None = None) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SourceDeployable:
    """A bridge that brings an external system's stream into Kafka (Salesforce's change data
    capture): a loop of its own, declared with what it writes (:class:`RecordChange`: the
    catalog's CDC topics)."""

    name: str
    service: str
    outputs: tuple[type[Inbound], ...]
    build: Callable[[Context, Liveness], Runnable]
    tables: tuple[Tables, ...] = ()
    """Tables of its own (its position in the external stream), which ``revsync db
    migrate`` creates beside the runtime's."""


class Server(Runnable, Protocol):
    """An API's server: runs until stopped, and says when its tables (revsync's outbox among
    them) exist, for the outbox relay beside it."""

    @property
    def migrated(self) -> threading.Event: ...


@dataclass(frozen=True)
class ApiDeployable:
    """A synchronous HTTP API that people's tools call (the process API): its own server and,
    when it emits, the relay for revsync's outbox beside it."""

    name: str
    service: str
    outputs: tuple[type[Event], ...]
    """What the requests it takes emit, through revsync's outbox."""
    build: Callable[[Context, Liveness], Server]
    tables: tuple[Tables, ...] = ()
    """Tables of its own, which ``revsync db migrate`` creates beside the runtime's."""


Deployable = ConsumerDeployable | RelayDeployable | SourceDeployable | ApiDeployable


def discover() -> dict[str, Deployable]:
    """Every installed deployable, by name."""
    found: dict[str, Deployable] = {}
    for point in entry_points(group=ENTRY_POINTS):
        deployable = point.load()
        if not isinstance(
            deployable, ConsumerDeployable | RelayDeployable | SourceDeployable | ApiDeployable
        ):
            raise TypeError(f"entry point {point.name} ({point.value}) is not a deployable")
        found[deployable.name] = deployable
    return found


def output_topics(catalog: Catalog, outputs: Iterable[type[Event]]) -> dict[type[Event], str]:
    """The topic of each declared output, from the catalog."""
    return {model: catalog.topic_for(model.schema_name).name for model in outputs}


def _declared_topics(catalog: Catalog, outputs: Iterable[type[Inbound]]) -> set[str]:
    """The topics a deployable's outputs go to: an event's own, or, for Salesforce change
    events, every CDC topic."""
    events = [model for model in outputs if issubclass(model, Event)]
    topics = set(output_topics(catalog, events).values())
    if RecordChange in outputs:
        topics |= set(catalog.change_topics.values())
    return topics


def input_decoder(catalog: Catalog, serde: EventSerde) -> Decoder:
    """Salesforce change events by the CDC decoder, revsync's own events by the serde."""
    formats = {topic.name: topic.format for topic in catalog.topics}

    def decode(topic: str, value: bytes | None) -> Inbound:
        if formats.get(topic) is TopicFormat.SALESFORCE_CDC:
            return decode_change(topic, value)
        return serde.deserialize(topic, value)

    return decode


def _input_name(model: type[Inbound]) -> str:
    """An input as the catalog names what a topic carries."""
    if issubclass(model, Event):
        return model.schema_name
    if model is RecordChange:
        return TopicFormat.SALESFORCE_CDC.value
    return f"{model.__name__} (no topic format carries it)"


def declaration_problems(deployables: Iterable[Deployable], catalog: Catalog) -> list[str]:
    """Where the declarations and the catalog disagree; empty when they agree. Inputs are
    compared by contract (a Salesforce change event by its topic format), outputs by topic."""
    problems: list[str] = []
    declared_consumers: set[str] = set()
    for deployable in deployables:
        produced = {t.name for t in catalog.topics if deployable.service in t.producers}
        try:
            declared = _declared_topics(catalog, deployable.outputs)
        except CatalogError as error:
            problems.append(f"{deployable.name}: {error}")
            continue
        if declared != produced:
            problems.append(
                f"{deployable.name} declares outputs {sorted(declared)} but the catalog has "
                f"{deployable.service} producing {sorted(produced)}"
            )
        if not isinstance(deployable, ConsumerDeployable):
            continue
        try:
            consumer = catalog.consumer_of(deployable.service)
        except CatalogError as error:
            problems.append(f"{deployable.name}: {error}")
            continue
        declared_consumers.add(consumer)
        catalog_inputs = {t.schema_name or t.format.value for t in catalog.consumed_by(consumer)}
        inputs = {_input_name(model) for model in deployable.inputs}
        if inputs != catalog_inputs:
            problems.append(
                f"{deployable.name} declares inputs {sorted(inputs)} but the catalog gives "
                f"consumer {consumer} {sorted(catalog_inputs)}"
            )
    for consumer in sorted(set(catalog.consumers) - declared_consumers):
        problems.append(f"catalog consumer {consumer} is declared by no deployable")
    return problems
