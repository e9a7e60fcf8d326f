"""``revsync console``: serve the exception console; ``revsync console hash-password``: a
local account's password hash."""

from __future__ import annotations

import getpass

import typer
import uvicorn
from rich.console import Console

from revsync.console.app import ConsoleConfig, create_app
from revsync.console.auth import (
    LocalAccounts,
    OidcClient,
    OidcConfig,
    hash_password,
    parse_role_map,
)
from revsync.contracts.catalog import load_catalog
from revsync.ops.exceptions import parse_stage_ages
from revsync.ops.operations import Operations
from revsync.runtime.observability import configure_logging
from revsync.settings import ConsoleSettings, OpsSettings, Settings, SettingsError

console_app = typer.Typer(
    help="The exception console: a web workbench for the worklist and order journeys.",
    invoke_without_command=True,
)
errors = Console(stderr=True)


def config_from_settings() -> tuple[ConsoleConfig, ConsoleSettings]:
    """The console's configuration from the environment (and REVSYNC_SECRETS_DIR)."""
    settings = Settings.load()
    own = ConsoleSettings.load()
    ops = OpsSettings.load()
    public_url = own.console_public_url or f"http://{own.console_host}:{own.console_port}"
    if own.console_session_secret is None:
        raise SettingsError("REVSYNC_CONSOLE_SESSION_SECRET is required (32 characters or more)")
    oidc = None
    if own.console_oidc_issuer and own.console_oidc_client_id:
        secret = own.console_oidc_client_secret
        oidc = OidcClient(
            OidcConfig(
                issuer=own.console_oidc_issuer,
                client_id=own.console_oidc_client_id,
                client_secret=secret.get_secret_value() if secret else None,
                redirect_uri=public_url.rstrip("/") + "/auth/callback",
                roles_claim=own.console_oidc_roles_claim,
                role_map=parse_role_map(own.console_oidc_role_map),
                audience=own.console_oidc_audience,
            )
        )
    accounts = LocalAccounts.load(own.console_users_file) if own.console_users_file else None
    if oidc is None and accounts is None:
        raise SettingsError(
            "nobody could sign in: set REVSYNC_CONSOLE_OIDC_ISSUER and _CLIENT_ID, or "
            "REVSYNC_CONSOLE_USERS_FILE"
        )
    config = ConsoleConfig(
        catalog=load_catalog(settings.schemas_dir),
        kafka_config=settings.kafka_config(),
        dsn=settings.postgres_dsn.get_secret_value(),
        operations=lambda name: Operations.from_settings(settings, name),
        session_secret=own.console_session_secret.get_secret_value(),
        public_url=public_url,
        accounts=accounts,
        oidc=oidc,
        stage_ages=parse_stage_ages(own.console_stage_ages),
        mask_fields=ops.mask_fields,
        max_replays=ops.dlt_max_replays,
        session_hours=own.console_session_hours,
    )
    return config, own


@console_app.callback()
def serve(context: typer.Context) -> None:
    """Serve the console until stopped (SIGTERM), as production does."""
    if context.invoked_subcommand is not None:
        return
    try:
        config, own = config_from_settings()
    except (SettingsError, ValueError) as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(code=2) from None
    configure_logging()
    uvicorn.run(
        create_app(config),
        host=own.console_host,
        port=own.console_port,
        proxy_headers=True,
        server_header=False,
        log_level="warning",
    )


@console_app.command("hash-password")
def hash_password_command() -> None:
    """Ask for a password; print its scrypt hash for a local accounts file."""
    password = getpass.getpass("password: ")
    if len(password) < 12:
        errors.print("[bold red]error:[/] at least 12 characters", highlight=False)
        raise typer.Exit(code=2)
    if getpass.getpass("again: ") != password:
        errors.print("[bold red]error:[/] the two differ", highlight=False)
        raise typer.Exit(code=2)
    print(hash_password(password))
