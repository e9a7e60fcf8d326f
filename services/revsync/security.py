"""Who may do what: the principals of revsync's least-privilege split and the Kafka ACL plan
the governance job applies (``revsync acls apply``).

Each deployable has a Kafka principal of its own, ``User:revsync-<deployable>``, allowed to
read its inputs, retry and replay topics and its group, and to write its outputs, retries and
dead letters, nothing else. The operators' tooling reads dead letters and consumer groups and
writes replays. The governance job alone may create and alter topics and ACLs. In PostgreSQL,
roles are per purpose: the migrations' role owns the tables, the services' and the operators'
roles may change only their own, and the audit trail takes inserts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from revsync.contracts.catalog import Catalog
from revsync.contracts.topics import ADMIN_TIMEOUT_S

PRINCIPAL_PREFIX = "revsync-"
OPERATOR = "revsync-operator"
"""The operators' tooling (``revsync dlt``, ``holds``, ``consumer``, ``replay``)."""
GOVERNANCE = "revsync-governance"
"""The governance job: topics, ACLs (and, in the registry, the contracts)."""
POSTGRES_MIGRATOR = "revsync_migrator"
"""Owns revsync's tables: ``revsync db migrate`` runs as it."""
POSTGRES_SERVICE = "revsync_service"
POSTGRES_OPERATOR = "revsync_operator"
OPS_GROUP_PREFIXES = ("revsync-ops-", "revsync-dlt-reader-")
"""The throwaway consumer groups the operators' tooling reads with."""
GOVERNED_TOPIC_PREFIX = "revsync."


def kafka_principal(deployable: str) -> str:
    """The Kafka user a deployable authenticates as: ``revsync-order-sync``."""
    return f"{PRINCIPAL_PREFIX}{deployable}"


def kafka_identity(config: Mapping[str, Any]) -> str:
    """The principal a Kafka client with ``config`` is, as the broker names it: the SASL user;
    on TLS with a client certificate, the broker maps its subject (named here by the file);
    else ``User:ANONYMOUS``."""
    protocol = str(config.get("security.protocol", "plaintext")).lower()
    user = config.get("sasl.username")
    if protocol.startswith("sasl") and user:
        return f"User:{user}"
    certificate = config.get("ssl.certificate.location")
    if protocol == "ssl" and certificate:
        return f"certificate {certificate}"
    return "User:ANONYMOUS"


class Resource(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    DESCRIBE = "describe"
    CREATE = "create"
    ALTER = "alter"
    DESCRIBE_CONFIGS = "describe_configs"
    ALTER_CONFIGS = "alter_configs"


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: ``principal`` may do ``operation`` on ``resource`` ``name`` (a literal
    name, or every name starting with it when ``prefixed``), from any host."""

    principal: str
    resource: Resource
    name: str
    operation: Operation
    prefixed: bool = False

    def __str__(self) -> str:
        pattern = "prefixed" if self.prefixed else "literal"
        return (
            f"User:{self.principal:<30} {self.operation:<16} {self.resource} "
            f"{self.name} ({pattern})"
        )


CLUSTER_NAME = "kafka-cluster"
"""How Kafka names the one cluster resource."""


def acl_plan(catalog: Catalog, deployables: Mapping[str, str]) -> list[Grant]:
    """Every grant the catalog calls for. ``deployables``: each deployable's name (its
    principal) by its service package, which the catalog names as producer and consumer."""
    grants: set[Grant] = set()
    for name, service in deployables.items():
        principal = kafka_principal(name)
        produced = [topic.name for topic in catalog.topics if service in topic.producers]
        grants |= _topics(principal, produced, Operation.WRITE)
        for consumer, spec in catalog.consumers.items():
            if spec.service == service:
                grants |= _consumer(catalog, principal, consumer)
    grants |= _operator(catalog)
    grants |= governance_grants()
    return sorted(grants)


def _consumer(catalog: Catalog, principal: str, consumer: str) -> set[Grant]:
    """What running ``consumer`` takes: its inputs, retries and replays to read, its retries
    and dead letters to write, its group."""
    spec = catalog.consumers[consumer]
    retries = [catalog.retry_topic(consumer, delay) for delay in spec.retry_tiers]
    inputs = [topic.name for topic in catalog.consumed_by(consumer)]
    reads = [*inputs, *retries, catalog.replay_topic(consumer)]
    writes = [*retries, catalog.dead_letter_topic(consumer)]
    return {
        *_topics(principal, reads, Operation.READ),
        *_topics(principal, writes, Operation.WRITE),
        Grant(principal, Resource.GROUP, consumer, Operation.READ),
    }


def _operator(catalog: Catalog) -> set[Grant]:
    """Read dead letters, write replays (and read them: a resumed replay finds what it
    sent already); see and rewind the consumers' groups (a rewind commits offsets on their
    inputs, which Kafka allows a reader of topic and group)."""
    grants: set[Grant] = set()
    for consumer in catalog.consumers:
        inputs = [topic.name for topic in catalog.consumed_by(consumer)]
        replays = catalog.replay_topic(consumer)
        reads = [*inputs, catalog.dead_letter_topic(consumer), replays]
        grants |= _topics(OPERATOR, reads, Operation.READ)
        grants |= _topics(OPERATOR, [replays], Operation.WRITE)
        grants.add(Grant(OPERATOR, Resource.GROUP, consumer, Operation.READ))
        grants.add(Grant(OPERATOR, Resource.GROUP, consumer, Operation.DESCRIBE))
    for prefix in OPS_GROUP_PREFIXES:
        grants.add(Grant(OPERATOR, Resource.GROUP, prefix, Operation.READ, prefixed=True))
    return grants


def governance_grants() -> set[Grant]:
    """The governance job's own: create and configure revsync's topics, manage ACLs (ALTER on
    the cluster). Given once by the cluster's administrator, since nobody else may grant."""
    topic_operations = (
        Operation.CREATE,
        Operation.ALTER,
        Operation.DESCRIBE,
        Operation.DESCRIBE_CONFIGS,
        Operation.ALTER_CONFIGS,
    )
    grants = {
        Grant(GOVERNANCE, Resource.TOPIC, GOVERNED_TOPIC_PREFIX, operation, prefixed=True)
        for operation in topic_operations
    }
    grants |= {
        Grant(GOVERNANCE, Resource.CLUSTER, CLUSTER_NAME, operation)
        for operation in (Operation.ALTER, Operation.DESCRIBE)
    }
    return grants


