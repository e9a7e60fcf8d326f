"""The port contracts against the real adapters, over HTTP to the sandboxes: the Salesforce
adapter against the CRM simulator, the ERP REST adapter against the ERP simulator on the live
PostgreSQL. The same assertions hold the fakes (tests/unit/test_fake_ports.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from pydantic import SecretStr
from sandbox.crm import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, CrmSandbox, CrmSimulator
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from erp_sandbox_control import NEVER, SandboxErpControl
from port_contracts import CrmContract, ErpContract
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.settings import Settings


@pytest.fixture(scope="module")
def crm_simulator() -> Iterator[CrmSimulator]:
    simulator = CrmSimulator(seed=7)
    try:
        yield simulator.start()
    finally:
        simulator.stop()


@pytest.fixture(scope="module")
def erp_simulator(settings: Settings) -> Iterator[ErpSimulator]:
    # No reset: the ERP schema is shared, and every external id this module books is its own.
    simulator = ErpSimulator(
        settings.postgres_dsn.get_secret_value(),
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
    ).start()
    yield simulator
    simulator.stop()


class TestSalesforceClient(CrmContract):
    @pytest.fixture
    def crm(self, crm_simulator: CrmSimulator) -> Iterator[SalesforceClient]:
        config = SalesforceConfig(
            instance_url=crm_simulator.url,
            client_id=DEFAULT_CLIENT_ID,
            client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
            timeout_s=5.0,
        )
        with SalesforceClient(config) as client:
            yield client

    @pytest.fixture
    def crm_control(self, crm_simulator: CrmSimulator) -> Iterator[CrmSandbox]:
        with closing(CrmSandbox(crm_simulator.url)) as control:
            yield control


class TestErpRestAdapter(ErpContract):
    @pytest.fixture
    def erp(self, erp_simulator: ErpSimulator) -> Iterator[ErpRestAdapter]:
        config = ErpConfig(erp_simulator.url, SecretStr(DEFAULT_API_TOKEN), timeout_s=5.0)
        adapter = ErpRestAdapter(config)
        yield adapter
        adapter.close()

    @pytest.fixture
    def erp_control(self, erp_simulator: ErpSimulator) -> Iterator[SandboxErpControl]:
        with ErpSandbox(erp_simulator.url) as sandbox:
            yield SandboxErpControl(sandbox)
