"""invoice_sync's wiring: the ``invoice-sync`` handler, ERP invoices and payments onto the
CRM order, batched into sObject Collections calls."""

from __future__ import annotations

from invoice_sync import logic
from revsync.connectors.crm_writes import CrmWrite, CrmWriteHandler, Routes
from revsync.contracts.events import InvoicePosted, PaymentReceived
from revsync.deployables import ConsumerDeployable
from revsync.errors import DependencyNotReady
from revsync.ports.crm import CrmPort


class InvoiceNotInCrm(DependencyNotReady):
    """A payment for an invoice the CRM has not recorded yet: retried until it has."""


class InvoiceSync(CrmWriteHandler):
    """The ``invoice-sync`` handler."""

    def __init__(self, crm: CrmPort) -> None:
        super().__init__(crm, ROUTES)

    def payment_received(self, payment: PaymentReceived) -> CrmWrite:
        # An upsert would create a bare invoice from a payment; the invoice must exist.
        if not self.crm.query(logic.invoice_lookup(payment.erp_invoice_id)):
            raise InvoiceNotInCrm(
                f"payment {payment.erp_payment_id}: invoice {payment.invoice_number} "
                "is not in the CRM yet"
            )
        return logic.payment_received(payment)


ROUTES: Routes = {
    InvoicePosted: lambda _, invoice: logic.invoice_posted(invoice),
    PaymentReceived: InvoiceSync.payment_received,
}
"""What invoice-sync takes, and the CRM write each input makes."""

DEPLOYABLE = ConsumerDeployable(
    name="invoice-sync",
    service="invoice_sync",
    inputs=tuple(ROUTES),
    outputs=(),
    build=lambda context: InvoiceSync(context.crm()),
)
