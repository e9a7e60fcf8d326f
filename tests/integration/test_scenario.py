"""The scenario's master data in both sandboxes, as a customer scenario needs it: ERP customers
with their tax ids, DUNS and numbers, stock for every SKU in every region, CRM accounts the
ERP has no customer for, and one that duplicates an ERP customer by its tax id."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import pytest
from pydantic import SecretStr
from sandbox import scenario
from sandbox.crm import CrmSandbox, CrmSimulator
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.ports.erp import CustomerQuery
from revsync.settings import Settings

NEVER = 3600.0
US01 = scenario.ENTITIES[0]


@dataclass
class Seeded:
    crm: CrmSandbox
    erp: ErpRestAdapter
    data: scenario.MasterData


@pytest.fixture(scope="module")
def seeded(settings: Settings) -> Iterator[Seeded]:
    crm = CrmSimulator(seed=11).start()
    # No reset: the ERP schema is shared; the scenario's customers are upserted by their ids.
    erp = ErpSimulator(
        settings.postgres_dsn.get_secret_value(), invoice_delay_s=NEVER, ship_delay_s=NEVER
    ).start()
    adapter = ErpRestAdapter(ErpConfig(erp.url, SecretStr(DEFAULT_API_TOKEN), timeout_s=5.0))
    try:
        with closing(CrmSandbox(crm.url)) as crm_control, ErpSandbox(erp.url) as erp_control:
            data = scenario.seed(crm_control, erp_control, random.Random(7))  # noqa: S311
            yield Seeded(crm_control, adapter, data)
    finally:
        adapter.close()
        erp.stop()
        crm.stop()


def test_each_erp_customer_carries_its_number_tax_id_and_duns(seeded: Seeded) -> None:
    customers = list(seeded.data.customers.values())

    assert len(customers) == 12 * len(scenario.ENTITIES)
    for customer in customers:
        assert seeded.erp.customer_by_account(str(customer.crm_account_id)) == customer
    assert len({c.number for c in customers}) == len(customers)
    assert len({c.tax_id for c in customers}) == len(customers)
    assert len({c.duns for c in customers}) == len(customers)
    for account_id in seeded.data.unmastered_accounts:
        assert seeded.erp.customer_by_account(account_id) is None


def test_every_sku_is_stocked_in_every_region_and_a_short_one_says_when_more_comes(
    seeded: Seeded,
) -> None:
    skus = [*scenario.SKUS, scenario.DISCONTINUED]
    for region in {entity.region for entity in scenario.ENTITIES}:
        levels = seeded.erp.stock(skus, region)
        assert sorted(levels) == sorted(skus)
        short = [level for level in levels.values() if level.quantity < scenario.LOW_STOCK]
        assert short
        assert all(level.available_on is not None for level in short)
        assert all(
            level.available_on is None
            for level in levels.values()
            if level.quantity >= scenario.LOW_STOCK
        )


def test_crm_only_accounts_have_what_mastering_needs_and_no_erp_customer(seeded: Seeded) -> None:
    rng = random.Random(3)  # noqa: S311 - repeatable accounts
    made = scenario.crm_only_accounts(seeded.crm, US01, 3, rng, Sync_To_ERP__c=True)

    assert len({account.tax_id for account in made}) == 3
    for account in made:
        [record] = seeded.crm.records("Account", Id=account.account_id)
        assert (record["Name"], record["Tax_Id__c"]) == (account.name, account.tax_id)
        assert (record["Legal_Entity__c"], record["CurrencyIsoCode"]) == ("US01", "USD")
        assert (record["BillingCountryCode"], record["BillingCity"]) == ("US", US01.city)
        assert record["Sync_To_ERP__c"] is True
        assert record["ERP_Customer_Id__c"] is None
        assert account.duplicates is None
        assert seeded.erp.customer_by_account(account.account_id) is None
        query = CustomerQuery(tax_id=account.tax_id, name=account.name, country_code="US")
        assert seeded.erp.find_customers(query) == []


def test_the_duplicate_account_matches_an_erp_customer_by_tax_id_alone(seeded: Seeded) -> None:
    duplicate = scenario.duplicate_account(seeded.crm, seeded.data, US01)

    original = duplicate.duplicates
    assert original is not None
    assert original.crm_account_id != duplicate.account_id
    assert duplicate.tax_id != original.tax_id, "written another way"
    by_tax_id = seeded.erp.find_customers(CustomerQuery(tax_id=duplicate.tax_id))
    by_name = seeded.erp.find_customers(CustomerQuery(name=duplicate.name, country_code="US"))
    assert [c.id for c in by_tax_id] == [original.id]
    assert by_name == []
    assert seeded.erp.customer_by_account(duplicate.account_id) is None
    [record] = seeded.crm.records("Account", Id=duplicate.account_id)
    assert (record["Tax_Id__c"], record["Legal_Entity__c"]) == (duplicate.tax_id, "US01")
