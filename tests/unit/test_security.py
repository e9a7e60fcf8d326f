"""The Kafka ACL plan: each deployable confined to its own topics and group, the operators to
dead letters, replays and groups, governance alone creating and altering."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from contract_fixtures import SCHEMAS_DIR
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.deployables import discover
from revsync.security import (
    GOVERNANCE,
    OPERATOR,
    Grant,
    Operation,
    Resource,
    acl_plan,
    apply_acls,
    kafka_identity,
    kafka_principal,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SCHEMAS_DIR)


@pytest.fixture(scope="module")
def plan(catalog: Catalog) -> list[Grant]:
    return acl_plan(catalog, {name: d.service for name, d in discover().items()})


def _named(plan: Iterable[Grant], principal: str, operation: Operation) -> set[str]:
    return {g.name for g in plan if g.principal == principal and g.operation is operation}


def test_each_deployable_writes_only_what_the_catalog_has_it_produce(
    catalog: Catalog, plan: list[Grant]
) -> None:
    for name, deployable in discover().items():
        produced = {t.name for t in catalog.topics if deployable.service in t.producers}
        writes = _named(plan, kafka_principal(name), Operation.WRITE)
        own = {t for t in writes if t not in produced}
        # Beyond its outputs only its own retry and dead-letter topics.
        assert all(".retry." in t or t.endswith(".dlt") for t in own), (name, own)
    assert "revsync.invoice.posted.v1" not in _named(
        plan, kafka_principal("order-sync"), Operation.WRITE
    )


def test_a_consumer_reads_its_inputs_retries_and_replays_and_its_group_only(
    catalog: Catalog, plan: list[Grant]
) -> None:
    consumer = catalog.consumer_of("invoice_sync")
    reads = _named(plan, kafka_principal("invoice-sync"), Operation.READ)

    inputs = {t.name for t in catalog.consumed_by(consumer)}
    assert inputs <= reads
    assert catalog.replay_topic(consumer) in reads
    assert catalog.dead_letter_topic(consumer) not in reads
    groups = {
        g.name
        for g in plan
        if g.principal == kafka_principal("invoice-sync") and g.resource is Resource.GROUP
    }
    assert groups == {consumer}


def test_customer_sync_reads_accounts_orders_and_erp_customers_and_writes_its_two_events(
    catalog: Catalog, plan: list[Grant]
) -> None:
    principal = kafka_principal("customer-sync")
    consumer = catalog.consumer_of("customer_sync")
    retries = {
        catalog.retry_topic(consumer, delay) for delay in catalog.consumers[consumer].retry_tiers
    }

    def topics(operation: Operation) -> set[str]:
        return {
            g.name
            for g in plan
            if g.principal == principal
            and g.resource is Resource.TOPIC
            and g.operation is operation
        }

    assert topics(Operation.READ) == {
        "revsync.account.crm-change.v1",
        "revsync.order.created.v1",
        "revsync.customer.mastered.v1",
        "revsync.customer.credit-status-changed.v1",
        *retries,
        catalog.replay_topic(consumer),
    }
    assert topics(Operation.WRITE) == {
        "revsync.customer.upserted.v1",
        "revsync.customer.duplicate-suspected.v1",
        *retries,
        catalog.dead_letter_topic(consumer),
    }
    groups = {g.name for g in plan if g.principal == principal and g.resource is Resource.GROUP}
    assert groups == {"customer-sync"}


def test_the_process_api_only_writes_the_orders_submitted_to_it(
    catalog: Catalog, plan: list[Grant]
) -> None:
    # Not a catalog consumer: it produces, through the relay beside it, and reads nothing.
    principal = kafka_principal("process-api")
    granted = {(g.resource, g.name, g.operation) for g in plan if g.principal == principal}

    produced = {t.name for t in catalog.topics if "process_api" in t.producers}
    assert produced == {"revsync.order.created.v1"}
    assert granted == {
        (Resource.TOPIC, "revsync.order.created.v1", Operation.WRITE),
        (Resource.TOPIC, "revsync.order.created.v1", Operation.DESCRIBE),
    }


def test_only_governance_creates_or_alters(plan: list[Grant]) -> None:
    powerful = {Operation.CREATE, Operation.ALTER, Operation.ALTER_CONFIGS}

    holders = {g.principal for g in plan if g.operation in powerful}

    assert holders == {GOVERNANCE}
    assert not any(g.resource is Resource.CLUSTER and g.principal != GOVERNANCE for g in plan)


def test_the_operators_read_dead_letters_and_write_only_replays(
    catalog: Catalog, plan: list[Grant]
) -> None:
    writes = _named(plan, OPERATOR, Operation.WRITE)
    reads = _named(plan, OPERATOR, Operation.READ)

    replays = {catalog.replay_topic(c) for c in catalog.consumers}
    assert writes == replays
    # A resumed replay reads what it sent already.
    assert {catalog.dead_letter_topic(c) for c in catalog.consumers} | replays <= reads


def test_a_client_is_audited_as_the_user_it_authenticates_as() -> None:
    sasl = {"security.protocol": "SASL_SSL", "sasl.username": "revsync-operator"}

    assert kafka_identity(sasl) == "User:revsync-operator"
    assert kafka_identity({}) == "User:ANONYMOUS"
    # A SASL user named on a connection that does not authenticate is not who it is.
    assert kafka_identity({"sasl.username": "revsync-operator"}) == "User:ANONYMOUS"
    tls = {"security.protocol": "SSL", "ssl.certificate.location": "/etc/revsync/operator.pem"}
    assert kafka_identity(tls) == "certificate /etc/revsync/operator.pem"


ORDER_SYNC = kafka_principal("order-sync")


class FakeAdmin:
    """The three ACL calls of Kafka's Admin API over a list of ACLs."""

    def __init__(self, acls: list[AclBinding]) -> None:
        self.acls = list(acls)

    def describe_acls(self, _filter: object) -> Future[list[AclBinding]]:
        return _done(list(self.acls))

    def create_acls(self, acls: list[AclBinding]) -> dict[AclBinding, Future[None]]:
        self.acls += acls
        return {acl: _done(None) for acl in acls}

    def delete_acls(self, filters: list[AclBindingFilter]) -> dict[object, Future[None]]:
        gone = {(f.restype, f.name, f.principal, f.host, f.operation) for f in filters}
        self.acls = [
            a
            for a in self.acls
            if (a.restype, a.name, a.principal, a.host, a.operation) not in gone
        ]
        return {f: _done(None) for f in filters}


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _acl(
    topic: str,
    operation: AclOperation = AclOperation.WRITE,
    permission: AclPermissionType = AclPermissionType.ALLOW,
    host: str = "*",
    principal: str = "User:revsync-order-sync",
) -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        principal,
        host,
        operation,
        permission,
    )


