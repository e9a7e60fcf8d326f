"""``revsync acls plan|apply`` and ``revsync db migrate``: the governance job's share of least
privilege, a Kafka principal per service and a PostgreSQL role per purpose."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from revsync.contracts.cli import SchemasDir, console, errors, load_contracts
from revsync.deployables import ApiDeployable, SourceDeployable, discover
from revsync.migrations import Tables, migrate
from revsync.ops import storage as ops_storage
from revsync.runtime import storage as runtime_storage
from revsync.security import (
    POSTGRES_OPERATOR,
    POSTGRES_SERVICE,
    Grant,
    acl_plan,
    apply_acls,
)
from revsync.settings import Settings, SettingsError

acls_app = typer.Typer(help="Kafka ACLs: a principal per service, from the catalog.")
db_app = typer.Typer(help="revsync's PostgreSQL tables and the grants of each role.")


def _plan(directory: SchemasDir) -> tuple[Settings, list[Grant]]:
    """The settings and the ACL plan of the catalog in ``directory``, for every installed
    deployable."""
    contracts = load_contracts(directory)
    deployables = {name: d.service for name, d in discover().items()}
    return contracts.settings, acl_plan(contracts.catalog, deployables)


@acls_app.command("plan")
def plan_command(directory: SchemasDir = None) -> None:
    """Show every ACL the catalog calls for: each service's, the operators', governance's."""
    _, plan = _plan(directory)
    for grant in plan:
        console.print(str(grant))


@acls_app.command("apply")
def apply_command(
    directory: SchemasDir = None,
    dry_run: Annotated[bool, typer.Option(help="Only show the difference.")] = False,
    prune: Annotated[
        bool,
        typer.Option(
            help="Also delete the plan's principals' ALLOW ACLs (from any host) that the plan "
            "no longer has; run it once every replica runs the new version, since the old "
            "ones may still need them. DENY and host-limited ACLs are never deleted."
        ),
    ] = False,
) -> None:
    """Grant revsync's principals what the catalog calls for; with --prune, also take back
    what no service needs any more. Needs a principal allowed to alter the cluster's ACLs
    (the governance job's)."""
    settings, plan = _plan(directory)
    try:
        admin = AdminClient(settings.kafka_config())
        changes = apply_acls(admin, plan, dry_run=dry_run, prune=prune)
    except KafkaException as error:
        # The code names the refusal; the broker's own text is its request's internals.
        errors.print(f"error: applying the ACLs failed: {error.args[0].name()}")
        raise typer.Exit(1) from None
    for grant in changes.added:
        console.print(f"add     {grant}")
    for stale in changes.removed:
        console.print(f"delete  {stale}")
    verb = "would change" if dry_run else "changed"
    console.print(
        f"acls: {len(plan)} in the plan; {verb} {len(changes.added) + len(changes.removed)}"
    )


@db_app.command("migrate")
def migrate_command() -> None:
    """Create or update revsync's tables and grant each role its share: the services' role
    its pipeline and the controls, the operators' role the ledger and the controls and only
    inserts into the audit trail. Run as the role that is to own the tables (the
    migrations' role)."""
    try:
        dsn = Settings.load().postgres_dsn.get_secret_value()
    except SettingsError as error:
        errors.print(f"error: {error}")
        raise typer.Exit(2) from None
    tables = every_table()
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
            granted = migrate(connection, tables, (POSTGRES_SERVICE, POSTGRES_OPERATOR))
    except psycopg.Error as error:
        errors.print(
            f"error: migrating failed: {type(error).__name__}: {error.diag.message_primary}"
        )
        raise typer.Exit(1) from None
    for line in granted:
        console.print(f"grant  {line}")
    console.print(f"db: {sum(len(t.names) for t in tables)} tables migrated")


def every_table() -> list[Tables]:
    """The runtime's and the operators' tables, and those of each installed deployable."""
    own = [
        tables
        for deployable in discover().values()
        if isinstance(deployable, SourceDeployable | ApiDeployable)
        for tables in deployable.tables
    ]
    return [*runtime_storage.TABLES, *ops_storage.TABLES, *own]
