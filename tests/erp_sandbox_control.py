"""The ERP sandbox's control API as the ERP port contract drives it (:class:`ErpControl`), for
every ERP simulated over the sandbox's books: the reference API, NetSuite and Business
Central."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from sandbox.erp import ErpSandbox

from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from runtime_support import wait_for

NEVER = 3600.0
"""A clock delay no test outlives: the ERP never moves an order on by itself."""


class SandboxErpControl:
    """The ERP simulator's control API as the ERP contract drives it."""

    def __init__(self, sandbox: ErpSandbox) -> None:
        self.sandbox = sandbox

    def seed_customers(self, customers: Iterable[Customer]) -> int:
        return self.sandbox.seed_customers(customers)

    def seed_products(self, products: Iterable[Product]) -> int:
        return self.sandbox.seed_products(products)

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int:
        return self.sandbox.seed_price_books(price_books)

    def seed_stock(self, levels: Iterable[StockLevel]) -> int:
        return self.sandbox.seed_stock(levels)

    def edit_customer(
        self,
        customer_id: str,
        *,
        credit_limit: Decimal | None = None,
        status: CustomerStatus | None = None,
        crm_account_id: str | None = None,
    ) -> None:
        self.sandbox.edit_customer(
            customer_id, credit_limit=credit_limit, status=status, crm_account_id=crm_account_id
        )

    def booked(self, external_id: str) -> list[str]:
        return [str(order["id"]) for order in self.sandbox.sales_orders(external_id)]

    def invoice(self, external_id: str) -> None:
        """Lets the ERP's own clock invoice what is open, then stops it again."""

        def invoiced() -> bool:
            return [o["status"] for o in self.sandbox.sales_orders(external_id)] == ["invoiced"]

        self.sandbox.set_clock(invoice_delay_s=0)
        try:
            wait_for(invoiced, timeout_s=20)
        finally:
            self.sandbox.set_clock(invoice_delay_s=NEVER)
