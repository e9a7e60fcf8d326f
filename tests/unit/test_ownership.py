"""The governed field-ownership table: loaded with the contracts, and refused when it names a
CRM field twice or gives the ERP a field no contract carries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from contract_fixtures import SCHEMAS_DIR
from revsync.contracts.ownership import OWNERSHIP_FILE, Owner, Ownership, OwnershipError


def test_the_bundled_table_gives_each_customer_field_one_owner() -> None:
    customer = Ownership.load(SCHEMAS_DIR).customer

    assert customer.crm_object == "Account"
    assert customer.owner_of_crm_field("credit_limit__c") is Owner.ERP  # as Salesforce: any case
    assert customer.owner_of_crm_field("Name") is Owner.CRM
    assert customer.owner_of_crm_field("Phone") is None  # not synced at all
    assert set(customer.crm_fields(Owner.ERP).values()) >= {
        "ERP_Customer_Id__c",
        "ERP_Customer_Number__c",
        "Credit_Limit__c",
    }


def edited(tmp_path: Path, change: dict[str, dict[str, str]]) -> Path:
    folder = tmp_path / "contracts"
    shutil.copytree(SCHEMAS_DIR, folder)
    path = folder / OWNERSHIP_FILE
    table = yaml.safe_load(path.read_text())
    table["customer"]["fields"].update(change)
    path.write_text(yaml.safe_dump(table))
    return folder


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"nickname": {"crm": "name", "erp": "nickname", "owner": "crm"}},
            "CRM fields named by two entries: name",
        ),
        (
            {"rating": {"crm": "Rating", "erp": "rating", "owner": "erp"}},
            "ERP-owned fields no contract carries (CustomerMastered, CreditStatusChanged): rating",
        ),
        (
            {"rating": {"crm": "Rating", "erp": "rating", "owner": "both"}},
            "customer.fields.rating.owner: Input should be 'crm' or 'erp'",
        ),
    ],
    ids=["a CRM field twice", "an ERP field no contract carries", "an unknown owner"],
)
def test_a_bad_table_is_refused_naming_the_file_and_the_entry(
    tmp_path: Path, change: dict[str, dict[str, str]], says: str
) -> None:
    folder = edited(tmp_path, change)

    with pytest.raises(OwnershipError) as refused:
        Ownership.load(folder)

    assert str(refused.value).startswith(str(folder / OWNERSHIP_FILE))
    assert says in str(refused.value)
