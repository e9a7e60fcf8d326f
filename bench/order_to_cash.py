"""SCENARIO=order-to-cash: orders through the whole pipeline — CRM change data capture,
order_sync, the ERP, its outbox publisher, invoice_sync and fulfillment_sync, back to the
CRM — with every service its own process and the sandboxes' delays at zero.

Three figures, all measured in this run:

- sustained: a burst of orders pushed at once; orders/s from the first push until the CRM
  shows the last one shipped;
- latency at a fixed offered load (a steady rate well under the sustained one): per order,
  from its CDC event (the order's activation) to the CRM showing it shipped (the shipment
  record's creation), both stamped by the CRM sandbox's clock;
- the baseline: the same CRM and ERP calls per order made directly, one order after the
  other, by one client with no Kafka, inbox, outbox or retry machinery — what the two
  systems' APIs alone allow here. ``ratio_to_direct`` is the pipeline's rate over it.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sandbox import scenario
from sandbox.crm.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sandbox.erp.simulator import DEFAULT_API_TOKEN
from sandbox.harness import Pipeline, private_contracts

from order_sync.logic import ORDER_FIELDS, canonical, crm_accepted_fields, sales_order_request
from revsync.connectors.crm_writes import CrmWrite, apply_one
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.connectors.salesforce import SalesforceClient, SalesforceConfig
from revsync.contracts.events import Envelope, OrderCreated, SourceSystem
from revsync.settings import Settings

OFFERED_PER_S = 20
OFFERED_SECONDS = 20
DIRECT_ORDERS = 200


@contextmanager
def bench_pipeline(settings: Settings, **options: Any) -> Iterator[Pipeline]:
    """The whole pipeline on contracts of its own, the sandboxes' delays at zero."""
    with tempfile.TemporaryDirectory(prefix="revsync-bench-") as scratch:
        contracts = private_contracts(settings.schemas_dir, Path(scratch) / "contracts")
        pipeline = Pipeline(
            settings=settings,
            workdir=Path(scratch) / "logs",
            schemas_dir=contracts,
            invoice_delay_s=0,
            ship_delay_s=0,
            **options,
        )
        pipeline.start()
        try:
            yield pipeline
        finally:
            pipeline.stop()


def run(settings: Settings, events: int) -> dict[str, Any]:
    """``events`` orders in the sustained burst."""
    rng = random.Random(7)  # noqa: S311 - an order mix, not a secret
    with bench_pipeline(settings) as pipeline:
        data = scenario.seed(pipeline.crm, pipeline.erp, rng)
        direct = _direct(pipeline, data, rng)
        sustained = _sustained(pipeline, data, rng, events)
        latency = _latency(pipeline, data, rng)
    return {
        "orders": events,
        "orders_per_s": round(sustained, 1),
        "offered_orders_per_s": OFFERED_PER_S,
        "latency_orders": latency["orders"],
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "direct_orders": DIRECT_ORDERS,
        "direct_orders_per_s": round(direct, 1),
        "ratio_to_direct": round(sustained / direct, 2),
    }


def _sustained(
    pipeline: Pipeline, data: scenario.MasterData, rng: random.Random, count: int
) -> float:
    planned = list(scenario.orders(data, count, rng, invalid_share=0.0))
    pipeline.planned.clear()
    started = time.monotonic()
    pipeline.push(planned)
    outcome = pipeline.wait_settled(timeout_s=600)
    if outcome.pending or outcome.wrong:
        raise RuntimeError(f"sustained run did not settle: {outcome}")
    return count / (time.monotonic() - started)


def offered_load(
    pipeline: Pipeline, data: scenario.MasterData, rng: random.Random, seconds: int
) -> list[str]:
    """Valid orders pushed one by one at :data:`OFFERED_PER_S` for ``seconds``, then settled;
    their CRM ids."""
    pipeline.planned.clear()
    interval = 1 / OFFERED_PER_S
    began = time.monotonic()
    ids: list[str] = []
    for n in range(OFFERED_PER_S * seconds):
        time.sleep(max(0.0, began + n * interval - time.monotonic()))
        ids += pipeline.push(list(scenario.orders(data, 1, rng, invalid_share=0.0)))
    outcome = pipeline.wait_settled(timeout_s=300)
    if outcome.pending or outcome.wrong:
        raise RuntimeError(f"latency run did not settle: {outcome}")
    return ids


def shipped_at(pipeline: Pipeline, ids: list[str]) -> dict[str, datetime]:
    """When the CRM recorded each order's shipment (the sandbox's clock)."""
    wanted = set(ids)
    return {
        record["Order__c"]: _moment(record["CreatedDate"])
        for record in pipeline.crm.records("Shipment__c")
        if record["Order__c"] in wanted
    }


