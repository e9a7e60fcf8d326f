"""``revsync schemas ...`` and ``revsync topics apply``: governing the contracts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
import yaml
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from rich.console import Console

from revsync.contracts.asyncapi import build_document
from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.lint import lint
from revsync.contracts.ownership import Ownership
from revsync.contracts.registry import register_contracts
from revsync.contracts.schemas import (
    ReleaseRecord,
    SchemaRepository,
    check_compatibility,
    release_changed,
)
from revsync.contracts.topics import ChangeKind, apply_changes, plan_changes
from revsync.errors import ContractError
from revsync.settings import Settings, SettingsError

schemas_app = typer.Typer(help="Event contracts: lint, check, register, release, docs.")
topics_app = typer.Typer(help="Kafka topics, as the catalog declares them.")
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

SchemasDir = Annotated[
    Path | None,
    typer.Option("--dir", help="Contracts folder (default: REVSYNC_SCHEMAS_DIR)."),
]


@dataclass(frozen=True)
class Contracts:
    settings: Settings
    catalog: Catalog
    schemas: SchemaRepository
    releases: ReleaseRecord


def load_contracts(directory: Path | None) -> Contracts:
    try:
        settings = Settings.load()
        folder = directory or settings.schemas_dir
        # Field ownership is governed with the contracts: every command refuses a bad table.
        Ownership.load(folder)
        return Contracts(
            settings, load_catalog(folder), SchemaRepository(folder), ReleaseRecord(folder)
        )
    except (SettingsError, ContractError) as error:
        errors.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None


@schemas_app.command("lint")
def lint_command(directory: SchemasDir = None) -> None:
    """Docs on everything, decimals for money, UTC timestamps, enum defaults, naming."""
    contracts = load_contracts(directory)
    findings = lint(contracts.catalog, contracts.schemas, contracts.releases)
    for finding in findings:
        console.print(str(finding))
    if findings:
        errors.print(f"{len(findings)} finding(s)")
        raise typer.Exit(1)
    console.print(f"lint: {len(contracts.schemas.definitions)} schemas clean")


@schemas_app.command("check")
def check_command(directory: SchemasDir = None) -> None:
    """Compatibility of the working tree with every released version, in the catalog's mode."""
    contracts = load_contracts(directory)
    breaks = _breaks(contracts)
    if breaks:
        raise typer.Exit(1)
    console.print(
        f"check: {len(contracts.catalog.avro_topics)} subjects compatible with every released "
        f"version ({contracts.catalog.compatibility})"
    )


@schemas_app.command("release")
def release_command(directory: SchemasDir = None) -> None:
    """Record the working tree as the next released version of every changed subject."""
    contracts = load_contracts(directory)
    if _breaks(contracts):
        raise typer.Exit(1)
    released = release_changed(contracts.catalog, contracts.schemas, contracts.releases)
    for subject, version in released:
        console.print(f"released {subject} v{version}")
    if not released:
        console.print("release: nothing changed since the last release")


@schemas_app.command("register")
def register_command(
    registry: Annotated[
        str | None, typer.Option(help="Registry URL (default: REVSYNC_SCHEMA_REGISTRY_URL).")
    ] = None,
    directory: SchemasDir = None,
    local_check: Annotated[
        bool, typer.Option(help="Refuse locally first what `check` would refuse.")
    ] = True,
) -> None:
    """Set each subject's compatibility, then register released versions and the working tree."""
    contracts = load_contracts(directory)
    if local_check and _breaks(contracts):
        errors.print("not registering: fix the breaks above, or release a new major topic")
        raise typer.Exit(1)
    config = contracts.settings.registry_config()
    if registry:
        config["url"] = registry.rstrip("/")
    client = SchemaRegistryClient(config)
    try:
        for registration in register_contracts(
            client, contracts.catalog, contracts.schemas, contracts.releases
        ):
            console.print(str(registration))
    except ContractError as error:
        errors.print(f"[bold red]refused:[/] {error}")
        raise typer.Exit(1) from None


@schemas_app.command("docs")
def docs_command(
    directory: SchemasDir = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """An AsyncAPI 3.0 document of every topic, message and operation."""
    contracts = load_contracts(directory)
    document = build_document(contracts.catalog, contracts.schemas)
    text = (
        json.dumps(document, indent=2)
        if as_json
        else yaml.safe_dump(document, sort_keys=False, width=100)
    )
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n")
        console.print(f"wrote {output}")


@topics_app.command("apply")
def topics_apply_command(
    directory: SchemasDir = None,
    dry_run: Annotated[bool, typer.Option(help="Only show the difference.")] = False,
) -> None:
    """Create or update the catalog's topics (with each consumer's retry and DLT topics)."""
    contracts = load_contracts(directory)
    admin = AdminClient(contracts.settings.kafka_config())
    changes = plan_changes(admin, contracts.catalog)
    if not changes:
        console.print(f"topics: all {len(contracts.catalog.topic_plan())} match the catalog")
        return
    for change in changes:
        console.print(str(change))
    if not dry_run:
        apply_changes(admin, contracts.catalog, changes)
        console.print(
            f"applied {sum(c.kind is not ChangeKind.CANNOT_SHRINK for c in changes)} change(s)"
        )
    if any(change.kind is ChangeKind.CANNOT_SHRINK for change in changes):
        errors.print("some topics have more partitions than the catalog: fix the catalog")
        raise typer.Exit(1)


def _breaks(contracts: Contracts) -> bool:
    try:
        breaks = check_compatibility(contracts.catalog, contracts.schemas, contracts.releases)
    except ContractError as error:  # e.g. the catalog names a schema no .avsc defines
        errors.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    for found in breaks:
        errors.print(f"[red]break:[/] {found}")
    return bool(breaks)


schemas_app.add_typer(topics_app, name="topics")
