"""What the tests of the Salesforce adapter and of the CRM simulator build their calls from."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import SecretStr
from sandbox.crm import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, CrmSimulator

from revsync.connectors.salesforce import SalesforceConfig, decode_json
from revsync.settings import Settings
from runtime_support import read_topic

REST_ORIGIN = "com/salesforce/api/rest/62.0;client=revsync"


def config(simulator: CrmSimulator, **changes: Any) -> SalesforceConfig:
    options: dict[str, Any] = {
        "instance_url": simulator.url,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": SecretStr(DEFAULT_CLIENT_SECRET),
        "timeout_s": 5.0,
        **changes,
    }
    return SalesforceConfig(**options)


def an_order(account: str, product: str, **fields: Any) -> dict[str, Any]:
    return {
        "AccountId": account,
        "EffectiveDate": "2025-12-01",
        "CurrencyIsoCode": "EUR",
        "PoNumber": "PO-1",
        **fields,
        "items": [
            {
                "Product2Id": product,
                "SKU__c": "W-1",
                "Quantity": 3,
                "UnitPrice": Decimal("19.99"),
                "Discount__c": Decimal("1.50"),
            }
        ],
    }


def an_invoice(order: str, number: int, **fields: Any) -> dict[str, Any]:
    return {
        "ERP_Invoice_Id__c": f"INV-{number}",
        "Name": f"INV-{number:06d}",
        "Order__c": order,
        "Total__c": Decimal("100.0000"),
        "Status__c": "Posted",
        **fields,
    }


def calls(simulator: CrmSimulator, route: str) -> int:
    return simulator.server.counters.get(route, 0)


def change_events(settings: Settings, simulator: CrmSimulator, keys: set[str]) -> list[Any]:
    """The change events keyed by ``keys``, in the order Kafka holds them."""
    messages = read_topic(settings, simulator.cdc.topic, simulator.cdc.counters.sent, 20)
    events = []
    for message in messages:
        key = message.key()
        value = message.value()
        assert key is not None
        assert value is not None
        if key.decode() in keys:
            events.append(decode_json(value))
    return events
