"""The Kafka ACL plan: each deployable confined to its own topics and group, the operators to
dead letters, replays and groups, governance alone creating and altering."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

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

    assert writes == {catalog.replay_topic(c) for c in catalog.consumers}
    assert {catalog.dead_letter_topic(c) for c in catalog.consumers} <= reads


def test_a_client_is_audited_as_the_user_it_authenticates_as() -> None:
    sasl = {"security.protocol": "SASL_SSL", "sasl.username": "revsync-operator"}

    assert kafka_identity(sasl) == "User:revsync-operator"
    assert kafka_identity({}) == "User:ANONYMOUS"
    # A SASL user named on a connection that does not authenticate is not who it is.
    assert kafka_identity({"sasl.username": "revsync-operator"}) == "User:ANONYMOUS"
    tls = {"security.protocol": "SSL", "ssl.certificate.location": "/etc/revsync/operator.pem"}
    assert kafka_identity(tls) == "certificate /etc/revsync/operator.pem"
