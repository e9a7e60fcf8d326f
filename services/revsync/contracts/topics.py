"""``revsync topics apply``: make the broker's topics what the catalog says, showing the diff."""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    TopicMetadata,
)

from revsync.contracts.catalog import Catalog, TopicPlan

ADMIN_TIMEOUT_S = 30.0
UNKNOWN_TOPIC = KafkaError.UNKNOWN_TOPIC_OR_PART


class ChangeKind(StrEnum):
    """What ``topics apply`` does to one topic."""

    CREATE = "create"
    """The topic does not exist yet."""
    ADD_PARTITIONS = "add partitions"
    """The catalog asks for more partitions than the topic has."""
    SET_CONFIG = "set config"
    """A topic setting (retention, cleanup policy) differs from the catalog."""
    CANNOT_SHRINK = "cannot shrink"
    """The topic has more partitions than the catalog says; Kafka cannot remove partitions."""


@dataclass(frozen=True)
class TopicChange:
    topic: str
    kind: ChangeKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<15} {self.topic}  {self.detail}"


def plan_changes(admin: AdminClient, catalog: Catalog) -> list[TopicChange]:
    """The difference between the broker and the catalog; empty when they agree."""
    plan = catalog.topic_plan()
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    present = [topic for topic in plan if topic.name in metadata]
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic.name) for topic in present]
    described = admin.describe_configs(resources) if resources else {}
    configs = {
        resource.name: future.result(timeout=ADMIN_TIMEOUT_S)
        for resource, future in described.items()
    }
    changes = []
    for topic in plan:
        if topic.name not in metadata:
            settings = " ".join(f"{key}={value}" for key, value in topic.config.items())
            changes.append(
                TopicChange(
                    topic.name, ChangeKind.CREATE, f"partitions={topic.partitions} {settings}"
                )
            )
            continue
        partitions = len(metadata[topic.name].partitions)
        if partitions < topic.partitions:
            changes.append(
                TopicChange(
                    topic.name, ChangeKind.ADD_PARTITIONS, f"{partitions} -> {topic.partitions}"
                )
            )
        elif partitions > topic.partitions:
            changes.append(
                TopicChange(
                    topic.name,
                    ChangeKind.CANNOT_SHRINK,
                    f"has {partitions} partitions, catalog says {topic.partitions}",
                )
            )
        for key, value in topic.config.items():
            current = configs[topic.name][key].value
            if current != value:
                changes.append(
                    TopicChange(topic.name, ChangeKind.SET_CONFIG, f"{key} {current} -> {value}")
                )
    return changes


def apply_changes(admin: AdminClient, catalog: Catalog, changes: list[TopicChange]) -> None:
    """Carry out ``changes`` (from :func:`plan_changes`); CANNOT_SHRINK is left to a person."""
    plan = {topic.name: topic for topic in catalog.topic_plan()}
    creates = [plan[change.topic] for change in changes if change.kind is ChangeKind.CREATE]
    grows = [plan[change.topic] for change in changes if change.kind is ChangeKind.ADD_PARTITIONS]
    settings = sorted({change.topic for change in changes if change.kind is ChangeKind.SET_CONFIG})
    if creates:
        _wait(admin.create_topics([_new_topic(topic) for topic in creates]))
    if grows:
        _wait(admin.create_partitions([NewPartitions(t.name, t.partitions) for t in grows]))
    if settings:
        _wait(
            admin.incremental_alter_configs(
                [
                    ConfigResource(
                        ConfigResource.Type.TOPIC,
                        name,
                        incremental_configs=[
                            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                            for key, value in plan[name].config.items()
                        ],
                    )
                    for name in settings
                ]
            )
        )
    _await_convergence(admin, catalog)


def _await_convergence(admin: AdminClient, catalog: Catalog) -> None:
    """Wait until the broker reports what was applied: partition counts and configs reach its
    metadata a moment after the calls return, and a second apply must find nothing to do."""
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:
        try:
            pending = [
                str(c)
                for c in plan_changes(admin, catalog)
                if c.kind is not ChangeKind.CANNOT_SHRINK
            ]
        except KafkaException as error:
            # With several brokers, one may list a new topic before another, asked for its
            # configs, knows it: not converged yet.
            refusal = error.args[0]
            if not isinstance(refusal, KafkaError) or refusal.code() != UNKNOWN_TOPIC:
                raise
            pending = ["a topic not yet known to every broker"]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topics still differ from the catalog: {pending[0]}")
        time.sleep(0.2)


def await_topic(
    admin: AdminClient, topic: str, timeout_s: float = ADMIN_TIMEOUT_S
) -> TopicMetadata:
    """Wait until the broker's metadata shows ``topic`` with its partitions.

    A created topic reaches the broker's metadata cache a moment after CreateTopics returns.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is None and metadata.partitions:
            return metadata
        if time.monotonic() > deadline:
            raise KafkaException(metadata.error)
        time.sleep(0.1)


BETWEEN_LEADERS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)
"""What a partition answers for a moment while it has no leader the client knows: just
created, or its broker restarting."""


def watermarks(
    consumer: Consumer, partition: TopicPartition, timeout_s: float = 10.0
) -> tuple[int, int]:
    """The partition's low and high watermarks, asked again while it is between leaders
    (until ``timeout_s`` has passed); any other failure is raised at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 0.1)
            )
            return low, high
        except KafkaException as error:
            reason = error.args[0] if error.args else None
            if not isinstance(reason, KafkaError) or reason.code() not in BETWEEN_LEADERS:
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _new_topic(topic: TopicPlan) -> NewTopic:
    # replication_factor -1: the broker's default.replication.factor, right for any cluster size.
    return NewTopic(
        topic.name,
        num_partitions=topic.partitions,
        replication_factor=-1,
        config=dict(topic.config),
    )


def _wait(futures: Mapping[Any, Future[Any]]) -> None:
    for future in futures.values():
        future.result(timeout=ADMIN_TIMEOUT_S)