def _latency(pipeline: Pipeline, data: scenario.MasterData, rng: random.Random) -> dict[str, Any]:
    ids = offered_load(pipeline, data, rng, OFFERED_SECONDS)
    wanted = set(ids)
    activated = {
        record["Id"]: _moment(record["ActivatedDate"])
        for record in pipeline.crm.records("Order")
        if record["Id"] in wanted
    }
    shipped = shipped_at(pipeline, ids)
    millis = sorted((shipped[i] - activated[i]).total_seconds() * 1000 for i in ids)
    return {
        "orders": len(millis),
        "p50_ms": round(statistics.median(millis), 1),
        "p99_ms": round(millis[int(len(millis) * 0.99) - 1], 1),
    }


def _direct(pipeline: Pipeline, data: scenario.MasterData, rng: random.Random) -> float:
    """The same calls per order, straight from one client: the order and its items, its
    account, the ERP sales order, the CRM write-back, then the invoice and the shipment
    upserts, each with its order update. Master data is read once, as the services cache it."""
    crm = SalesforceClient(
        SalesforceConfig(pipeline.crm_url, DEFAULT_CLIENT_ID, SecretStr(DEFAULT_CLIENT_SECRET))
    )
    erp = ErpRestAdapter(ErpConfig(pipeline.erp_url, api_token=SecretStr(DEFAULT_API_TOKEN)))
    planned = list(scenario.orders(data, DIRECT_ORDERS, rng, invalid_share=0.0))
    # Drafts, which the services leave alone; the ERP holds these orders back meanwhile.
    pipeline.erp.set_clock(invoice_delay_s=3600)
    ids = pipeline.crm.create_orders([order.record for order in planned], activate=False)
    cause = Envelope(
        event_id=uuid.uuid4(),
        event_type="com.salesforce.cdc.OrderChangeEvent",
        occurred_at=datetime.now(UTC),
        source_system=SourceSystem.CRM,
        correlation_id="bench-direct",
        schema_version=1,
    )
    try:
        started = time.monotonic()
        for order_id in ids:
            order = crm.get("Order", order_id, ORDER_FIELDS)
            items = crm.related("Order", order_id, "OrderItems")
            account = crm.get("Account", order["AccountId"], ["ERP_Customer_Id__c"])
            created = canonical(
                cause, {**order, "Status": "Activated"}, items, account["ERP_Customer_Id__c"]
            )
            assert isinstance(created, OrderCreated)
            sales_order = erp.create_sales_order(
                sales_order_request(created), f"bench-direct:{order_id}"
            )
            crm.update("Order", order_id, crm_accepted_fields(sales_order))
            for sobject, key, record, status in (
                (
                    "Invoice__c",
                    "ERP_Invoice_Id__c",
                    _invoice(created),
                    {"Billing_Status__c": "Invoiced"},
                ),
                (
                    "Shipment__c",
                    "ERP_Shipment_Id__c",
                    _shipment(created),
                    {"Delivery_Status__c": "Shipped"},
                ),
            ):
                apply_one(crm, CrmWrite(sobject, key, record, order_id, status))
        rate = len(ids) / (time.monotonic() - started)
    finally:
        crm.close()
        erp.close()
    # Let the pipeline sync the ERP's side of these before the measured runs begin.
    pipeline.erp.set_clock(invoice_delay_s=0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(r.get("Billing_Status__c") for r in pipeline.crm.records("Order", Status="Draft")):
            break
        time.sleep(0.5)
    return rate


def _invoice(order: OrderCreated) -> dict[str, Any]:
    return {
        "ERP_Invoice_Id__c": f"DIRECT-{order.crm_order_id}",
        "Name": f"DIRECT-{order.crm_order_number}",
        "Order__c": order.crm_order_id,
        "Account__c": order.crm_account_id,
        "CurrencyIsoCode": order.currency,
        "Subtotal__c": order.subtotal,
        "Tax__c": order.tax_total,
        "Total__c": order.grand_total,
        "Amount_Due__c": order.grand_total,
        "Status__c": "Posted",
    }


def _shipment(order: OrderCreated) -> dict[str, Any]:
    return {
        "ERP_Shipment_Id__c": f"DIRECT-{order.crm_order_id}",
        "Name": f"DIRECT-{order.crm_order_number}",
        "Order__c": order.crm_order_id,
        "Carrier__c": "DHL",
        "Tracking_Number__c": order.crm_order_number,
        "Completeness__c": "COMPLETE",
    }


def _moment(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
