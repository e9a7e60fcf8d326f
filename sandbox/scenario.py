"""The order-to-cash scenario: master data for both sandboxes, and orders whose outcome is
known in advance — most go all the way to shipped, some are invalid by design and must end
rejected, with the reason written back to the CRM."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from revsync.contracts.events import RejectionReason
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product
from sandbox.crm.control import CrmSandbox
from sandbox.erp.control import ErpSandbox

CENT = Decimal("0.01")
TAX_RATE = Decimal("0.08")
SHIPPED = "shipped"


@dataclass(frozen=True)
class LegalEntity:
    code: str
    region: str
    currency: str
    country: str
    city: str


ENTITIES = (
    LegalEntity("US01", "NA", "USD", "US", "Chicago"),
    LegalEntity("CA01", "NA", "CAD", "CA", "Toronto"),
    LegalEntity("DE01", "EMEA", "EUR", "DE", "Hamburg"),
    LegalEntity("GB01", "EMEA", "GBP", "GB", "Leeds"),
)
PRODUCT_LINES = ("SENSORS", "VALVES", "PUMPS", "CONTROLLERS")
SKUS = tuple(f"{line[:3]}-{n:03d}" for line in PRODUCT_LINES for n in range(1, 9))
DISCONTINUED = "VAL-099"

# What makes an order invalid, and the reason its rejection must carry.
FLAWS: dict[str, RejectionReason] = {
    "unknown_product": RejectionReason.UNKNOWN_PRODUCT,
    "customer_not_mastered": RejectionReason.CUSTOMER_NOT_MASTERED,
    "unsupported_currency": RejectionReason.UNSUPPORTED_CURRENCY,
    "pricing_mismatch": RejectionReason.PRICING_MISMATCH,
    "credit_hold": RejectionReason.CREDIT_HOLD,
}


@dataclass(frozen=True)
class PlannedOrder:
    """One order to push through the CRM, and the end state it must reach."""

    record: dict[str, Any]
    """Order fields plus its ``items``, as the CRM sandbox's control API takes them."""
    expected: str
    """``shipped``, or the rejection reason code."""


@dataclass
class MasterData:
    """What the scenario seeded; order generation draws from it."""

    accounts: dict[str, list[str]] = field(default_factory=dict)
    """Per legal entity: CRM account ids whose ERP customer is active."""
    unmastered_accounts: list[str] = field(default_factory=list)
    held_accounts: dict[str, str] = field(default_factory=dict)
    """Legal entity -> an account whose ERP customer is on credit hold."""
    price_books: dict[str, str] = field(default_factory=dict)
    """Legal entity -> CRM Pricebook2 id (the ERP's price book has the same id)."""
    prices: dict[str, Decimal] = field(default_factory=dict)


def seed(crm: CrmSandbox, erp: ErpSandbox, rng: random.Random) -> MasterData:
    """Seed products, price books, customers and accounts in both systems, consistently."""
    data = MasterData()
    data.prices = {
        sku: Decimal(rng.randrange(1_500, 90_000)) / 100 for sku in (*SKUS, DISCONTINUED)
    }
    entities = frozenset(entity.code for entity in ENTITIES)
    erp.seed_products(
        [
            Product(sku, f"{sku} industrial", _line(sku), "EA", sku != DISCONTINUED, entities)
            for sku in (*SKUS, DISCONTINUED)
        ]
    )
    crm.insert(
        "Product2",
        [{"ProductCode": sku, "Name": f"{sku} industrial", "Family": _line(sku)} for sku in SKUS],
    )
    book_ids = crm.insert(
        "Pricebook2", [{"Name": f"{entity.code} list prices"} for entity in ENTITIES]
    )
    data.price_books = {entity.code: book for entity, book in zip(ENTITIES, book_ids, strict=True)}
    erp.seed_price_books(
        [
            PriceBook(
                data.price_books[entity.code],
                f"{entity.code} list prices",
                entity.currency,
                entity.code,
                {sku: list_price(data.prices[sku], entity) for sku in (*SKUS, DISCONTINUED)},
            )
            for entity in ENTITIES
        ]
    )
    accounts: list[dict[str, Any]] = []
    owners: list[tuple[str, str, str | None]] = []  # (legal entity, kind, ERP customer id)
    for entity in ENTITIES:
        for n in range(12):
            customer_id = f"C-{entity.code}-{n:04d}"
            name = f"{entity.city} Customer {n}"
            accounts.append({"Name": name, "ERP_Customer_Id__c": customer_id})
            owners.append((entity.code, "held" if n == 0 else "active", customer_id))
    accounts.append({"Name": "Prospect without ERP customer"})
    owners.append(("", "unmastered", None))
    account_ids = crm.insert("Account", accounts)
    customers: list[Customer] = []
    currency = {entity.code: entity.currency for entity in ENTITIES}
    for (entity_code, kind, erp_id), account_id, account in zip(
        owners, account_ids, accounts, strict=True
    ):
        if kind == "unmastered":
            data.unmastered_accounts.append(account_id)
            continue
        assert erp_id is not None
        customers.append(
            Customer(
                erp_id,
                str(account["Name"]),
                account_id,
                entity_code,
                CustomerStatus.CREDIT_HOLD if kind == "held" else CustomerStatus.ACTIVE,
                Decimal(5_000_000),
                currency[entity_code],
            )
        )
        if kind == "held":
            data.held_accounts[entity_code] = account_id
        else:
            data.accounts.setdefault(entity_code, []).append(account_id)
    erp.seed_customers(customers)
    return data


