"""customer_sync against the in-memory CRM and ERP: accounts mastered once, duplicates for a
steward, the ERP's fields written back without an echo, and ERP-owned fields a person edits
in the CRM set back, never synced."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from contract_fixtures import SCHEMAS_DIR
from customer_sync import logic
from customer_sync.service import CustomerSync
from fakes import FakeCrm, FakeErp
from revsync.connectors.cdc import Integration
from revsync.contracts.catalog import load_catalog
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerUpserted,
    DuplicateCustomerSuspected,
    Event,
    MatchBasis,
    OrderCreated,
)
from revsync.contracts.ownership import ObjectOwnership, Ownership
from revsync.ports.erp import Customer, CustomerDraft, CustomerStatus
from revsync.rules import customers
from revsync.runtime.handler import Decision
from samples import account_change, sample_envelope, sample_event

REVSYNC_USER = "005000000000001AAA"
INTEGRATION = Integration("revsync", REVSYNC_USER)
ACCOUNT = {
    "Name": "Acme Industrial, Inc.",
    "Legal_Entity__c": "US01",
    "CurrencyIsoCode": "USD",
    "BillingCountryCode": "US",
    "BillingStreet": "1 Harbour Road",
    "BillingCity": "Boston",
    "BillingPostalCode": "02110",
    "Tax_Id__c": "12-3456789",
}


@pytest.fixture(scope="module")
def ownership() -> ObjectOwnership:
    return Ownership.load(SCHEMAS_DIR).customer


@dataclass
class World:
    crm: FakeCrm
    erp: FakeErp
    sync: CustomerSync


@pytest.fixture
def world(ownership: ObjectOwnership) -> World:
    crm, erp = FakeCrm(), FakeErp()
    sync = CustomerSync(
        crm=crm,
        erp=erp,
        ownership=ownership,
        integration=INTEGRATION,
        qualify=frozenset(customers.Qualify),
        match=frozenset(logic.MatchRule),
        catalog=load_catalog(SCHEMAS_DIR),
    )
    return World(crm, erp, sync)


def an_account(world: World, **fields: Any) -> str:
    return world.crm.insert("Account", [{**ACCOUNT, **fields}])[0]


def emitted(decision: Decision) -> list[Event]:
    return [emission.event for emission in decision.emits]


def mastered_event(account_id: str, customer: Customer, **fields: Any) -> CustomerMastered:
    values: dict[str, Any] = {
        "crm_account_id": account_id,
        "erp_customer_id": customer.id,
        "customer_number": customer.number or "100001",
        "name": customer.name,
        "legal_entity": customer.legal_entity,
        "currency": customer.currency,
        "status": "ACTIVE",
        "credit_limit": Decimal("50000.0000"),
        "payment_terms": "NET30",
        "blocks": [],
    }
    return sample_event(CustomerMastered, **(values | fields))


def first_order(account_id: str) -> OrderCreated:
    return sample_event(OrderCreated, crm_account_id=account_id, erp_customer_id=None)


# --- logic -------------------------------------------------------------------------------------


def draft(**fields: Any) -> CustomerDraft:
    values: dict[str, Any] = {
        "crm_account_id": "001A",
        "name": "Acme Industrial Inc",
        "legal_entity": "US01",
        "currency": "USD",
        "country_code": "US",
        "tax_id": "12-3456789",
        "duns": "150483782",
    }
    return CustomerDraft(**(values | fields))


def erp_customer(id: str = "C-1", **fields: Any) -> Customer:
    values: dict[str, Any] = {
        "id": id,
        "name": "Someone Else",
        "crm_account_id": None,
        "legal_entity": "US01",
        "status": CustomerStatus.ACTIVE,
        "credit_limit": Decimal(50000),
        "currency": "USD",
        "number": f"1{id[-1]}",
        "country_code": "US",
    }
    return Customer(**(values | fields))


@pytest.mark.parametrize(
    ("customer", "basis"),
    [
        (erp_customer(tax_id="123456789"), MatchBasis.TAX_ID),
        (erp_customer(duns="15-048-3782"), MatchBasis.DUNS),
        (erp_customer(name="ACME Industrial, Inc."), MatchBasis.NAME_COUNTRY),
    ],
    ids=["tax id without its dash", "DUNS with dashes", "name and country"],
)
def test_an_account_matches_an_erp_customer_by_each_rule(
    customer: Customer, basis: MatchBasis
) -> None:
    found = logic.matches(draft(), [customer], frozenset(logic.MatchRule))

    assert [(m.erp_customer_id, m.matched_on) for m in found] == [(customer.id, basis)]


def test_a_rule_switched_off_matches_nothing() -> None:
    customers = [erp_customer(tax_id="123456789"), erp_customer("C-2", name="Acme Industrial")]

    assert logic.matches(draft(), customers, frozenset({logic.MatchRule.DUNS})) == []


def test_the_same_name_in_another_country_is_no_match() -> None:
    customer = erp_customer(name="Acme Industrial", country_code="CA")

    assert logic.matches(draft(), [customer], frozenset(logic.MatchRule)) == []


def test_the_accounts_own_customer_is_no_duplicate() -> None:
    own = erp_customer(crm_account_id="001A", tax_id="12-3456789")

    assert logic.matches(draft(), [own], frozenset(logic.MatchRule)) == []


def test_an_account_missing_what_a_customer_needs_is_refused_naming_the_fields(
    ownership: ObjectOwnership,
) -> None:
    account = {"Id": "001A", "Name": "Acme", "Legal_Entity__c": " ", "CurrencyIsoCode": "USD"}

    with pytest.raises(customers.AccountNotMasterable) as refused:
        customers.draft(account, ownership)

    assert str(refused.value) == (
        "account 001A: Legal_Entity__c, BillingCountryCode empty; an ERP customer needs them"
    )


def test_revsyncs_own_account_change_asks_for_nothing(ownership: ObjectOwnership) -> None:
    change = account_change("001A", user=REVSYNC_USER, Credit_Limit__c=100.0)

    assert logic.plan(change, INTEGRATION, ownership) == []


def test_a_person_editing_an_erp_owned_field_is_overruled_not_synced(
    ownership: ObjectOwnership,
) -> None:
    change = account_change("001A", Credit_Limit__c=999999.0, Phone="555")

    assert logic.plan(change, INTEGRATION, ownership) == [
        logic.AccountStep("001A", sync=False, overruled=("Credit_Limit__c",))
    ]


def test_a_crm_owned_edit_or_the_flag_asks_for_a_sync(ownership: ObjectOwnership) -> None:
    for fields in ({"Name": "Acme Two"}, {"Sync_To_ERP__c": True}):
        assert logic.plan(account_change("001A", **fields), INTEGRATION, ownership) == [
            logic.AccountStep("001A", sync=True)
        ]


def test_a_deleted_account_asks_for_nothing(ownership: ObjectOwnership) -> None:
    assert logic.plan(account_change("001A", "DELETE"), INTEGRATION, ownership) == []


# --- CRM -> ERP -----------------------------------------------------------------------------


def test_a_flagged_account_becomes_one_erp_customer(world: World) -> None:
    account_id = an_account(world, Sync_To_ERP__c=True)
    change = account_change(account_id, Sync_To_ERP__c=True)

    first = emitted(world.sync(change))
    again = emitted(world.sync(change))  # redelivered: the ERP already has it

    customer = world.erp.customer_by_account(account_id)
    assert customer is not None
    assert (customer.name, customer.tax_id, customer.country_code) == (
        "Acme Industrial, Inc.",
        "12-3456789",
        "US",
    )
    assert [type(e) for e in first] == [CustomerUpserted]
    assert isinstance(first[0], CustomerUpserted)
    assert (first[0].created, first[0].erp_customer_id) == (True, customer.id)
    assert again == []


def test_an_account_that_does_not_qualify_is_not_mastered(world: World) -> None:
    account_id = an_account(world)

    assert emitted(world.sync(account_change(account_id, Name="Acme Renamed"))) == []
    assert world.erp.customer_by_account(account_id) is None


def test_an_accounts_first_activated_order_masters_it(world: World) -> None:
    account_id = an_account(world)

    events = emitted(world.sync(first_order(account_id)))

    assert [type(e) for e in events] == [CustomerUpserted]
    assert world.erp.customer_by_account(account_id) is not None


def test_an_order_of_a_mastered_account_or_with_the_rule_off_masters_nothing(
    world: World, ownership: ObjectOwnership
) -> None:
    account_id = an_account(world)
    mastered = sample_event(OrderCreated, crm_account_id=account_id, erp_customer_id="C-9")
    assert emitted(world.sync(mastered)) == []
    flag_only = CustomerSync(
        crm=world.crm,
        erp=world.erp,
        ownership=ownership,
        integration=INTEGRATION,
        qualify=frozenset({customers.Qualify.FLAG}),
        match=frozenset(logic.MatchRule),
        catalog=load_catalog(SCHEMAS_DIR),
    )

    assert emitted(flag_only(first_order(account_id))) == []
    assert world.erp.customer_by_account(account_id) is None


def test_an_account_matching_an_erp_customer_becomes_a_duplicate_not_a_second_customer(
    world: World,
) -> None:
    first = an_account(world, Sync_To_ERP__c=True)
    world.sync(account_change(first, Sync_To_ERP__c=True))
    twin = an_account(world, Name="ACME Industrial", Tax_Id__c="12 3456789", Sync_To_ERP__c=True)

    events = emitted(world.sync(account_change(twin, Sync_To_ERP__c=True)))

    assert world.erp.customer_by_account(twin) is None
    assert [type(e) for e in events] == [DuplicateCustomerSuspected]
    suspected = events[0]
    assert isinstance(suspected, DuplicateCustomerSuspected)
    original = world.erp.customer_by_account(first)
    assert original is not None
    assert [(m.erp_customer_id, m.crm_account_id, m.matched_on) for m in suspected.matches] == [
        (original.id, first, MatchBasis.TAX_ID)
    ]
    assert "3456789" not in suspected.message  # names the rule, never the value


def test_a_crm_owned_edit_of_a_mastered_account_updates_only_what_changed(world: World) -> None:
    account_id = an_account(world, Sync_To_ERP__c=True)
    world.sync(account_change(account_id, Sync_To_ERP__c=True))
    world.crm.update("Account", account_id, {"Name": "Acme Industrial Holdings"})

    events = emitted(world.sync(account_change(account_id, Name="Acme Industrial Holdings")))

    assert [(type(e), getattr(e, "fields", None)) for e in events] == [(CustomerUpserted, ["name"])]
    customer = world.erp.customer_by_account(account_id)
    assert customer is not None
    assert customer.name == "Acme Industrial Holdings"


# --- ERP -> CRM -----------------------------------------------------------------------------


def test_the_erp_number_and_credit_come_back_to_the_account_once(world: World) -> None:
    account_id = an_account(world, Sync_To_ERP__c=True)
    world.sync(account_change(account_id, Sync_To_ERP__c=True))
    customer = world.erp.customer_by_account(account_id)
    assert customer is not None
    event = mastered_event(account_id, customer, customer_number="100042")

    world.sync(event)
    writes = world.crm.calls["update"]
    world.sync(event)  # again, or the ERP's echo of the same values: nothing to write

    account = world.crm.get("Account", account_id)
    assert (account["ERP_Customer_Id__c"], account["ERP_Customer_Number__c"]) == (
        customer.id,
        "100042",
    )
    assert Decimal(str(account["Credit_Limit__c"])) == Decimal(50000)
    assert (account["ERP_Customer_Status__c"], account["Payment_Terms__c"]) == ("Active", "NET30")
    assert world.crm.calls["update"] == writes


def test_a_credit_change_in_the_erp_reaches_the_account(world: World) -> None:
    account_id = an_account(world)
    change = sample_event(
        CreditStatusChanged,
        crm_account_id=account_id,
        status="CREDIT_HOLD",
        credit_limit=Decimal("20000.0000"),
    )

    world.sync(change)

    account = world.crm.get("Account", account_id)
    assert account["ERP_Customer_Status__c"] == "Credit Hold"
    assert Decimal(str(account["Credit_Limit__c"])) == Decimal(20000)


def test_a_person_raising_the_credit_limit_in_the_crm_is_set_back_and_reported(
    world: World,
) -> None:
    account_id = an_account(world, Sync_To_ERP__c=True)
    world.sync(account_change(account_id, Sync_To_ERP__c=True))
    customer = world.erp.customer_by_account(account_id)
    assert customer is not None
    world.sync(mastered_event(account_id, customer))
    world.crm.update("Account", account_id, {"Credit_Limit__c": 999999})
    before = REGISTRY.get_sample_value(
        "revsync_customer_ownership_violations_total", {"field": "Credit_Limit__c"}
    )

    events = emitted(world.sync(account_change(account_id, Credit_Limit__c=999999.0)))

    assert events == []
    assert Decimal(str(world.crm.get("Account", account_id)["Credit_Limit__c"])) == Decimal(
        customer.credit_limit
    )
    after = REGISTRY.get_sample_value(
        "revsync_customer_ownership_violations_total", {"field": "Credit_Limit__c"}
    )
    assert (after or 0) - (before or 0) == 1
    # The ERP's credit limit was not touched.
    unchanged = world.erp.customer_by_account(account_id)
    assert unchanged is not None
    assert unchanged.credit_limit == customer.credit_limit


def test_an_account_gone_from_the_crm_is_skipped(world: World) -> None:
    event = sample_event(
        CreditStatusChanged,
        crm_account_id="001000000000404AAA",
        envelope=sample_envelope(CreditStatusChanged.event_type),
    )

    assert world.sync(event) == Decision()


def test_a_billing_address_edit_as_salesforce_names_it_asks_for_a_sync(
    ownership: ObjectOwnership,
) -> None:
    """Salesforce names a compound address's parts ``BillingAddress.City``."""
    change = account_change("001A", BillingAddress={"City": "Cambridge"})

    assert logic.plan(change, INTEGRATION, ownership) == [logic.AccountStep("001A", sync=True)]


