"""Customer master sync end to end, every service running: accounts that exist only in the CRM
become one ERP customer each, their ERP numbers come back, their orders wait for them and
ship; an account matching an ERP customer (one seeded there, or one just mastered from another
account) becomes a steward's exception, listed by the exception console's API, not a second
customer; a person's edit of an ERP-owned field in the CRM is set back, never synced."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from pydantic import SecretStr
from sandbox import scenario
from sandbox.erp.simulator import DEFAULT_API_TOKEN
from sandbox.harness import Pipeline
from test_console import api_session, worklist

from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.ports.erp import Customer
from revsync.settings import Settings
from runtime_support import wait_for

STEWARD = ("stella", "viewer", "a-long-steward-password")
"""Who looks at the console's worklist: a viewer sees what an operator sees."""


def erp_customers(settings: Settings, **where: str) -> list[dict[str, Any]]:
    """The ERP sandbox's customers with these column values."""
    clauses = " AND ".join(f"{column} = %s" for column in where)
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        cursor = connection.execute(
            f"SELECT id, number, crm_account_id, tax_id, credit_limit FROM erp.customers "  # noqa: S608
            f"WHERE {clauses}",
            tuple(where.values()),
        )
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def open_exceptions(settings: Settings, account_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        rows = connection.execute(
            "SELECT reason, status FROM revsync_exceptions WHERE order_key = %s",
            (account_id,),
        ).fetchall()
    return [(str(reason), str(status)) for reason, status in rows]


def erp_customer(pipeline: Pipeline, account_id: str) -> Customer:
    """The ERP customer mastered from ``account_id``, read through the ERP's API."""
    erp = ErpRestAdapter(ErpConfig(pipeline.erp_url, SecretStr(DEFAULT_API_TOKEN)))
    try:
        customer = erp.customer_by_account(account_id)
    finally:
        erp.close()
    assert customer is not None, account_id
    return customer


def test_crm_only_customers_are_mastered_once_and_their_orders_ship(
    start_pipeline: Callable[..., Pipeline], rng: random.Random, settings: Settings
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    entity = scenario.ENTITIES[0]
    # Two prospects mastered by their first order, one by its flag before any order.
    prospects = scenario.crm_only_accounts(pipeline.crm, entity, 2, rng)
    (flagged,) = scenario.crm_only_accounts(pipeline.crm, entity, 1, rng, Sync_To_ERP__c=True)
    twin = scenario.duplicate_account(pipeline.crm, data, entity)
    template = next(
        order
        for order in scenario.orders(data, 8, rng, invalid_share=0)
        if order.record["Legal_Entity__c"] == entity.code
    )
    orders = [
        scenario.PlannedOrder(template.record | {"AccountId": account.account_id}, scenario.SHIPPED)
        for account in (*prospects, prospects[0])  # the first one's second order too
    ]
    pipeline.push(orders)

    outcome = pipeline.wait_settled(180)
    assert (outcome.pending, outcome.wrong) == (0, [])

    # One ERP customer each, its number back on the account.
    for account in (*prospects, flagged):
        (customer,) = erp_customers(settings, crm_account_id=account.account_id)
        crm = pipeline.crm.records("Account", Id=account.account_id)[0]
        assert (crm["ERP_Customer_Id__c"], crm["ERP_Customer_Number__c"]) == (
            customer["id"],
            customer["number"],
        )
        assert crm["ERP_Customer_Status__c"] == "Active"
        assert Decimal(str(crm["Credit_Limit__c"])) == customer["credit_limit"]

    # The twin matches an ERP customer by its tax id: no second customer, a steward's case.
    pipeline.crm.update("Account", twin.account_id, {"Sync_To_ERP__c": True})
    wait_for(
        lambda: ("DUPLICATE_CUSTOMER", "open") in open_exceptions(settings, twin.account_id),
        timeout_s=60,
    )
    assert erp_customers(settings, crm_account_id=twin.account_id) == []
    assert twin.duplicates is not None
    assert len(erp_customers(settings, tax_id=str(twin.duplicates.tax_id))) == 1

    # A twin of the account this test mastered by its flag (its tax id written with spaces,
    # another name): caught the same way, though its original came from the CRM minutes ago.
    (original,) = erp_customers(settings, crm_account_id=flagged.account_id)
    mastered_here = scenario.MasterData(
        customers={flagged.account_id: erp_customer(pipeline, flagged.account_id)}
    )
    look_alike = scenario.duplicate_account(
        pipeline.crm, mastered_here, entity, Sync_To_ERP__c=True
    )
    assert look_alike.duplicates is not None
    assert look_alike.duplicates.crm_account_id == flagged.account_id
    assert look_alike.tax_id != flagged.tax_id
    # The steward sees both cases in the exception console, through its JSON API.
    url = pipeline.start_console({STEWARD[0]: (STEWARD[1], STEWARD[2])})
    cookies, _ = api_session(url, STEWARD[0], STEWARD[2])
    consumer = pipeline.catalog.consumer_of("customer_sync")

    def listed(account_id: str) -> list[dict[str, Any]]:
        found = worklist(url, cookies, reason="DUPLICATE_CUSTOMER", order=account_id)
        items: list[dict[str, Any]] = found["items"]
        return items

    wait_for(lambda: bool(listed(look_alike.account_id)), timeout_s=60)
    (case,) = listed(look_alike.account_id)
    assert (case["kind"], case["status"], case["consumer"], case["order_key"]) == (
        "rejection",
        "open",
        consumer,
        look_alike.account_id,
    )
    assert case["summary"].startswith(f"matches ERP customer {original['number']} by tax id")
    every = worklist(url, cookies, reason="DUPLICATE_CUSTOMER", consumer=consumer)
    assert {item["order_key"] for item in every["items"]} == {
        twin.account_id,
        look_alike.account_id,
    }
    assert every["total"] == 2
    # No second customer: none for the twin, and the original is the tax id's only one.
    assert erp_customers(settings, crm_account_id=look_alike.account_id) == []
    assert erp_customers(settings, tax_id=str(original["tax_id"])) == [original]

    # A rep raising an ERP-owned field in the CRM: set back, the ERP untouched.
    mastered = prospects[1].account_id
    (before,) = erp_customers(settings, crm_account_id=mastered)
    pipeline.crm.update("Account", mastered, {"Credit_Limit__c": 9_999_999})

    def set_back() -> bool:
        crm = pipeline.crm.records("Account", Id=mastered)[0]
        return bool(Decimal(str(crm["Credit_Limit__c"])) == before["credit_limit"])

    wait_for(set_back, timeout_s=60)
    assert erp_customers(settings, crm_account_id=mastered) == [before]
    assert pipeline.metrics()["revsync_customer_ownership_violations_total"] >= 1

    # The ERP's own change comes back to the CRM.
    pipeline.erp.edit_customer(before["id"], credit_limit=Decimal("75000.0000"))

    def credit_synced() -> bool:
        crm = pipeline.crm.records("Account", Id=mastered)[0]
        return Decimal(str(crm["Credit_Limit__c"])) == Decimal(75000)

    wait_for(credit_synced, timeout_s=60)
