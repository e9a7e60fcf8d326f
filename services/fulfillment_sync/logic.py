"""fulfillment_sync's decisions, free of I/O: what the CRM records for an ERP shipment."""

from __future__ import annotations

from revsync.connectors.crm_writes import CrmWrite
from revsync.contracts.events import ShipmentCompleteness, ShipmentConfirmed

SHIPMENT = "Shipment__c"
SHIPMENT_KEY = "ERP_Shipment_Id__c"


def shipment_confirmed(event: ShipmentConfirmed) -> CrmWrite:
    complete = event.completeness is ShipmentCompleteness.COMPLETE
    return CrmWrite(
        sobject=SHIPMENT,
        external_id_field=SHIPMENT_KEY,
        record={
            SHIPMENT_KEY: event.erp_shipment_id,
            "Name": event.erp_shipment_id,
            "Order__c": event.crm_order_id,
            "Carrier__c": event.carrier,
            "Tracking_Number__c": event.tracking_number,
            "Tracking_Url__c": event.tracking_url,
            "Shipped_At__c": event.shipped_at.isoformat(),
            "Completeness__c": event.completeness.value,
            "Warehouse__c": event.warehouse,
        },
        order_id=event.crm_order_id,
        order_fields={"Delivery_Status__c": "Shipped" if complete else "Partially Shipped"},
    )
