"""The ERP simulator: customers, stock, sales orders, invoices, shipments, payments and a
Debezium-style outbox in PostgreSQL schema ``erp``, behind the reference REST API of
``revsync.connectors.erp``.

Run it with ``python -m sandbox.erp --dsn postgresql://...``, or in process with
``ErpSimulator(dsn=...).start()``; drive it with :class:`ErpSandbox`.
"""

from sandbox.erp.control import ErpSandbox, ErpStats
from sandbox.erp.progression import Clock
from sandbox.erp.simulator import DEFAULT_API_TOKEN, ErpSimulator

__all__ = ["DEFAULT_API_TOKEN", "Clock", "ErpSandbox", "ErpSimulator", "ErpStats"]
