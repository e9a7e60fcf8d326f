"""The ERP simulator's customers and stock: every customer change written with its outbox row
in one transaction (and none for a customer no CRM account masters), an ERP user's edits, the
credit exposure as orders move through invoicing and payment, and its answers over plain
HTTP."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from sandbox.erp import DEFAULT_API_TOKEN, ErpSandbox, ErpSimulator

from erp_outbox_publisher.logic import ErpOutboxRow, canonical_event
from port_contracts import (
    ACTIVE,
    BLOCKED,
    HELD,
    PRICE_BOOK,
    PRODUCTS,
    a_draft,
    a_key,
    order_request,
)
from revsync.connectors.erp import ErpRestAdapter, customer_body
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerStatus,
    Event,
)
from revsync.ports.erp import CustomerStatus as ErpCustomerStatus
from revsync.ports.erp import StockLevel
from runtime_support import wait_for

AUTHORISED = {"Authorization": f"Bearer {DEFAULT_API_TOKEN}"}


def customer_events(database: psycopg.Connection[Any], crm_account_id: str) -> list[Event]:
    """The canonical events of the account's customer rows in the ERP outbox, in order."""
    rows = database.execute(
        "SELECT id, aggregatetype, aggregateid, type, payload, created_at FROM erp.outbox "
        "WHERE aggregatetype = 'customer' AND aggregateid = %s ORDER BY seq",
        (crm_account_id,),
    ).fetchall()
    return [canonical_event(ErpOutboxRow(*row)) for row in rows]


def written_together(database: psycopg.Connection[Any], crm_account_id: str) -> bool:
    """Whether the customer's row and its latest outbox row were written by one transaction."""
    row = database.execute(
        "SELECT c.xmin::text = o.xmin::text FROM erp.customers c JOIN erp.outbox o "
        "ON o.aggregateid = c.crm_account_id WHERE c.crm_account_id = %s "
        "ORDER BY o.seq DESC LIMIT 1",
        (crm_account_id,),
    ).fetchone()
    assert row is not None, "no outbox row"
    return bool(row[0])


def test_a_customers_creation_and_each_change_write_customer_mastered_with_it(
    erp: ErpRestAdapter, database: psycopg.Connection[Any]
) -> None:
    draft = a_draft()
    created = erp.upsert_customer(draft, a_key()).customer
    assert written_together(database, draft.crm_account_id)

    erp.upsert_customer(draft, a_key())  # nothing new: no row
    erp.upsert_customer(replace(draft, name="Contract Widgets Renamed"), a_key())

    assert written_together(database, draft.crm_account_id)
    first, renamed = customer_events(database, draft.crm_account_id)
    assert isinstance(first, CustomerMastered)
    assert isinstance(renamed, CustomerMastered)
    assert (first.name, renamed.name) == (draft.name, "Contract Widgets Renamed")
    assert (first.key, renamed.key) == (draft.crm_account_id, draft.crm_account_id)
    assert (first.erp_customer_id, first.customer_number) == (created.id, created.number)
    assert (first.status, first.credit_limit) == (CustomerStatus.ACTIVE, Decimal(50000))
    assert (first.currency, first.payment_terms, first.blocks) == ("USD", "NET30", [])
    assert first.changed_at <= renamed.changed_at


def test_an_erp_users_edits_write_the_credit_change_with_its_exposure(
    erp: ErpRestAdapter, control: ErpSandbox, database: psycopg.Connection[Any]
) -> None:
    draft = a_draft()
    customer = erp.upsert_customer(draft, a_key()).customer
    order = erp.create_sales_order(order_request(customer_id=customer.id), a_key())

    control.edit_customer(customer.id, payment_terms="NET45")
    held = control.edit_customer(
        customer.id, credit_limit=Decimal(100), status=ErpCustomerStatus.CREDIT_HOLD
    )
    assert written_together(database, draft.crm_account_id)
    control.edit_customer(customer.id, status=ErpCustomerStatus.CREDIT_HOLD)  # no change
    blocked = control.edit_customer(customer.id, blocks=["order", "billing"])

    events = customer_events(database, draft.crm_account_id)
    assert [type(e) for e in events] == [
        CustomerMastered,
        CustomerMastered,
        CustomerMastered,
        CreditStatusChanged,
        CustomerMastered,
    ]
    credit = events[3]
    assert isinstance(credit, CreditStatusChanged)
    assert (credit.status, credit.currency, credit.credit_limit) == (
        CustomerStatus.CREDIT_HOLD,
        "USD",
        Decimal(100),
    )
    assert (credit.exposure, credit.available_credit) == (order.grand_total, Decimal("-105.2"))
    last = events[-1]
    assert isinstance(last, CustomerMastered)
    assert (last.payment_terms, last.blocks, last.status) == (
        "NET45",
        ["order", "billing"],
        CustomerStatus.CREDIT_HOLD,
    )
    assert (held["status"], held["credit_limit"]) == ("credit_hold", "100.0000")
    assert blocked["blocks"] == ["order", "billing"]


