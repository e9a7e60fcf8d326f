"""What the process API reads of the ERP, through one circuit breaker and a cache per kind:
master data (customers, products, price books) for as long as order_sync caches it, credit
positions and stock levels for less; all of it answered stale while the ERP cannot be asked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from revsync.connectors.cache import TtlCache
from revsync.connectors.guard import CallBreaker, Freshness, GuardedReads
from revsync.ports.erp import CreditPosition, Customer, ErpPort, PriceBook, Product, StockLevel


class ErpReads:
    def __init__(
        self,
        erp: ErpPort,
        breaker: CallBreaker,
        *,
        master_data_ttl_s: float,
        live_ttl_s: float,
        stale_for_s: float,
    ) -> None:
        self.erp = erp
        self.guarded = GuardedReads(breaker, stale_for_s)
        self._customers: TtlCache[str, Customer | None] = TtlCache(master_data_ttl_s)
        self._accounts: TtlCache[str, Customer | None] = TtlCache(master_data_ttl_s)
        self._products: TtlCache[str, Product | None] = TtlCache(master_data_ttl_s)
        self._price_books: TtlCache[str, PriceBook | None] = TtlCache(master_data_ttl_s)
        self._credit: TtlCache[str, CreditPosition | None] = TtlCache(live_ttl_s)
        self._stock: TtlCache[tuple[str, str], StockLevel | None] = TtlCache(live_ttl_s)

    def customer(self, customer_id: str) -> tuple[Customer | None, Freshness]:
        return self.guarded.one(
            "customer", self._customers, customer_id, lambda: self.erp.customer(customer_id)
        )

    def customer_by_account(self, crm_account_id: str) -> tuple[Customer | None, Freshness]:
        return self.guarded.one(
            "account",
            self._accounts,
            crm_account_id,
            lambda: self.erp.customer_by_account(crm_account_id),
        )

    def price_book(self, price_book_id: str) -> tuple[PriceBook | None, Freshness]:
        return self.guarded.one(
            "price book",
            self._price_books,
            price_book_id,
            lambda: self.erp.price_book(price_book_id),
        )

    def products(self, skus: Iterable[str]) -> tuple[dict[str, Product], Freshness]:
        found, freshness = self.guarded.many(
            "product", self._products, skus, self.erp.products, None
        )
        return {sku: product for sku, product in found.items() if product}, freshness

    def credit(self, customer_id: str) -> tuple[CreditPosition | None, Freshness]:
        return self.guarded.one(
            "credit", self._credit, customer_id, lambda: self.erp.credit(customer_id)
        )

    def stock(
        self, skus: Iterable[str], region: str
    ) -> tuple[dict[str, StockLevel | None], Freshness]:
        def levels(keys: list[tuple[str, str]]) -> Mapping[tuple[str, str], StockLevel]:
            found = self.erp.stock([sku for sku, _ in keys], region)
            return {(sku, region): level for sku, level in found.items()}

        found, freshness = self.guarded.many(
            "stock", self._stock, ((sku, region) for sku in skus), levels, None
        )
        return {sku: level for (sku, _), level in found.items()}, freshness
