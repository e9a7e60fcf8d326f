"""Field ownership between the CRM and the ERP (``ownership.yaml`` beside the catalog):
governed data, not code. Each canonical customer field names its CRM field, its ERP field
and the one system that owns it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revsync.contracts.events import CreditStatusChanged, CustomerMastered
from revsync.errors import ContractError
from revsync.yaml_files import load_model

OWNERSHIP_FILE = "ownership.yaml"


class OwnershipError(ContractError):
    """The ownership file is missing or malformed; the message names the file and entry."""


class Owner(StrEnum):
    CRM = "crm"
    ERP = "erp"


class OwnedField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    crm: str = Field(min_length=1)
    erp: str = Field(min_length=1)
    owner: Owner


class ObjectOwnership(BaseModel):
    """Who owns each field of one object (the customer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crm_object: str = Field(min_length=1)
    fields: dict[str, OwnedField] = Field(min_length=1)

    @model_validator(mode="after")
    def _governed(self) -> Self:
        crm_names = [field.crm.lower() for field in self.fields.values()]
        twice = sorted({name for name in crm_names if crm_names.count(name) > 1})
        if twice:
            raise ValueError(f"CRM fields named by two entries: {', '.join(twice)}")
        carried = set(CustomerMastered.model_fields) | set(CreditStatusChanged.model_fields)
        uncarried = sorted(
            name
            for name, field in self.fields.items()
            if field.owner is Owner.ERP and name not in carried and name != "erp_customer_id"
        )
        if uncarried:
            raise ValueError(
                "ERP-owned fields no contract carries (CustomerMastered, CreditStatusChanged): "
                + ", ".join(uncarried)
            )
        return self

    def owned_by(self, owner: Owner) -> dict[str, OwnedField]:
        return {name: field for name, field in self.fields.items() if field.owner is owner}

    def crm_fields(self, owner: Owner) -> dict[str, str]:
        """The CRM field of each canonical field ``owner`` owns."""
        return {name: field.crm for name, field in self.owned_by(owner).items()}

    def owner_of_crm_field(self, crm_field: str) -> Owner | None:
        """Who owns a CRM field (case-insensitive, as Salesforce names are); None: not synced."""
        for field in self.fields.values():
            if field.crm.lower() == crm_field.lower():
                return field.owner
        return None


class Ownership(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    customer: ObjectOwnership

    @classmethod
    def load(cls, schemas_dir: Path) -> Self:
        return load_model(schemas_dir / OWNERSHIP_FILE, cls, OwnershipError, "field ownership")