def test_an_overflowed_account_change_reconciles_every_account_changed_since(
    world: World,
) -> None:
    flagged = an_account(world, Sync_To_ERP__c=True)
    unflagged = an_account(world, Name="Beta Tools", Tax_Id__c="98-7654321")
    overflow = account_change("", "GAP_OVERFLOW", commitTimestamp=0)

    events = emitted(world.sync(overflow))

    assert [(type(e), e.key) for e in events] == [(CustomerUpserted, flagged)]
    assert world.erp.customer_by_account(unflagged) is None


def test_an_incomplete_account_is_counted_and_skipped_not_dead_lettered(world: World) -> None:
    """A dead letter would hold back the account's later changes, the fix among them."""
    bare = world.crm.insert("Account", [{"Name": "Bare prospect", "Sync_To_ERP__c": True}])[0]
    before = REGISTRY.get_sample_value("revsync_customer_incomplete_accounts_total") or 0

    assert emitted(world.sync(first_order(bare))) == []
    assert emitted(world.sync(account_change(bare, Sync_To_ERP__c=True))) == []

    after = REGISTRY.get_sample_value("revsync_customer_incomplete_accounts_total") or 0
    assert after - before == 2
    assert world.erp.customer_by_account(bare) is None
    world.crm.update("Account", bare, {k: v for k, v in ACCOUNT.items() if k != "Name"})
    events = emitted(world.sync(account_change(bare, Legal_Entity__c="US01")))
    assert [type(e) for e in events] == [CustomerUpserted]


def test_a_billing_address_edit_of_a_mastered_account_reaches_the_erp(world: World) -> None:
    account_id = an_account(world, Sync_To_ERP__c=True)
    world.sync(account_change(account_id, Sync_To_ERP__c=True))
    world.crm.update("Account", account_id, {"BillingCity": "Cambridge"})

    events = emitted(world.sync(account_change(account_id, BillingAddress={"City": "Cambridge"})))

    assert [(type(e), getattr(e, "fields", None)) for e in events] == [
        (CustomerUpserted, ["billing_city"])
    ]
    customer = world.erp.customer_by_account(account_id)
    assert customer is not None
    assert customer.billing_address is not None
    assert customer.billing_address.city == "Cambridge"
