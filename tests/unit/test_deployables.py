"""Each deployable declares itself once, and the declarations are held to the catalog: a
declared output or input the catalog does not give, or a catalog consumer no deployable
declares, is a named problem. The shared library imports no deployable."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contract_fixtures import SCHEMAS_DIR
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.events import OrderAccepted, OrderCreated
from revsync.deployables import ConsumerDeployable, declaration_problems, discover
from revsync.errors import ErrorClass, classify
from revsync.runtime.handler import UnexpectedInput, route
from samples import sample_event

SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SCHEMAS_DIR)


def without_producer(catalog: Catalog, topic: str, producer: str) -> Catalog:
    topics = [
        t.model_copy(update={"producers": [p for p in t.producers if p != producer]})
        if t.name == topic
        else t
        for t in catalog.topics
    ]
    return catalog.model_copy(update={"topics": topics})


def test_every_deployable_is_installed_and_found() -> None:
    assert set(discover()) == {
        "order-sync",
        "customer-sync",
        "invoice-sync",
        "fulfillment-sync",
        "erp-outbox-publisher",
        "erp-inbound",
        "crm-cdc-bridge",
        "process-api",
    }


def test_the_declarations_agree_with_the_catalog(catalog: Catalog) -> None:
    assert declaration_problems(discover().values(), catalog) == []


def test_a_declared_output_missing_from_the_catalog_is_named(catalog: Catalog) -> None:
    accepted = catalog.topic_for(OrderAccepted.schema_name).name
    problems = declaration_problems(
        discover().values(), without_producer(catalog, accepted, "order_sync")
    )
    assert len(problems) == 1
    assert "order-sync declares outputs" in problems[0]
    assert accepted in problems[0]


def test_a_cdc_topic_the_bridge_is_not_named_producer_of_is_named(catalog: Catalog) -> None:
    problems = declaration_problems(
        discover().values(),
        without_producer(catalog, "revsync.account.crm-change.v1", "crm_cdc_bridge"),
    )
    assert len(problems) == 1
    assert "crm-cdc-bridge declares outputs" in problems[0]
    assert "revsync.account.crm-change.v1" in problems[0]


def test_a_published_output_that_is_not_declared_is_named(catalog: Catalog) -> None:
    deployables = discover()
    order_sync = deployables["order-sync"]
    assert isinstance(order_sync, ConsumerDeployable)
    fewer = ConsumerDeployable(
        name=order_sync.name,
        service=order_sync.service,
        inputs=order_sync.inputs,
        outputs=tuple(o for o in order_sync.outputs if o is not OrderAccepted),
        build=order_sync.build,
    )
    problems = declaration_problems([fewer, deployables["invoice-sync"]], catalog)
    assert any("order-sync declares outputs" in p for p in problems)
    assert "catalog consumer fulfillment-sync is declared by no deployable" in problems


def test_an_input_the_catalog_does_not_route_is_named(catalog: Catalog) -> None:
    order_sync = discover()["order-sync"]
    assert isinstance(order_sync, ConsumerDeployable)
    more = ConsumerDeployable(
        name=order_sync.name,
        service=order_sync.service,
        inputs=(*order_sync.inputs, OrderAccepted),
        outputs=order_sync.outputs,
        build=order_sync.build,
    )
    [problem] = [p for p in declaration_problems([more], catalog) if "inputs" in p]
    assert OrderAccepted.schema_name in problem


def test_an_input_of_no_declared_type_is_a_permanent_failure() -> None:
    table: dict[type, Callable[..., Any]] = {OrderCreated: lambda event: event}
    created = sample_event(OrderCreated)
    assert route(table, created)(created) is created
    with pytest.raises(UnexpectedInput, match="OrderAccepted") as refused:
        route(table, sample_event(OrderAccepted))
    assert classify(refused.value) is not ErrorClass.TRANSIENT


def test_the_shared_library_imports_no_deployable() -> None:
    deployable_packages = {
        path.parent.name for path in SERVICES.glob("*/__init__.py") if path.parent.name != "revsync"
    }
    assert {"order_sync", "erp_outbox_publisher"} <= deployable_packages
    offenders = []
    for module in (SERVICES / "revsync").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{module.relative_to(SERVICES)}: {name}"
                for name in names
                if name.split(".")[0] in deployable_packages
            ]
    assert offenders == []
