"""The NetSuite simulator: SuiteTalk REST (records, SuiteQL, async jobs, idempotency keys,
the OAuth 2.0 machine-to-machine token endpoint and the account's concurrency pool) over the
ERP sandbox's books in PostgreSQL schema ``netsuite``.

Run it with ``python -m sandbox.netsuite --dsn postgresql://...``, or in process with
``NetSuiteSimulator(dsn).start()``; drive its books with :class:`sandbox.erp.ErpSandbox` and
its NetSuite knobs with :class:`NetSuiteSandbox`.
"""

from sandbox.netsuite.control import NetSuiteSandbox
from sandbox.netsuite.simulator import NetSuiteSimulator, Settings

__all__ = ["NetSuiteSandbox", "NetSuiteSimulator", "Settings"]