def test_applying_adds_what_is_missing_and_prunes_only_stale_grants_when_asked() -> None:
    grant = Grant(
        "revsync-order-sync", Resource.TOPIC, "revsync.order.accepted.v1", Operation.WRITE
    )
    stale = _acl("revsync.order.gone.v1")
    cut_off = _acl("revsync.order.accepted.v1", permission=AclPermissionType.DENY)
    one_host = _acl("revsync.order.other.v1", host="10.0.0.7")
    someone_else = _acl("revsync.order.gone.v1", principal="User:analytics")
    admin = FakeAdmin([stale, cut_off, one_host, someone_else])

    kept = apply_acls(admin, [grant])  # type: ignore[arg-type]

    assert kept.added == [grant]
    assert kept.removed == []
    assert stale in admin.acls

    pruned = apply_acls(admin, [grant], prune=True)  # type: ignore[arg-type]

    assert pruned.added == []
    assert len(pruned.removed) == 1
    assert stale not in admin.acls
    # An administrator's DENY, a host-limited grant and other principals' ACLs stay.
    assert {cut_off, one_host, someone_else} <= set(admin.acls)


def test_a_dry_run_changes_nothing() -> None:
    grant = Grant(
        "revsync-order-sync", Resource.TOPIC, "revsync.order.accepted.v1", Operation.WRITE
    )
    admin = FakeAdmin([_acl("revsync.order.gone.v1")])

    changes = apply_acls(admin, [grant], dry_run=True, prune=True)  # type: ignore[arg-type]

    assert changes.added == [grant]
    assert len(changes.removed) == 1
    assert admin.acls == [_acl("revsync.order.gone.v1")]
