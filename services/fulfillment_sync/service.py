"""fulfillment_sync's wiring: the ``fulfillment-sync`` handler, ERP shipments (carrier,
tracking) onto the CRM order, batched into sObject Collections calls.

A shipment for an order the CRM does not know yet fails its lookup with
INVALID_CROSS_REFERENCE_KEY, which the adapter raises as dependency-not-ready: the shipment
goes through the retry tiers until the order exists, and only then to the dead letters.
"""

from __future__ import annotations

from fulfillment_sync import logic
from revsync.connectors.crm_writes import CrmWrite, CrmWriteHandler
from revsync.contracts.events import ShipmentConfirmed
from revsync.errors import RevsyncError
from revsync.runtime.handler import Inbound

CONSUMER = "fulfillment-sync"


class FulfillmentSync(CrmWriteHandler):
    """The ``fulfillment-sync`` handler."""

    def write_for(self, inbound: Inbound) -> CrmWrite:
        if isinstance(inbound, ShipmentConfirmed):
            return logic.shipment_confirmed(inbound)
        raise RevsyncError(f"fulfillment-sync does not handle {inbound.envelope.event_type}")
