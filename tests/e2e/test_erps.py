"""The whole order-to-cash pipeline on NetSuite and on Business Central, each as its
simulator: every order settles, each accepted order is one sales order in the ERP, and each
invoice and shipment reaches the CRM once, while the ERP's answers are lost after the work
is done and it throttles (each for 3 % of its requests: a dozen requests go into an order, so
about half the orders meet one), its concurrency pool is small, and (Business Central) its
notifications come twice."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest
from sandbox import scenario
from sandbox.harness import Pipeline
from test_order_to_cash import journey_gaps, settle

from revsync.settings import Settings

pytestmark = pytest.mark.e2e

ORDERS = 100
LOST_ANSWER_S = 3.0
"""How long the ERP holds an answer it will never send: past the services' deadline."""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("erp_system", ["netsuite", "business-central"])
def test_every_order_settles_once_on_the_erp_despite_lost_answers_and_throttling(
    start_pipeline: Callable[..., Pipeline],
    rng: random.Random,
    settings: Settings,
    erp_system: str,
) -> None:
    pipeline = start_pipeline(erp_system=erp_system, service_env={"REVSYNC_HTTP_TIMEOUT_S": "2"})
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    pipeline.erp.set_faults(timeout_rate=0.03, hang_s=LOST_ANSWER_S, throttle_rate=0.03)
    pipeline.sandbox_erp.harden(pipeline.erp_url)
    planned = list(scenario.orders(data, ORDERS, rng, invalid_share=0.1))
    pipeline.push(planned)

    outcome = settle(pipeline, timeout_s=420)

    shipped = Counter(order.expected for order in planned)[scenario.SHIPPED]
    assert outcome.settled == ORDERS
    assert outcome.counts["shipped"] == outcome.counts["invoiced"] == shipped
    # The ERP: one sales order per accepted CRM order, however often its create was retried.
    orders = pipeline.erp.sales_orders()
    assert len(orders) == shipped
    assert len({order["external_id"] for order in orders}) == shipped
    # The CRM: one invoice and one shipment per shipped order, repeated notifications or not.
    crm = pipeline.crm.stats()["records"]
    assert crm["Invoice__c"] == crm["Shipment__c"] == shipped
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0
    # Every order's journey is whole. Not always in order: an ERP whose answer to a create was
    # lost may invoice and ship the order before revsync, asking again, learns it was accepted.
    assert journey_gaps(pipeline, settings, in_order=False) == []
