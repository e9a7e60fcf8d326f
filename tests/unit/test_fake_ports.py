"""The port contracts against the in-memory fakes the handler tests use: each fake does what
its real adapter does against its sandbox (tests/integration/test_port_adapters.py)."""

from __future__ import annotations

import pytest

from fakes import FakeCrm, FakeErp
from port_contracts import CrmContract, ErpContract


class TestFakeCrm(CrmContract):
    @pytest.fixture
    def fake_crm(self) -> FakeCrm:
        return FakeCrm()

    @pytest.fixture
    def crm(self, fake_crm: FakeCrm) -> FakeCrm:
        return fake_crm

    @pytest.fixture
    def crm_control(self, fake_crm: FakeCrm) -> FakeCrm:
        return fake_crm


class TestFakeErp(ErpContract):
    @pytest.fixture
    def fake_erp(self) -> FakeErp:
        return FakeErp()

    @pytest.fixture
    def erp(self, fake_erp: FakeErp) -> FakeErp:
        return fake_erp

    @pytest.fixture
    def erp_control(self, fake_erp: FakeErp) -> FakeErp:
        return fake_erp
