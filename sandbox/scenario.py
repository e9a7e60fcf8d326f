"""The order-to-cash scenario: master data for both sandboxes, and orders whose outcome is
known in advance — most go all the way to shipped, some are invalid by design and must end
rejected, with the reason written back to the CRM. For customer master sync: ERP customers
with tax ids, DUNS and customer numbers, stock in every region, and CRM accounts that have
no ERP customer yet (one of them a duplicate of an ERP customer by its tax id)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from revsync.contracts.events import RejectionReason
from revsync.ports.erp import Customer, CustomerStatus, PriceBook, Product, StockLevel
from sandbox.crm.control import CrmSandbox

CENT = Decimal("0.01")
TAX_RATE = Decimal("0.08")
SHIPPED = "shipped"
RESTOCK = date(2026, 12, 15)
"""When the first SKU short in a region is restocked; the next a day later, and so on."""
LOW_STOCK = 20


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
    customers: dict[str, Customer] = field(default_factory=dict)
    """CRM account id -> its ERP customer, tax id, DUNS number and customer number included."""


@dataclass(frozen=True)
class CrmOnlyAccount:
    """A CRM account the ERP has no customer for yet, with what mastering it needs."""

    account_id: str
    name: str
    legal_entity: str
    tax_id: str
    country_code: str
    duplicates: Customer | None = None
    """The ERP customer it matches by tax id (another account's), if made to."""


class Books(Protocol):
    """Where master data is seeded: an ERP's books (:class:`sandbox.erp.ErpSandbox`), or
    several ERPs' alike."""

    def seed_products(self, products: Iterable[Product]) -> int: ...

    def seed_price_books(self, price_books: Iterable[PriceBook]) -> int: ...

    def seed_customers(self, customers: Iterable[Customer]) -> int: ...

    def seed_stock(self, levels: Iterable[StockLevel]) -> int: ...


def seed(crm: CrmSandbox, erp: Books, rng: random.Random) -> MasterData:
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
    owners: list[tuple[str, Customer | None]] = []  # (kind, its ERP customer)
    for index, entity in enumerate(ENTITIES):
        for n in range(12):
            kind = "held" if n == 0 else "active"
            customer = Customer(
                f"C-{entity.code}-{n:04d}",
                f"{entity.city} Customer {n}",
                None,
                entity.code,
                CustomerStatus.CREDIT_HOLD if kind == "held" else CustomerStatus.ACTIVE,
                Decimal(5_000_000),
                entity.currency,
                number=f"2{index}{n:04d}",
                payment_terms="NET30",
                tax_id=f"{entity.country}{900_000_000 + 1000 * index + n}",
                duns=f"{(index + 1) * 10**8 + n:09d}",
                country_code=entity.country,
            )
            # The CRM holds what it owns of the customer as the ERP has it: in step.
            accounts.append(
                {
                    "Name": customer.name,
                    "ERP_Customer_Id__c": customer.id,
                    "Tax_Id__c": customer.tax_id,
                    "DUNS__c": customer.duns,
                    "Legal_Entity__c": entity.code,
                    "CurrencyIsoCode": entity.currency,
                    "BillingCountryCode": entity.country,
                }
            )
            owners.append((kind, customer))
    accounts.append({"Name": "Prospect without ERP customer"})
    owners.append(("unmastered", None))
    account_ids = crm.insert("Account", accounts)
    for (kind, owner), account_id in zip(owners, account_ids, strict=True):
        if owner is None:
            data.unmastered_accounts.append(account_id)
            continue
        data.customers[account_id] = replace(owner, crm_account_id=account_id)
        if kind == "held":
            data.held_accounts[owner.legal_entity] = account_id
        else:
            data.accounts.setdefault(owner.legal_entity, []).append(account_id)
    erp.seed_customers(data.customers.values())
    erp.seed_stock(stock())
    return data


def stock() -> list[StockLevel]:
    """Every SKU in every region: a few short, each with the date more arrives."""
    regions = sorted({entity.region for entity in ENTITIES})
    levels = []
    for r, region in enumerate(regions):
        for n, sku in enumerate((*SKUS, DISCONTINUED)):
            quantity = (n * 37 + r * 53) % 250
            restock = RESTOCK + timedelta(days=n) if quantity < LOW_STOCK else None
            levels.append(StockLevel(sku, region, Decimal(quantity), restock))
    return levels


def crm_only_accounts(
    crm: CrmSandbox, entity: LegalEntity, count: int, rng: random.Random, **fields: Any
) -> list[CrmOnlyAccount]:
    """``count`` CRM accounts of ``entity`` with no ERP customer: a name, tax id, legal
    entity, currency and billing address of their own, and ``fields`` (``Sync_To_ERP__c``,
    say), so nothing in the ERP matches them."""
    made = []
    for _ in range(count):
        token = rng.getrandbits(40)
        made.append(
            {
                "Name": f"{entity.city} Prospect {token:010x}",
                "Tax_Id__c": f"{entity.country}-{token:013d}",
                **_master_fields(entity),
                **fields,
            }
        )
    ids = crm.insert("Account", made)
    return [
        CrmOnlyAccount(account_id, str(m["Name"]), entity.code, str(m["Tax_Id__c"]), entity.country)
        for account_id, m in zip(ids, made, strict=True)
    ]


def duplicate_account(
    crm: CrmSandbox, data: MasterData, entity: LegalEntity, **fields: Any
) -> CrmOnlyAccount:
    """A new CRM account, under another name, whose tax id is an ERP customer's of
    ``entity`` (another account's) written with spaces: a duplicate to be caught, not a
    second customer."""
    original = next(
        c
        for c in data.customers.values()
        if c.legal_entity == entity.code and c.status is CustomerStatus.ACTIVE
    )
    assert original.tax_id is not None
    tax_id = " ".join((original.tax_id[:2], original.tax_id[2:6], original.tax_id[6:]))
    name = f"{original.name} Trading"
    record = {"Name": name, "Tax_Id__c": tax_id, **_master_fields(entity), **fields}
    (account_id,) = crm.insert("Account", [record])
    return CrmOnlyAccount(account_id, name, entity.code, tax_id, entity.country, original)


def _master_fields(entity: LegalEntity) -> dict[str, str]:
    """What an account needs to be mastered under ``entity``, its tax id and name aside."""
    return {
        "Legal_Entity__c": entity.code,
        "CurrencyIsoCode": entity.currency,
        **_address("Billing", entity),
    }


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


def for_new_customers(
    planned: list[PlannedOrder],
    prospects: Mapping[str, Sequence[CrmOnlyAccount]],
    share: float,
    rng: random.Random,
) -> list[PlannedOrder]:
    """``planned`` with about ``share`` of its valid orders placed by ``prospects`` (legal
    entity -> accounts the ERP has no customer for yet) of the order's own legal entity: each
    is mastered by its first order, which waits for it and ships."""
    moved = []
    for order in planned:
        accounts = prospects.get(str(order.record["Legal_Entity__c"]), ())
        if order.expected == SHIPPED and accounts and rng.random() < share:
            order = PlannedOrder(
                order.record | {"AccountId": rng.choice(accounts).account_id}, SHIPPED
            )
        moved.append(order)
    return moved
