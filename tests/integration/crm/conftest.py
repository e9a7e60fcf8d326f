"""The CRM simulator for the tests that talk to it: started once a module, with an account and
a product, and calmed after every test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from sandbox.crm import CdcKnobs, CrmSandbox, CrmSimulator
from sandbox.http import Faults

from crm_sandbox import config
from revsync.connectors.salesforce import SalesforceClient


@pytest.fixture(scope="module")
def simulator() -> Iterator[CrmSimulator]:
    crm = CrmSimulator(seed=7).start()
    yield crm
    crm.stop()


@pytest.fixture(scope="module")
def sandbox(simulator: CrmSimulator) -> Iterator[CrmSandbox]:
    with closing(CrmSandbox(simulator.url)) as control:
        yield control


@pytest.fixture(autouse=True)
def calm(simulator: CrmSimulator) -> Iterator[None]:
    """Every test starts, and leaves, without faults or triggers, with the default change
    event and Pub/Sub knobs."""
    yield
    simulator.server.faults = Faults()
    simulator.bus.configure(CdcKnobs().as_dict())
    simulator.query_page_size = 2000
    simulator.next_records_url_override = None
    simulator.triggers = []


@pytest.fixture
def crm(simulator: CrmSimulator) -> Iterator[SalesforceClient]:
    with SalesforceClient(config(simulator)) as client:
        yield client


@pytest.fixture(scope="module")
def account(sandbox: CrmSandbox) -> str:
    return sandbox.insert("Account", [{"Name": "Acme GmbH", "ERP_Customer_Id__c": "C-10001"}])[0]


@pytest.fixture(scope="module")
def product(sandbox: CrmSandbox) -> str:
    return sandbox.insert(
        "Product2", [{"Name": "Widget", "ProductCode": "W-1", "Family": "Widgets"}]
    )[0]
