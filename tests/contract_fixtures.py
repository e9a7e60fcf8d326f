"""Private, isolated copies of the contracts for tests to edit, register and apply."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from sandbox.harness import private_contracts
from typer.testing import CliRunner, Result

from revsync.cli import app
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout these tests run from."""
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


def isolated_contracts(destination: Path) -> Path:
    """A copy of the contracts whose topics, subjects and consumers no other test uses."""
    # Few partitions: a test session creates many of these catalogs on one small broker.
    return private_contracts(SCHEMAS_DIR, destination, partitions=3)


def cli_for(settings: Settings) -> Callable[..., Result]:
    """Runs the revsync CLI against the test session's endpoints."""
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
    }

    def run(*arguments: str) -> Result:
        return CliRunner().invoke(app, list(arguments), env=environment)

    return run


def governed(revsync: Callable[..., Result], contracts: Path) -> Catalog:
    """Register the contracts and apply their topics, as a deployment does."""
    for command in (("schemas", "register"), ("topics", "apply")):
        result = revsync(*command, "--dir", str(contracts))
        assert result.exit_code == 0, result.output
    return load_catalog(contracts)


def drop_topics(settings: Settings, contracts: Path) -> None:
    """Delete every topic of an isolated catalog, so test sessions do not pile them up."""
    names = [topic.name for topic in load_catalog(contracts).topic_plan()]
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [name for name in names if name in existing]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            future.result(timeout=30)
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        exists = connection.execute("SELECT to_regclass('revsync_outbox')").fetchone()
        if exists and exists[0]:
            # Emitted events no relay published: their topics are gone now.
            connection.execute("DELETE FROM revsync_outbox WHERE topic = ANY(%s)", (names,))
