"""Edits to a private copy of the contracts, shared by the governance tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revsync.settings import REPO_ROOT

SCHEMAS_DIR = REPO_ROOT / "schemas" / "avro"
ORDER_CREATED = "io.revsync.events.OrderCreated.avsc"
Schema = dict[str, Any]


def copy_contracts(destination: Path) -> Path:
    """A private copy of the contracts, releases included, for a test to break."""
    return Path(shutil.copytree(SCHEMAS_DIR, destination))


def edit_schema(folder: Path, file: str, change: Callable[[Schema], None]) -> None:
    path = folder / file
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))


def field(schema: Schema, name: str) -> Schema:
    return next(f for f in schema["fields"] if f["name"] == name)


def rename_enum_symbol(schema: Schema) -> None:
    symbols = field(schema, "reason_code")["type"]["symbols"]
    symbols[symbols.index("CREDIT_HOLD")] = "CREDIT_BLOCK"


def add_optional_field(schema: Schema) -> None:
    schema["fields"].append(
        {
            "name": "sales_channel",
            "type": ["null", "string"],
            "default": None,
            "doc": "Where the order came from.",
        }
    )


# name -> (file, edit, what `check` says about the subject, which is named by its topic)
BREAKING: dict[str, tuple[str, Callable[[Schema], None], str]] = {
    "field removed without default": (
        ORDER_CREATED,
        lambda s: s["fields"].remove(field(s, "region")),
        "{order_created}-value: forward incompatible with released v1: "
        "reader_field_missing_default_value at /fields/9 (region)",
    ),
    "type changed": (
        ORDER_CREATED,
        lambda s: field(s, "crm_order_number").update(type="long"),
        "{order_created}-value: backward incompatible with released v1: type_mismatch",
    ),
    "enum symbol renamed": (
        "io.revsync.events.OrderRejected.avsc",
        rename_enum_symbol,
        "{order_rejected}-value: enum incompatible with released v1: enum "
        "io.revsync.events.RejectionReason lost symbol(s) CREDIT_HOLD",
    ),
    "field added without default": (
        ORDER_CREATED,
        lambda s: s["fields"].append({"name": "sales_channel", "type": "string", "doc": "x"}),
        "{order_created}-value: backward incompatible with released v1: "
        "reader_field_missing_default_value",
    ),
}
