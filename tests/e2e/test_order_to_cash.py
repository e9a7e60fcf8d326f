"""Orders from CRM change data capture to the ERP and back, with every service running."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import psycopg
from confluent_kafka import Producer
from pydantic import SecretStr
from sandbox import scenario
from sandbox.crm.model import record_id
from sandbox.erp.simulator import DEFAULT_API_TOKEN
from sandbox.harness import Outcome, Pipeline

from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.contracts.catalog import TopicFormat
from revsync.contracts.events import (
    InvoicePosted,
    OrderAccepted,
    OrderCreated,
    OrderRejected,
    ShipmentConfirmed,
)
from revsync.ports.erp import Address, SalesOrderLine, SalesOrderRequest
from revsync.runtime import headers as h
from revsync.settings import Settings
from runtime_support import read_topic, wait_for


def settle(pipeline: Pipeline, timeout_s: float = 180) -> Outcome:
    outcome = pipeline.wait_settled(timeout_s)
    assert not outcome.wrong, outcome.wrong[:5]
    assert outcome.pending == 0, f"{outcome.pending} orders did not settle: {outcome.counts}"
    return outcome


MILESTONES = {
    scenario.SHIPPED: (
        ("order_sync", "processed", "com.salesforce.cdc.OrderChangeEvent"),
        ("order_sync", "emitted", OrderCreated.event_type),
        ("order_sync", "processed", OrderCreated.event_type),
        ("order_sync", "emitted", OrderAccepted.event_type),
        ("invoice_sync", "processed", InvoicePosted.event_type),
        ("fulfillment_sync", "processed", ShipmentConfirmed.event_type),
    ),
    "rejected": (
        ("order_sync", "processed", "com.salesforce.cdc.OrderChangeEvent"),
        ("order_sync", "emitted", OrderRejected.event_type),
    ),
}
"""What every order's journey shows, by how it ends: in this order, but for the invoice and the
shipment, which each follow the acceptance in either order."""


def journey_gaps(pipeline: Pipeline, settings: Settings, *, in_order: bool = True) -> list[str]:
    """Each pushed order whose recorded journey lacks one of its milestones, has them out of
    order (unless ``in_order`` is false: an ERP whose answer to a create was lost may invoice
    and ship the order before revsync learns it was accepted), or whose order row lacks a
    stage it reached."""
    consumers = {
        service: pipeline.catalog.consumer_of(service)
        for service in ("order_sync", "invoice_sync", "fulfillment_sync")
    }
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        rows = connection.execute(
            "SELECT order_key, consumer, outcome, event_type FROM revsync_journey "
            "WHERE order_key = ANY(%s) AND consumer = ANY(%s) ORDER BY at, seq",
            (list(pipeline.planned), list(consumers.values())),
        ).fetchall()
        stages: dict[str, list[bool]] = dict(
            connection.execute(
                "SELECT crm_order_id, ARRAY[activated_at IS NOT NULL, accepted_at IS NOT NULL, "
                "invoiced_at IS NOT NULL, shipped_at IS NOT NULL] FROM revsync_orders "
                "WHERE crm_order_id = ANY(%s)",
                (list(pipeline.planned),),
            ).fetchall()
        )
    journeys: dict[str, list[tuple[str, str, str]]] = {}
    for key, consumer, outcome, event_type in rows:
        journeys.setdefault(key, []).append((consumer, outcome, event_type))
    gaps = []
    for order_id, expected in pipeline.planned.items():
        wanted = [
            (consumers[service], outcome, event_type)
            for service, outcome, event_type in MILESTONES.get(expected, MILESTONES["rejected"])
        ]
        steps = journeys.get(order_id, [])
        found = [steps.index(milestone) if milestone in steps else -1 for milestone in wanted]
        # The invoice and the shipment each come after the acceptance; the ERP posts them
        # independently, so either may be synced first.
        chain = [*found[:4], min(found[4:])] if len(found) > 4 else found
        if -1 in found or (in_order and chain != sorted(chain)):
            gaps.append(f"{order_id} ({expected}): {steps}")
        elif expected == scenario.SHIPPED and stages.get(order_id) != [True] * 4:
            gaps.append(f"{order_id}: stages {stages.get(order_id)}")
    return gaps


def dead_letters(pipeline: Pipeline, service: str) -> str:
    return pipeline.catalog.dead_letter_topic(pipeline.catalog.consumer_of(service))


def test_a_thousand_orders_each_reach_their_end_state_once(
    start_pipeline: Callable[..., Pipeline], rng: random.Random, settings: Settings
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    planned = list(scenario.orders(data, 1000, rng, invalid_share=0.1))
    pipeline.push(planned)

    outcome = settle(pipeline)

    expected = Counter(order.expected for order in planned)
    shipped = expected[scenario.SHIPPED]
    assert outcome.settled == 1000
    assert outcome.counts["rejected"] == 1000 - shipped
    assert outcome.counts["shipped"] == outcome.counts["invoiced"] == shipped
    # The ERP: one sales order per accepted CRM order, and no create ever repeated.
    orders = pipeline.erp.sales_orders()
    assert len(orders) == shipped
    assert len({order["external_id"] for order in orders}) == shipped
    assert {order["status"] for order in orders} == {"shipped"}
    stats = pipeline.erp.stats()
    assert stats.create_requests == shipped
    assert stats.invoices == stats.shipments == shipped
    # The CRM: one invoice and one shipment per shipped order.
    crm = pipeline.crm.stats()["records"]
    assert crm["Invoice__c"] == crm["Shipment__c"] == shipped
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0
    # The journey of every order is complete: each of its events, in order, with its outcome.
    assert journey_gaps(pipeline, settings) == []


def test_duplicated_change_events_create_each_erp_order_once(
    start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    pipeline.crm.set_cdc(duplicate_rate=1.0)
    planned = list(scenario.orders(data, 100, rng, invalid_share=0.0))
    pipeline.push(planned)

    settle(pipeline)

    assert pipeline.erp.stats().create_requests == 100
    assert len(pipeline.erp.sales_orders()) == 100
    assert pipeline.metrics()["revsync_duplicates_skipped_total"] >= 200


def test_an_erp_answering_503_for_a_while_delays_orders_but_loses_none(
    start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    pipeline.erp.set_faults(error_rate=1.0)
    pipeline.push(list(scenario.orders(data, 60, rng, invalid_share=0.0)))
    wait_for(lambda: pipeline.metrics()["revsync_retried_total"] > 0, timeout_s=60)

    pipeline.erp.set_faults(error_rate=0.0)
    settle(pipeline)

    metrics = pipeline.metrics()
    assert metrics["revsync_in_process_retries_total"] > 0
    assert metrics["revsync_dead_lettered_total"] == 0
    assert len(pipeline.erp.sales_orders()) == 60


def test_a_poison_change_event_is_dead_lettered_and_its_partition_flows_on(
    settings: Settings, start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    cdc_topic = next(
        t.name for t in pipeline.catalog.topics if t.format is TopicFormat.SALESFORCE_CDC
    )
    poison = b'{"payload": {"ChangeEventHeader": "not a header"}} trailing bytes'
    producer = Producer(settings.kafka_config())
    for partition in range(3):  # every partition has a poison record ahead of real work
        key = f"801POISON{partition}".encode()
        producer.produce(cdc_topic, key=key, value=poison, partition=partition)
    producer.flush(10)
    pipeline.push(list(scenario.orders(data, 60, rng, invalid_share=0.0)))

    settle(pipeline)

    letters = read_topic(settings, dead_letters(pipeline, "order_sync"), expect=3)
    assert sorted(letter.key() or b"" for letter in letters) == [
        f"801POISON{partition}".encode() for partition in range(3)
    ]
    for letter in letters:
        assert letter.value() == poison
        headers = h.as_list(letter.headers())
        assert h.get(headers, h.ERROR_CLASS) == "deserialization"
        assert h.get(headers, h.ORIGINAL_TOPIC) == cdc_topic


def test_invalid_orders_are_rejected_and_the_reason_written_back_to_the_crm(
    settings: Settings, start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    planned = list(scenario.orders(data, 40, rng, invalid_share=1.0))
    assert {order.expected for order in planned} == {r.value for r in scenario.FLAWS.values()}
    ids = pipeline.push(planned)

    settle(pipeline)

    assert pipeline.erp.sales_orders() == []
    for order_id, order in zip(ids, planned, strict=True):
        (record,) = pipeline.crm.records("Order", Id=order_id)
        assert record["ERP_Status__c"] == "Rejected"
        assert str(record["ERP_Message__c"]).startswith(f"{order.expected}: ")
    rejected_topic = pipeline.catalog.topic_for("io.revsync.events.OrderRejected").name
    assert len(read_topic(settings, rejected_topic, expect=40)) == 40


def test_a_shipment_for_an_order_the_crm_does_not_know_yet_waits_for_it(
    start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    account = data.accounts["US01"][0]
    (customer,) = pipeline.crm.records("Account", Id=account)
    order_id = record_id("801", uuid.uuid4().hex[:5].upper(), 1)
    sku = scenario.SKUS[0]
    price = scenario.list_price(data.prices[sku], scenario.ENTITIES[0])
    # The ERP books an order (entered there directly) for a CRM order id the CRM lacks yet.
    erp = ErpRestAdapter(ErpConfig(pipeline.erp_url, api_token=SecretStr(DEFAULT_API_TOKEN)))
    try:
        erp.create_sales_order(
            SalesOrderRequest(
                external_id=order_id,
                customer_id=str(customer["ERP_Customer_Id__c"]),
                currency="USD",
                price_book_id=data.price_books["US01"],
                legal_entity="US01",
                region="NA",
                po_number=None,
                requested_delivery_date=None,
                ship_to=Address("1 Harbour Road", "Chicago", None, "10001", "US"),
                lines=(SalesOrderLine(1, sku, Decimal(2), price, Decimal(0), Decimal(0)),),
                correlation_id="late-order",
            ),
            idempotency_key=f"test:{order_id}",
        )
    finally:
        erp.close()
    wait_for(lambda: pipeline.metrics()["revsync_retried_total"] >= 2, timeout_s=60)
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0

    (created,) = pipeline.crm.insert(
        "Order",
        [
            {
                "Id": order_id,
                "AccountId": account,
                "Status": "Draft",
                "CurrencyIsoCode": "USD",
                "EffectiveDate": "2026-12-01",
            }
        ],
    )
    assert created == order_id
    wait_for(
        lambda: (
            bool(pipeline.crm.records("Shipment__c", Order__c=created))
            and pipeline.crm.records("Order", Id=created)[0]["Delivery_Status__c"] == "Shipped"
        ),
        timeout_s=60,
    )
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0


def test_a_bridge_killed_mid_stream_loses_no_change_and_doubles_no_order(
    start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    planned = list(scenario.orders(data, 300, rng, invalid_share=0.0))
    for part in range(3):
        pipeline.push(planned[part * 100 : (part + 1) * 100])
        # SIGKILL while the part's change events stream through it: no drain, no last
        # checkpoint; it resumes from the last replay id Kafka had everything up to.
        pipeline.restart("crm-cdc-bridge", hard=True)

    settle(pipeline)

    assert pipeline.erp.stats().create_requests == 300
    orders = pipeline.erp.sales_orders()
    assert len({order["external_id"] for order in orders}) == len(orders) == 300
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0


def test_an_expired_checkpoint_is_a_gap_that_reconciles_every_order_changed_meanwhile(
    start_pipeline: Callable[..., Pipeline], rng: random.Random
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    pipeline.push(list(scenario.orders(data, 10, rng, invalid_share=0.0)))
    settle(pipeline)
    pipeline.stop_service("crm-cdc-bridge")
    # Orders activated while the bridge is down, and then every event of the channel,
    # the checkpointed one among them, is past the retention window.
    during = pipeline.push(list(scenario.orders(data, 20, rng, invalid_share=0.0)))
    pipeline.crm.set_pubsub(retention_s=0.5)
    time.sleep(1.5)
    pipeline.crm.set_pubsub(retention_s=72 * 3600)

    pipeline.start_service("crm-cdc-bridge")
    settle(pipeline)

    assert pipeline.metrics()["revsync_cdc_bridge_gaps_total"] >= 1
    for order_id in during:
        assert len(pipeline.erp.sales_orders(external_id=order_id)) == 1
    assert pipeline.erp.stats().create_requests == 30
    assert pipeline.metrics()["revsync_dead_lettered_total"] == 0