def orders(
    data: MasterData, count: int, rng: random.Random, invalid_share: float = 0.1
) -> Iterator[PlannedOrder]:
    """``count`` orders; about ``invalid_share`` of them broken in one of the :data:`FLAWS`."""
    flaws = list(FLAWS)
    for n in range(count):
        entity = ENTITIES[n % len(ENTITIES)]
        flaw = flaws[n % len(flaws)] if rng.random() < invalid_share else None
        yield _order(data, entity, flaw, rng)


def _order(
    data: MasterData, entity: LegalEntity, flaw: str | None, rng: random.Random
) -> PlannedOrder:
    account = rng.choice(data.accounts[entity.code])
    currency = entity.currency
    if flaw == "customer_not_mastered":
        account = rng.choice(data.unmastered_accounts)
    elif flaw == "credit_hold":
        account = data.held_accounts[entity.code]
    elif flaw == "unsupported_currency":
        currency = "JPY"
    skus = rng.sample(SKUS, rng.randint(1, 4))
    if flaw == "unknown_product":
        skus[-1] = DISCONTINUED
    items = []
    for number, sku in enumerate(skus, 1):
        quantity = Decimal(rng.randint(1, 12))
        price = list_price(data.prices[sku], entity)
        if flaw == "pricing_mismatch" and number == 1:
            price = (price * Decimal("1.07")).quantize(CENT)
        discount = (quantity * price * Decimal("0.05")).quantize(CENT) if rng.random() < 0.3 else 0
        total = quantity * price - discount
        items.append(
            {
                "OrderItemNumber": f"{number:010d}",
                "SKU__c": sku,
                "Product_Name__c": f"{sku} industrial",
                "Product_Line__c": _line(sku),
                "Quantity": quantity,
                "UnitPrice": price,
                "Discount__c": discount,
                "Tax__c": (total * TAX_RATE).quantize(CENT, ROUND_HALF_EVEN),
                "TotalPrice": total,
                "Unit_Of_Measure__c": "EA",
            }
        )
    record = {
        "AccountId": account,
        "Pricebook2Id": data.price_books[entity.code],
        "CurrencyIsoCode": currency,
        "EffectiveDate": "2026-12-01",
        "PoNumber": f"PO-{rng.randrange(10**6):06d}",
        "Legal_Entity__c": entity.code,
        "Region__c": entity.region,
        **_address("Billing", entity),
        **_address("Shipping", entity),
        "items": items,
    }
    return PlannedOrder(record, SHIPPED if flaw is None else FLAWS[flaw].value)


def _address(kind: str, entity: LegalEntity) -> dict[str, str]:
    return {
        f"{kind}Street": "1 Harbour Road",
        f"{kind}City": entity.city,
        f"{kind}PostalCode": "10001",
        f"{kind}CountryCode": entity.country,
    }


def _line(sku: str) -> str:
    return next(line for line in PRODUCT_LINES if line.startswith(sku[:3]))


def list_price(base: Decimal, entity: LegalEntity) -> Decimal:
    """A product's list price in the legal entity's currency."""
    factor = {"USD": Decimal(1), "CAD": Decimal("1.35"), "EUR": Decimal("0.92")}.get(
        entity.currency, Decimal("0.79")
    )
    return (base * factor).quantize(CENT)