def test_a_customer_no_account_masters_writes_no_outbox_rows(
    control: ErpSandbox, database: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex[:8]
    erp_only = replace(ACTIVE, id=f"C-ERP-{tag}", crm_account_id=None, number=None)
    seeded = replace(ACTIVE, id=f"C-SEED-{tag}", crm_account_id=f"001{tag}", number=None)
    before = control.stats().outbox_rows

    control.seed_customers([erp_only, seeded])
    control.edit_customer(erp_only.id, credit_limit=Decimal(1), status=ErpCustomerStatus.BLOCKED)

    assert control.stats().outbox_rows == before, "neither a seed nor an unkeyed edit"
    changed = control.edit_customer(seeded.id, credit_limit=Decimal(1))
    assert changed["credit_limit"] == "1.0000"
    assert [type(e) for e in customer_events(database, f"001{tag}")] == [
        CustomerMastered,
        CreditStatusChanged,
    ]


def test_a_steward_linking_a_customer_to_an_account_writes_its_first_row(
    erp: ErpRestAdapter, control: ErpSandbox, database: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex[:8]
    account, taken = f"001L{tag}", erp.upsert_customer(a_draft(), a_key()).customer
    erp_only = replace(ACTIVE, id=f"C-LINK-{tag}", crm_account_id=None, number=None)
    control.seed_customers([erp_only])

    linked = control.edit_customer(erp_only.id, crm_account_id=account)

    assert linked["crm_account_id"] == account
    [event] = customer_events(database, account)
    assert isinstance(event, CustomerMastered)
    assert (event.key, event.erp_customer_id) == (account, erp_only.id)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        control.edit_customer(erp_only.id, crm_account_id=str(taken.crm_account_id))
    assert refused.value.response.status_code == 409
    assert erp.customer_by_account(account) is not None


def test_exposure_counts_open_orders_and_unpaid_invoices(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    customer = erp.upsert_customer(a_draft(), a_key()).customer
    requests = [order_request(customer_id=customer.id) for _ in range(3)]
    for request in requests:
        erp.create_sales_order(request, a_key())
    erp.cancel_sales_order(requests[2].external_id, "not wanted", a_key())

    def statuses() -> list[str]:
        return [control.sales_orders(r.external_id)[0]["status"] for r in requests[:2]]

    control.set_clock(invoice_delay_s=0)
    wait_for(lambda: statuses() == ["invoiced", "invoiced"], timeout_s=10)
    unpaid = erp.credit(customer.id)
    control.set_clock(payment_delay_s=0)

    def exposure() -> Decimal | None:
        position = erp.credit(customer.id)
        return None if position is None else position.exposure

    wait_for(lambda: exposure() == 0, timeout_s=10)
    assert unpaid is not None
    assert unpaid.exposure == Decimal("410.4000"), "two invoices due, the cancelled order not"


def test_seeded_customers_keep_their_numbers_and_their_accounts_are_their_own(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    tag = uuid.uuid4().hex[:8]
    first = replace(ACTIVE, id=f"C-A-{tag}", crm_account_id=f"001A{tag}", number=None)
    control.seed_customers([first])
    numbered = erp.customer(first.id)
    control.seed_customers([replace(first, name="Renamed Corp")])
    renamed = erp.customer(first.id)

    assert numbered is not None
    assert renamed is not None
    assert (renamed.number, renamed.name) == (numbered.number, "Renamed Corp")
    twin = replace(first, id=f"C-B-{tag}")
    with pytest.raises(httpx.HTTPStatusError) as refused:
        control.seed_customers([twin])
    assert refused.value.response.status_code == 409
    same_number = replace(first, id=f"C-C-{tag}", crm_account_id=None, number=numbered.number)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        control.seed_customers([same_number])
    assert refused.value.response.json()["code"] == "duplicate_value"


def test_an_edit_of_an_unknown_customer_or_to_an_unknown_block_is_refused(
    simulator: ErpSimulator,
) -> None:
    url = f"{simulator.url}/__sandbox/customers"
    unknown = httpx.patch(f"{url}/C-NOBODY", json={"status": "blocked"})
    bad_block = httpx.patch(f"{url}/{ACTIVE.id}", json={"blocks": ["everything"]})
    negative = httpx.patch(f"{url}/{ACTIVE.id}", json={"credit_limit": "-1"})

    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (bad_block.status_code, negative.status_code) == (400, 400)


# --- over plain HTTP --------------------------------------------------------------------------


def test_an_upsert_needs_a_key_and_is_replayed_under_it(simulator: ErpSimulator) -> None:
    draft = a_draft()
    url = f"{simulator.url}/api/v1/customers/by-external-id/{draft.crm_account_id}"
    body = customer_body(draft)
    keyed = {**AUTHORISED, "Idempotency-Key": a_key()}

    keyless = httpx.put(url, json=body, headers=AUTHORISED)
    first = httpx.put(url, json=body, headers=keyed)
    again = httpx.put(url, json=body, headers=keyed)
    other = httpx.put(url, json={**body, "name": "Other Name"}, headers=keyed)

    assert (keyless.status_code, keyless.json()["code"]) == (400, "idempotency_key_required")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    answer = first.json()
    assert answer["created"] is True
    assert answer["customer"]["crm_account_id"] == draft.crm_account_id
    assert answer["customer"]["billing_address"] == body["billing_address"]
    assert answer["customer"]["id"] == f"C-{answer['customer']['number']}"
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


def test_a_refused_customer_is_told_by_code_and_field_never_by_its_value(
    simulator: ErpSimulator,
) -> None:
    draft = a_draft(duns="15-048-37X2")
    answer = httpx.put(
        f"{simulator.url}/api/v1/customers/by-external-id/{draft.crm_account_id}",
        json=customer_body(draft),
        headers={**AUTHORISED, "Idempotency-Key": a_key()},
    )

    assert answer.status_code == 422
    refusal = answer.json()
    assert (refusal["code"], refusal["field"]) == ("INVALID_CUSTOMER", "duns")
    assert "37X2" not in refusal["message"]


def test_a_search_says_which_criteria_each_customer_met(
    erp: ErpRestAdapter, simulator: ErpSimulator
) -> None:
    draft = a_draft(country_code="DE")
    customer = erp.upsert_customer(draft, a_key()).customer
    url = f"{simulator.url}/api/v1/customers"

    by_account = httpx.get(url, params={"external_id": draft.crm_account_id}, headers=AUTHORISED)
    search = httpx.get(
        url,
        params={"tax_id": draft.tax_id, "name": draft.name.upper(), "country": "de"},
        headers=AUTHORISED,
    )

    assert [c["id"] for c in by_account.json()["items"]] == [customer.id]
    [found] = search.json()["items"]
    assert (found["id"], found["matched_on"]) == (customer.id, ["tax_id", "name_country"])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"name": "Acme"},
        {"country": "US"},
        {"external_id": "001A", "tax_id": "12-3456789"},
        {"colour": "red"},
    ],
    ids=["nothing", "name-alone", "country-alone", "external-id-and-more", "unknown"],
)
def test_a_search_without_a_whole_criterion_is_refused(
    simulator: ErpSimulator, params: dict[str, str]
) -> None:
    answer = httpx.get(f"{simulator.url}/api/v1/customers", params=params, headers=AUTHORISED)

    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")


def test_credit_of_an_unknown_customer_and_a_malformed_availability_request(
    simulator: ErpSimulator,
) -> None:
    credit = httpx.get(f"{simulator.url}/api/v1/customers/C-NOBODY/credit", headers=AUTHORISED)
    availability = httpx.post(
        f"{simulator.url}/api/v1/availability", json={"skus": "PC-TIE"}, headers=AUTHORISED
    )

    assert (credit.status_code, credit.json()["code"]) == (404, "not_found")
    assert (availability.status_code, availability.json()["code"]) == (400, "invalid_request")


def test_a_reset_empties_customers_and_stock_and_restarts_numbers(
    erp: ErpRestAdapter, control: ErpSandbox
) -> None:
    control.seed_stock([StockLevel("PC-TIE", "NA", Decimal(5), None)])
    erp.upsert_customer(a_draft(), a_key())

    control.reset()
    try:
        after = erp.upsert_customer(a_draft(), a_key()).customer
        assert erp.stock(["PC-TIE"], "NA") == {}
        assert after.number == "100001"
        assert control.stats().outbox_rows == 1
    finally:
        control.seed_customers([ACTIVE, HELD, BLOCKED])
        control.seed_products(PRODUCTS)
        control.seed_price_books([PRICE_BOOK])
