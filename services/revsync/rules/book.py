"""The rule book: which acceptance rules apply to an order, per legal entity and per region.

The rules file (YAML) has a ``default`` section, then overrides under ``regions`` and
``legal_entities``; for an order, its legal entity's settings win over its region's, and
those over the defaults. Unknown keys are refused, so a misspelt rule fails at start-up.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from revsync.errors import ContractError
from revsync.yaml_files import load_model

DEFAULT_RULES = Path(__file__).with_name("order_rules.yaml")
"""The bundled rules; ``REVSYNC_ORDER_RULES`` names a file of one's own."""


class RulesError(ContractError):
    """The rules file is missing or malformed; the message names the file and the entry."""


class OrderRules(BaseModel):
    """What an order must satisfy to become an ERP sales order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currencies: frozenset[str] = Field(min_length=1)
    """Currencies the legal entity invoices in."""
    price_tolerance: Decimal = Field(ge=0, le=1)
    """Largest relative difference between a CRM unit price and the ERP price book's."""
    require_po_number: bool = False
    """Whether the customer's purchase order number is mandatory."""
    max_order_total: Decimal | None = Field(default=None, gt=0)
    """Orders above this grand total need manual entry in the ERP."""


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currencies: frozenset[str] | None = None
    price_tolerance: Decimal | None = Field(default=None, ge=0, le=1)
    require_po_number: bool | None = None
    max_order_total: Decimal | None = Field(default=None, gt=0)


class RuleBook(BaseModel):
    """Every rule set, resolved per order by :meth:`for_order`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: OrderRules
    regions: dict[str, _Overrides] = Field(default_factory=dict)
    legal_entities: dict[str, _Overrides] = Field(default_factory=dict)

    def for_order(self, legal_entity: str, region: str) -> OrderRules:
        merged: dict[str, Any] = self.default.model_dump()
        for overrides in (self.regions.get(region), self.legal_entities.get(legal_entity)):
            if overrides is not None:
                merged |= overrides.model_dump(exclude_none=True)
        return OrderRules.model_validate(merged)

    @classmethod
    def load(cls, path: Path | None = None) -> Self:
        """The rules in ``path`` (``REVSYNC_ORDER_RULES``); None: the bundled ones."""
        return load_model(path or DEFAULT_RULES, cls, RulesError, "order rules")
