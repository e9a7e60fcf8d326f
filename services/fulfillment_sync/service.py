"""fulfillment_sync's wiring: the ``fulfillment-sync`` handler, ERP shipments (carrier,
tracking) onto the CRM order, batched into sObject Collections calls.

A shipment for an order the CRM does not know yet fails its lookup with
INVALID_CROSS_REFERENCE_KEY, which the adapter raises as dependency-not-ready: the shipment
goes through the retry tiers until the order exists, and only then to the dead letters.
"""

from __future__ import annotations

from fulfillment_sync import logic
from revsync.connectors.crm_writes import CrmWriteHandler, Routes
from revsync.contracts.events import ShipmentConfirmed
from revsync.deployables import ConsumerDeployable
from revsync.ports.crm import CrmPort


class FulfillmentSync(CrmWriteHandler):
    """The ``fulfillment-sync`` handler."""

    def __init__(self, crm: CrmPort) -> None:
        super().__init__(crm, ROUTES)


ROUTES: Routes = {ShipmentConfirmed: lambda _, shipment: logic.shipment_confirmed(shipment)}
"""What fulfillment-sync takes, and the CRM write each input makes."""

DEPLOYABLE = ConsumerDeployable(
    name="fulfillment-sync",
    service="fulfillment_sync",
    inputs=tuple(ROUTES),
    outputs=(),
    build=lambda context: FulfillmentSync(context.crm()),
)
