"""order_sync: CRM order changes to ERP sales orders, and the outcome back to the CRM."""
