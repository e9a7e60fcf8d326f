"""The port contracts against the real adapters, over HTTP to the sandboxes: the Salesforce
adapter against the CRM simulator, the ERP REST adapter against the ERP simulator on the live
PostgreSQL. The same assertions hold the fakes (tests/unit/test_fake_ports.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing
from decimal import Decimal

import pytest
from pydantic import SecretStr
from sandbox.crm import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, CrmSandbox, CrmSimulator
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from port_contracts import CrmContract, ErpContract
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from revsync.settings import Settings
from runtime_support import wait_for

NEVER = 3600.0


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


class SandboxErpControl:
    """The ERP simulator's control API as the ERP contract drives it."""

    def __init__(self, sandbox: ErpSandbox) -> None:
        self.sandbox = sandbox

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        return self.sandbox.seed_customers(customers)

    def seed_products(self, products: Iterable[Product]) -> int:
        return self.sandbox.seed_products(products)

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        return self.sandbox.seed_price_books(price_books)

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        return self.sandbox.seed_stock(levels)

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        crm_account_id: str | None = None,
    ) -> None:
        self.sandbox.edit_customer(
            customer_id, credit_limit=credit_limit, status=status, crm_account_id=crm_account_id
        )

    def booked(self, external_id: str) -> list[str]:
        return [str(order["id"]) for order in self.sandbox.sales_orders(external_id)]

    def invoice(self, external_id: str) -> None:
        """Lets the ERP's own clock invoice what is open, then stops it again."""

        def invoiced() -> bool:
            return [o["status"] for o in self.sandbox.sales_orders(external_id)] == ["invoiced"]

        self.sandbox.set_clock(invoice_delay_s=0)
        try:
            wait_for(invoiced, timeout_s=20)
        finally:
            self.sandbox.set_clock(invoice_delay_s=NEVER)


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
