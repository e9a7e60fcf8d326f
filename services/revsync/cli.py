"""The ``revsync`` command line: the contracts, the services and the dead-letter tooling, and
any sub-commands other installed packages contribute (the ``revsync.commands`` entry points,
such as the development stack's ``revsync stack``)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Console

from revsync.console.cli import console_app
from revsync.contracts.cli import schemas_app, topics_app
from revsync.ops.cli import dlt_app
from revsync.ops.consumer_cli import consumer_app, holds_app, rewind
from revsync.ops.exceptions_cli import exceptions_app
from revsync.security_cli import acls_app, db_app
from revsync.settings import SettingsError

COMMANDS = "revsync.commands"

app = typer.Typer(help="revsync: CRM <-> ERP order-to-cash sync on Kafka.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
app.add_typer(topics_app, name="topics")
app.add_typer(dlt_app, name="dlt")
app.add_typer(exceptions_app, name="exceptions")
app.add_typer(holds_app, name="holds")
app.add_typer(consumer_app, name="consumer")
app.add_typer(acls_app, name="acls")
app.add_typer(db_app, name="db")
app.add_typer(console_app, name="console")
app.command("replay")(rewind)
for command in entry_points(group=COMMANDS):
    app.add_typer(command.load(), name=command.name)

errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


@app.command("run")
def run_service(
    service: Annotated[
        str,
        typer.Argument(
            help="order-sync, invoice-sync, fulfillment-sync, customer-sync, "
            "erp-outbox-publisher, crm-cdc-bridge or process-api"
        ),
    ],
) -> None:
    """Run one service in the foreground until SIGTERM, as production does."""
    from revsync.errors import RevsyncError
    from revsync.run import run

    try:
        run(service)
    except (SettingsError, RevsyncError) as error:
        raise _fail(str(error)) from None
