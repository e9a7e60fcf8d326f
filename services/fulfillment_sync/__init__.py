"""fulfillment_sync: shipments confirmed in the ERP, carrier and tracking on the CRM order."""
