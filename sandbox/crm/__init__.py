"""A simulated Salesforce org: the REST API revsync's CRM adapter calls, Change Data Capture
events served by the Pub/Sub API (gRPC), fault knobs, and a control API (with
:class:`CrmSandbox`, its client).

Run it with ``python -m sandbox.crm``, or in process with :class:`CrmSimulator`.
"""

from sandbox.crm.cdc import CdcKnobs
from sandbox.crm.control import CrmSandbox
from sandbox.crm.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    INTEGRATION_USER_ID,
    SALES_REP_USER_ID,
    CrmSimulator,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "INTEGRATION_USER_ID",
    "SALES_REP_USER_ID",
    "CdcKnobs",
    "CrmSandbox",
    "CrmSimulator",
]
