"""invoice_sync's wiring: the ``invoice-sync`` handler, ERP invoices and payments onto the
CRM order, batched into sObject Collections calls."""

from __future__ import annotations

from invoice_sync import logic
from revsync.connectors.crm_writes import CrmWrite, CrmWriteHandler
from revsync.contracts.events import InvoicePosted, PaymentReceived
from revsync.errors import DependencyNotReady, RevsyncError
from revsync.runtime.handler import Inbound

CONSUMER = "invoice-sync"


class InvoiceNotInCrm(DependencyNotReady):
    """A payment for an invoice the CRM has not recorded yet: retried until it has."""


class InvoiceSync(CrmWriteHandler):
    """The ``invoice-sync`` handler."""

    def write_for(self, inbound: Inbound) -> CrmWrite:
        if isinstance(inbound, InvoicePosted):
            return logic.invoice_posted(inbound)
        if isinstance(inbound, PaymentReceived):
            # An upsert would create a bare invoice from a payment; the invoice must exist.
            if not self.crm.query(logic.invoice_lookup(inbound.erp_invoice_id)):
                raise InvoiceNotInCrm(
                    f"payment {inbound.erp_payment_id}: invoice {inbound.invoice_number} "
                    "is not in the CRM yet"
                )
            return logic.payment_received(inbound)
        raise RevsyncError(f"invoice-sync does not handle {inbound.envelope.event_type}")
