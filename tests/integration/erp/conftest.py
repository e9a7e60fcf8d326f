"""The ERP simulator for the tests that talk to it, on the live PostgreSQL: started once a
module, its clock stopped, seeded with the port contracts' master data, calmed after every
test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator
from sandbox.http import Faults

from port_contracts import ACTIVE, BLOCKED, HELD, PRICE_BOOK, PRODUCTS
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.settings import Settings

NEVER = 3600.0


@pytest.fixture(scope="module")
def simulator(settings: Settings) -> Iterator[ErpSimulator]:
    erp = ErpSimulator(
        settings.postgres_dsn.get_secret_value(),
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
    ).start()
    with ErpSandbox(erp.url) as control:
        control.seed_customers([ACTIVE, HELD, BLOCKED])
        control.seed_products(PRODUCTS)
        control.seed_price_books([PRICE_BOOK])
    yield erp
    erp.stop()


@pytest.fixture
def control(simulator: ErpSimulator) -> Iterator[ErpSandbox]:
    with ErpSandbox(simulator.url) as sandbox:
        yield sandbox
        sandbox.set_faults(**asdict(Faults()))
        sandbox.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)


@pytest.fixture
def erp(simulator: ErpSimulator) -> Iterator[ErpRestAdapter]:
    adapter = ErpRestAdapter(ErpConfig(simulator.url, SecretStr(DEFAULT_API_TOKEN), timeout_s=1.0))
    yield adapter
    adapter.close()


@pytest.fixture
def database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        yield db
