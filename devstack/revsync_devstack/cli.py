"""``revsync stack``: the local Kafka, schema registry and PostgreSQL, contributed to the
``revsync`` command line by this development package."""

from __future__ import annotations

import os
import shlex
import time
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from revsync.settings import STACK_PREFIX, SettingsError
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import Kafka, LocalStack, StackError, State, tail

stack_app = typer.Typer(help="The local Kafka, schema registry and PostgreSQL.")
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


Secure = Annotated[
    bool,
    typer.Option(
        help="The secured stack (TLS, SASL/SCRAM and ACLs, passwords; its own folder and "
        "ports); same as REVSYNC_STACK_SECURE=1.",
    ),
]


def _local_stack(brokers: int | None = None, secure: bool = False) -> LocalStack:
    if secure:
        # As if set in the environment: the secured stack's folder and ports apply wherever
        # no other setting names them.
        os.environ[f"{STACK_PREFIX}SECURE"] = "1"
    try:
        settings = StackSettings.load()
        if brokers is not None:
            # Through validation again, so a bad count or a port clash is named.
            settings = StackSettings.model_validate(
                {**settings.model_dump(), "kafka_brokers": brokers}
            )
        return LocalStack(settings)
    except ValidationError as error:
        raise _fail(f"--brokers {brokers}: {error.errors()[0]['msg']}") from None
    except (SettingsError, StackError) as error:
        raise _fail(str(error)) from None


@stack_app.command("up")
def stack_up(
    brokers: Annotated[
        int | None,
        typer.Option(
            help="Kafka brokers of a stack made now: 1, or 3 (a 3-voter KRaft quorum, "
            "replication factor 3, min.insync.replicas 2; broker n on the Kafka ports + 2(n-1)). "
            "A stack already made keeps its number; default: REVSYNC_STACK_KAFKA_BROKERS, else 1.",
        ),
    ] = None,
    secure: Secure = False,
) -> None:
    """Start Kafka, the registry and PostgreSQL; a running stack is left as it is."""
    stack = _local_stack(brokers, secure)
    started = time.monotonic()
    try:
        report = stack.up()
    except StackError as error:
        raise _fail(str(error)) from None
    if not report.started:
        console.print("stack already running: nothing to do")
    else:
        console.print(
            f"started {', '.join(report.started)} in {time.monotonic() - started:.1f}s"
            + (
                f" (already running: {', '.join(report.already_running)})"
                if report.already_running
                else ""
            )
        )
    _print_status(stack)


@stack_app.command("down")
def stack_down(
    purge: Annotated[bool, typer.Option(help="Also delete the stack's data and logs.")] = False,
    secure: Secure = False,
) -> None:
    """Stop the stack (registry, Kafka, then PostgreSQL)."""
    stopped = _local_stack(secure=secure).down(purge=purge)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "stack was not running")


@stack_app.command("status")
def stack_status(secure: Secure = False) -> None:
    """A table of the stack's components; exit 1 unless all are healthy."""
    stack = _local_stack(secure=secure)
    _print_status(stack)
    if not stack.is_up():
        raise typer.Exit(code=1)


@stack_app.command("kill")
def stack_kill(
    broker: Annotated[int, typer.Option(help="The broker to kill (1-based).")],
) -> None:
    """SIGKILL one Kafka broker, as a crash would (no controlled shutdown); `stack start
    --broker N` brings it back. With three brokers the cluster carries on without it."""
    stack = _local_stack()
    try:
        pid = stack.kill_broker(broker)
    except StackError as error:
        raise _fail(str(error)) from None
    name = stack.broker(broker).name
    console.print(f"killed {name} (pid {pid})" if pid else f"{name} was not running")


@stack_app.command("start")
def stack_start(
    broker: Annotated[int, typer.Option(help="The broker to start (1-based).")],
) -> None:
    """Start one Kafka broker again (after `stack kill`) and wait until the cluster counts it
    live."""
    stack = _local_stack()
    started = time.monotonic()
    try:
        was_stopped = stack.start_broker(broker)
    except StackError as error:
        raise _fail(str(error)) from None
    name = stack.broker(broker).name
    console.print(
        f"started {name} in {time.monotonic() - started:.1f}s"
        if was_stopped
        else f"{name} already running: nothing to do"
    )


@stack_app.command("logs")
def stack_logs(
    component: Annotated[
        str | None,
        typer.Argument(help="postgres, kafka (every broker), kafka-N (one of several), registry"),
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end.")] = 40,
) -> None:
    """The end of each component's log."""
    stack = _local_stack()
    chosen = [
        c
        for c in stack.components
        if component in (None, c.name) or (component == "kafka" and isinstance(c, Kafka))
    ]
    if not chosen:
        names = list(dict.fromkeys(["postgres", "kafka", *(c.name for c in stack.components)]))
        raise _fail(f"no component {component!r}; choose {', '.join(names[:-1])} or {names[-1]}")
    for item in chosen:
        console.rule(f"{item.name}: {item.log}")
        console.print(tail(item.log, lines), markup=False, highlight=False)


@stack_app.command("check")
def stack_check() -> None:
    """Start the stack, send one event through Kafka and the registry, and read it back."""
    from revsync_devstack.stack_check import run_stack_check

    stack = _local_stack()
    try:
        stack.up()
        # The stack's own endpoints (every broker), unless the environment names others.
        settings = stack.client_settings()
    except (StackError, SettingsError) as error:
        raise _fail(str(error)) from None
    for line in run_stack_check(settings):
        console.print(line, highlight=False)


def _print_status(stack: LocalStack) -> None:
    table = Table(title=f"revsync local stack ({stack.settings.dir})")
    for column in ("component", "state", "pid", "ports", "memory MiB (PSS)"):
        table.add_column(column)
    table.add_column("log")
    style = {State.HEALTHY: "green", State.UNHEALTHY: "yellow", State.STOPPED: "red"}
    for status in stack.status():
        table.add_row(
            status.name,
            f"[{style[status.state]}]{status.state}[/]",
            str(status.pid or "-"),
            ", ".join(f"{purpose} {port}" for purpose, port in status.ports.items()),
            f"{status.rss_mb:.0f}" if status.rss_mb is not None else "-",
            str(status.log.relative_to(stack.settings.dir)),
        )
    console.print(table)


@stack_app.command("env")
def stack_env(
    identity: Annotated[
        str,
        typer.Option(
            "--as",
            help="Whose settings: a deployable (order-sync, ...), operator or governance.",
        ),
    ] = "governance",
    secure: Secure = False,
) -> None:
    """Print ``export REVSYNC_...`` lines that reach the stack as ``--as``; on a secured stack
    with that principal's own credentials: ``eval "$(revsync stack env --secure --as
    operator)"``."""
    for name, value in _local_stack(secure=secure).environment(identity).items():
        print(f"export {name}={shlex.quote(value)}")