def _topics(principal: str, topics: Iterable[str], operation: Operation) -> set[Grant]:
    """``operation`` on each topic, with DESCRIBE beside it (clients look topics up first)."""
    return {
        Grant(principal, Resource.TOPIC, topic, granted)
        for topic in topics
        for granted in (operation, Operation.DESCRIBE)
    }


_RESOURCES = {
    Resource.TOPIC: ResourceType.TOPIC,
    Resource.GROUP: ResourceType.GROUP,
    Resource.CLUSTER: ResourceType.BROKER,
}
_OPERATIONS = {operation: AclOperation[operation.name] for operation in Operation}


@dataclass(frozen=True)
class AclChanges:
    added: list[Grant]
    removed: list[str]
    """The plan's principals' ACLs it no longer has (with ``prune``), as the broker
    describes them."""


def apply_acls(
    admin: AdminClient, plan: list[Grant], *, dry_run: bool = False, prune: bool = False
) -> AclChanges:
    """Add what ``plan`` has and the cluster lacks; with ``prune``, also delete the ALLOW
    ACLs of the plan's principals (from any host) that the plan no longer has, such as a topic
    gone from a service's outputs. DENY ACLs, ACLs limited to particular hosts and other
    principals' ACLs are never touched: an administrator's cut-off stays."""
    found = admin.describe_acls(_EVERYTHING).result(timeout=ADMIN_TIMEOUT_S)
    principals = {f"User:{grant.principal}" for grant in plan}
    wanted = {_binding(grant): grant for grant in plan}
    added = [grant for binding, grant in wanted.items() if binding not in found]
    stale = [
        acl
        for acl in found
        if prune
        and acl.principal in principals
        and acl.permission_type == AclPermissionType.ALLOW
        and acl.host == "*"
        and acl not in wanted
    ]
    if not dry_run:
        if added:
            for future in admin.create_acls([_binding(grant) for grant in added]).values():
                future.result(timeout=ADMIN_TIMEOUT_S)
        if stale:
            filters = [_exact(acl) for acl in stale]
            for future in admin.delete_acls(filters).values():
                future.result(timeout=ADMIN_TIMEOUT_S)
    return AclChanges(sorted(added), sorted(repr(acl) for acl in stale))


# None matches any name, principal and host (the library's stubs type them str only).
_EVERYTHING = AclBindingFilter(
    ResourceType.ANY,
    None,  # type: ignore[arg-type]
    ResourcePatternType.ANY,
    None,  # type: ignore[arg-type]
    None,  # type: ignore[arg-type]
    AclOperation.ANY,
    AclPermissionType.ANY,
)


def _binding(grant: Grant) -> AclBinding:
    return AclBinding(
        _RESOURCES[grant.resource],
        grant.name,
        ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL,
        f"User:{grant.principal}",
        "*",
        _OPERATIONS[grant.operation],
        AclPermissionType.ALLOW,
    )


def _exact(acl: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        acl.restype,
        acl.name,
        acl.resource_pattern_type,
        acl.principal,
        acl.host,
        acl.operation,
        acl.permission_type,
    )
