"""A simulated Salesforce org: the REST API revsync's CRM adapter calls, Order Change Data
Capture events on Kafka, fault knobs, and a control API (with :class:`CrmSandbox`, its client).

Run it with ``python -m sandbox.crm``, or in process with :class:`CrmSimulator`.
"""

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
    "CrmSandbox",
    "CrmSimulator",
]
