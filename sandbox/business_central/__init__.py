"""A Dynamics 365 Business Central environment's API v2.0 (and revsync's extension API) over
the ERP sandbox's books in PostgreSQL schema ``business_central``: Entra client-credentials
tokens, companies, customers, items, sales orders, invoices, shipments, customer payments,
webhook subscriptions with their handshake, expiry and batched notifications.

Run it with ``python -m sandbox.business_central --dsn postgresql://...``, or in process with
``BusinessCentralSimulator(dsn).start()``; drive it with :class:`BusinessCentralSandbox` (its
knobs and subscriptions) and :class:`sandbox.erp.ErpSandbox` (its books)."""

from sandbox.business_central.control import BusinessCentralSandbox
from sandbox.business_central.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ENVIRONMENT,
    DEFAULT_TENANT_ID,
    SCOPE,
    BusinessCentralSimulator,
    Settings,
    company_id,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_TENANT_ID",
    "SCOPE",
    "BusinessCentralSandbox",
    "BusinessCentralSimulator",
    "Settings",
    "company_id",
]
