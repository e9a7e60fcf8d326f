"""invoice_sync's decisions, free of I/O: what the CRM records for an ERP invoice or payment."""

from __future__ import annotations

from decimal import Decimal

from revsync.connectors.crm_writes import CrmWrite
from revsync.contracts.events import InvoicePosted, PaymentReceived

INVOICE = "Invoice__c"
INVOICE_KEY = "ERP_Invoice_Id__c"


def invoice_posted(event: InvoicePosted) -> CrmWrite:
    return CrmWrite(
        sobject=INVOICE,
        external_id_field=INVOICE_KEY,
        record={
            INVOICE_KEY: event.erp_invoice_id,
            "Name": event.invoice_number,
            "Order__c": event.crm_order_id,
            "Account__c": event.crm_account_id,
            "CurrencyIsoCode": event.currency,
            "Subtotal__c": event.subtotal,
            "Tax__c": event.tax_total,
            "Total__c": event.grand_total,
            "Amount_Due__c": event.amount_due,
            "Posting_Date__c": event.posting_date.isoformat(),
            "Due_Date__c": event.due_date.isoformat(),
            "Payment_Terms__c": event.payment_terms,
            "Status__c": "Posted" if event.amount_due else "Paid",
        },
        order_id=event.crm_order_id,
        order_fields={"Billing_Status__c": "Invoiced" if event.amount_due else "Paid"},
    )


def payment_received(event: PaymentReceived) -> CrmWrite:
    paid = event.remaining_balance == Decimal(0)
    return CrmWrite(
        sobject=INVOICE,
        external_id_field=INVOICE_KEY,
        record={
            INVOICE_KEY: event.erp_invoice_id,
            "Amount_Due__c": event.remaining_balance,
            "Status__c": "Paid" if paid else "Partially Paid",
        },
        order_id=event.crm_order_id,
        order_fields={"Billing_Status__c": "Paid" if paid else "Partially Paid"},
    )


def invoice_lookup(erp_invoice_id: str) -> str:
    """SOQL for the CRM invoice with this ERP id (quotes escaped as SOQL wants)."""
    literal = erp_invoice_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"SELECT Id FROM {INVOICE} WHERE {INVOICE_KEY} = '{literal}'"  # noqa: S608 - SOQL
