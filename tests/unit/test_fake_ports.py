"""The port contracts against the in-memory fakes the handler tests use: each fake does what
its real adapter does against its sandbox (tests/integration/test_port_adapters.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import FakeCrm, FakeErp
from port_contracts import ACTIVE, HELD, CrmContract, ErpContract


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


def test_the_fake_erp_refuses_a_seed_that_would_give_two_customers_one_account() -> None:
    """As the sandbox answers 409: an account, or a customer number, is one customer's."""
    erp = FakeErp()
    erp.seed_customers([ACTIVE])

    for twin in (replace(ACTIVE, id="C-PC-TWIN"), replace(HELD, number=ACTIVE.number)):
        with pytest.raises(RuntimeError, match="is another's"):
            erp.seed_customers([twin])

    assert erp.customer("C-PC-TWIN") is None
    assert erp.customer(HELD.id) is None


def test_the_fake_erp_refuses_to_link_a_customer_to_anothers_account() -> None:
    erp = FakeErp()
    erp.seed_customers([ACTIVE, replace(HELD, crm_account_id=None)])

    with pytest.raises(RuntimeError, match="another's"):
        erp.edit_customer(HELD.id, crm_account_id=ACTIVE.crm_account_id)

    assert erp.customer_by_account(str(ACTIVE.crm_account_id)) == erp.customer(ACTIVE.id)
