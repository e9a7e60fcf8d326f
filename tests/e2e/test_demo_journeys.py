"""The journey of every order of a demo run, checked: orders placed as ``make demo`` places
them (``sandbox/demo.py``), some invalid by design and some from accounts that exist only in
the CRM until their first order masters them, each with its recorded journey complete and in
order, the new customers' orders (which wait for their customer through order-sync's retry
tiers) among them."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from sandbox import scenario
from sandbox.demo import plan_orders
from sandbox.harness import Pipeline
from test_order_to_cash import journey_gaps, settle

from revsync.settings import Settings

pytestmark = pytest.mark.e2e

ORDERS = 200
INVALID_SHARE = 0.1
"""The demo's ``--invalid-share`` default."""
NEW_CUSTOMERS = 5
"""The demo's ``--new-customers`` default: CRM-only accounts per legal entity."""
INVOICE_DELAY_S, SHIP_DELAY_S = 1.0, 2.0
"""The demo's ``--invoice-delay-s`` and ``--ship-delay-s`` defaults."""


def test_every_order_of_a_demo_run_has_its_whole_journey_new_customers_orders_included(
    start_pipeline: Callable[..., Pipeline], rng: random.Random, settings: Settings
) -> None:
    pipeline = start_pipeline(invoice_delay_s=INVOICE_DELAY_S, ship_delay_s=SHIP_DELAY_S)
    planned, prospect_ids = plan_orders(pipeline, ORDERS, INVALID_SHARE, NEW_CUSTOMERS, rng)
    ids = pipeline.push(planned)
    newcomers = [
        order_id
        for order_id, order in zip(ids, planned, strict=True)
        if order.record["AccountId"] in prospect_ids
    ]
    # The run has what makes it a demo's: orders meant to be rejected, and orders of
    # customers the ERP does not know yet, each meant to ship.
    assert any(order.expected != scenario.SHIPPED for order in planned)
    assert newcomers
    assert {pipeline.planned[order_id] for order_id in newcomers} == {scenario.SHIPPED}

    outcome = settle(pipeline, timeout_s=300)

    assert outcome.settled == len(planned) == ORDERS
    assert journey_gaps(pipeline, settings) == []
