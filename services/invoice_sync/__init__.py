"""invoice_sync: invoices posted in the ERP, upserted on the CRM order."""
