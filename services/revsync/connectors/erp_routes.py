"""ERPs chosen per legal entity: one :class:`~revsync.ports.erp.ErpPort` in front of several
(EU entities on one ERP, US ones on another), so a service never knows which ERP books what.

Every legal entity is routed explicitly (no default), so the ERP behind each is known:
- a request that names its legal entity (a sales order, a customer upsert) goes to that
  entity's ERP; an entity no route names is refused (``LEGAL_ENTITY_NOT_ROUTED`` for an
  order, ``INVALID_CUSTOMER`` naming the field for a customer, as an ERP refuses an entity it
  does not have);
- a lookup by id or account (a customer, a price book, a credit position) asks each ERP in
  turn and takes an answer only from the ERP its legal entity is routed to, so ids that happen
  to be equal in two ERPs never mix;
- products are merged: a SKU is sold by the entities of each ERP that sells it (its own list
  of entities, within the ones routed to it);
- stock in a region is what every ERP holds there, added up, available on the earliest date.

Any ERP failing a lookup fails it: an answer from the others could be wrong by omission.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TypeVar

from revsync.ports.erp import (
    CreditPosition,
    Customer,
    CustomerDraft,
    CustomerQuery,
    CustomerUpsert,
    ErpOrderMissing,
    ErpPort,
    ErpRejected,
    PriceBook,
    Product,
    SalesOrder,
    SalesOrderRequest,
    StockLevel,
)

T = TypeVar("T", Customer, PriceBook)
UNROUTED = "LEGAL_ENTITY_NOT_ROUTED"


class ErpRoutes(ErpPort):
    """The ERP of each legal entity, behind one port. ``erps`` names each ERP's adapter;
    ``routes`` maps every legal entity to one of those names."""

    def __init__(self, erps: Mapping[str, ErpPort], routes: Mapping[str, str]) -> None:
        unknown = sorted(set(routes.values()) - set(erps))
        if unknown:
            raise ValueError(f"legal entities routed to ERPs not configured: {', '.join(unknown)}")
        self.erps = dict(erps)
        self.routes = dict(routes)
        self.entities: dict[str, frozenset[str]] = {
            name: frozenset(entity for entity, erp in routes.items() if erp == name)
            for name in erps
        }

    def erp_of(self, legal_entity: str, refusal: str = UNROUTED) -> ErpPort:
        """The ERP ``legal_entity`` is routed to; refused with code ``refusal`` when none is."""
        name = self.routes.get(legal_entity)
        if name is None:
            raise ErpRejected(
                refusal,
                f"legal entity {legal_entity} is not routed to any ERP",
                field="legal_entity",
            )
        return self.erps[name]

    def _owned(self, lookup: Callable[[ErpPort], T | None]) -> T | None:
        """The first answer an ERP gives for a record of a legal entity routed to it."""
        for name, erp in self.erps.items():
            found = lookup(erp)
            if found is not None and found.legal_entity in self.entities[name]:
                return found
        return None

    def customer(self, customer_id: str) -> Customer | None:
        return self._owned(lambda erp: erp.customer(customer_id))

    def customer_by_account(self, crm_account_id: str) -> Customer | None:
        return self._owned(lambda erp: erp.customer_by_account(crm_account_id))

    def price_book(self, price_book_id: str) -> PriceBook | None:
        return self._owned(lambda erp: erp.price_book(price_book_id))

    def find_customers(self, query: CustomerQuery) -> list[Customer]:
        return [
            customer
            for name, erp in self.erps.items()
            for customer in erp.find_customers(query)
            if customer.legal_entity in self.entities[name]
        ]

    def products(self, skus: Collection[str]) -> dict[str, Product]:
        merged: dict[str, Product] = {}
        for name, erp in self.erps.items():
            served = self.entities[name]
            for sku, product in erp.products(skus).items():
                sold_by = served & product.legal_entities if product.legal_entities else served
                sold_by = sold_by if product.active else frozenset()
                known = merged.get(sku)
                if known is None:
                    merged[sku] = replace(product, active=bool(sold_by), legal_entities=sold_by)
                else:
                    entities = known.legal_entities | sold_by
                    merged[sku] = replace(known, active=bool(entities), legal_entities=entities)
        return merged

    def create_sales_order(self, request: SalesOrderRequest, idempotency_key: str) -> SalesOrder:
        return self.erp_of(request.legal_entity).create_sales_order(request, idempotency_key)

    def cancel_sales_order(self, external_id: str, reason: str, idempotency_key: str) -> SalesOrder:
        for erp in self.erps.values():
            try:
                return erp.cancel_sales_order(external_id, reason, idempotency_key)
            except ErpOrderMissing:
                continue
        raise ErpOrderMissing(f"no ERP has a sales order for {external_id}")

    def upsert_customer(self, draft: CustomerDraft, idempotency_key: str) -> CustomerUpsert:
        """Upserted in the ERP of the draft's legal entity. An account's customer never moves
        to another legal entity, whichever ERP holds it: refused as each ERP refuses it."""
        erp = self.erp_of(draft.legal_entity, "INVALID_CUSTOMER")
        existing = self.customer_by_account(draft.crm_account_id)
        if existing is not None and existing.legal_entity != draft.legal_entity:
            raise ErpRejected(
                "INVALID_CUSTOMER",
                f"the account's customer belongs to legal entity {existing.legal_entity}",
                field="legal_entity",
            )
        return erp.upsert_customer(draft, idempotency_key)

    def credit(self, customer_id: str) -> CreditPosition | None:
        for name, erp in self.erps.items():
            customer = erp.customer(customer_id)
            if customer is not None and customer.legal_entity in self.entities[name]:
                return erp.credit(customer_id)
        return None

    def stock(self, skus: Collection[str], region: str) -> dict[str, StockLevel]:
        total: dict[str, StockLevel] = {}
        for erp in self.erps.values():
            for sku, level in erp.stock(skus, region).items():
                known = total.get(sku)
                if known is None:
                    total[sku] = level
                    continue
                dates = [day for day in (known.available_on, level.available_on) if day]
                total[sku] = replace(
                    known,
                    quantity=known.quantity + level.quantity,
                    available_on=min(dates) if dates else None,
                )
        return total

    def close(self) -> None:
        for erp in self.erps.values():
            erp.close()
