"""The whole order-to-cash pipeline on NetSuite and on Business Central, each as its
simulator: every order settles, each accepted order is one sales order in the ERP, and each
invoice and shipment reaches the CRM once, while the ERP's answers are lost after the work
is done and it throttles (each for 3 % of its requests: a dozen requests go into an order, so
about half the orders meet one), its concurrency pool is small, and (Business Central) its
notifications come twice. And both at once, each legal entity routed to one of them."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
from sandbox import scenario
from sandbox.erp import ErpSandbox
from sandbox.harness import Pipeline
from test_order_to_cash import journey_gaps, settle

from revsync.ports.erp import Customer, PriceBook, Product, StockLevel
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


ROUTES = {
    entity.code: "netsuite" if entity.region == "NA" else "business-central"
    for entity in scenario.ENTITIES
}
"""North America on NetSuite, Europe on Business Central."""


class EveryErp:
    """Master data seeded into each ERP's books alike (the routes decide which is asked)."""

    def __init__(self, erps: Iterable[ErpSandbox]) -> None:
        self.erps = list(erps)

    def seed_products(self, products: Iterable[Product]) -> int:
        listed = list(products)
        return min(erp.seed_products(listed) for erp in self.erps)

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        listed = list(price_books)
        return min(erp.seed_price_books(listed) for erp in self.erps)

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        listed = list(customers)
        return min(erp.seed_customers(listed) for erp in self.erps)

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        listed = list(levels)
        return min(erp.seed_stock(listed) for erp in self.erps)


@pytest.mark.timeout(600)
def test_each_legal_entitys_orders_settle_once_on_the_erp_it_is_routed_to(
    start_pipeline: Callable[..., Pipeline], rng: random.Random, settings: Settings
) -> None:
    pipeline = start_pipeline(erp_routes=ROUTES)
    assert set(pipeline.erps) == {"netsuite", "business-central"}
    assert "erp-outbox-publisher" not in pipeline.deployables
    data = scenario.seed(pipeline.crm, EveryErp(pipeline.erps.values()), rng)
    planned = list(scenario.orders(data, ORDERS // 2, rng, invalid_share=0.1))
    pipeline.push(planned)

    outcome = settle(pipeline, timeout_s=420)

    shipped = Counter(order.expected for order in planned)[scenario.SHIPPED]
    assert outcome.settled == ORDERS // 2
    assert outcome.counts["shipped"] == outcome.counts["invoiced"] == shipped
    # Each accepted order is one sales order, in the books of its legal entity's ERP only.
    booked = {system: erp.sales_orders() for system, erp in pipeline.erps.items()}
    for system, orders in booked.items():
        assert orders, f"no order reached {system}"
        assert {order["legal_entity"] for order in orders} <= {
            entity for entity, routed in ROUTES.items() if routed == system
        }
    external_ids = [order["external_id"] for orders in booked.values() for order in orders]
    assert len(external_ids) == len(set(external_ids)) == shipped
    crm = pipeline.crm.stats()["records"]
    assert crm["Invoice__c"] == crm["Shipment__c"] == shipped
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0
    assert journey_gaps(pipeline, settings) == []
