"""``revsync replay --service S --from TIME|OFFSET`` (a rewind), ``revsync holds ls | release``
and ``revsync consumer resume``: what an operator does to a consumer and the keys it holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from revsync.errors import RevsyncError
from revsync.ops.cli import Actor, Key, Service, Yes, console, fail, operations_for, utc
from revsync.ops.operations import Operations
from revsync.runtime.holds import HeldKey
from revsync.settings import SettingsError


def rewind(
    service: Annotated[str, typer.Option("--service", "-s", help="order-sync, invoice-sync, ...")],
    start: Annotated[str, typer.Option("--from", help="An ISO time, or an offset.")],
    yes: Yes = False,
    actor: Actor = None,
) -> None:
    """Re-consume a service's input topics from a time or an offset (its group must be idle)."""
    when: datetime | None = None
    offset: int | None = None
    if start.isdigit():
        offset = int(start)
    else:
        try:
            when = utc(datetime.fromisoformat(start))
        except ValueError:
            raise fail(f"--from {start!r} is neither an ISO time nor an offset") from None
    try:
        operations = operations_for(actor)
        consumer = operations.catalog.consumer_of(service.replace("-", "_"))
        positions = operations.rewind(consumer, when=when, offset=offset, dry_run=not yes)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    table = Table(
        title=f"{consumer}: {'new' if yes else 'would-be'} positions", title_justify="left"
    )
    table.add_column("topic")
    table.add_column("partition", justify="right")
    table.add_column("offset", justify="right")
    for (name, partition), position in sorted(positions.items()):
        table.add_row(name, str(partition), str(position))
    console.print(table)
    if not yes:
        console.print("dry run: add --yes to move the offsets")


holds_app = typer.Typer(help="Held keys: what waits behind a failed record, and its release.")


def _held(
    service: list[str] | None, key: list[str] | None, actor: str | None
) -> tuple[Operations, list[str], list[bytes]]:
    operations = operations_for(actor)
    consumers = [operations.catalog.consumer_of(name.replace("-", "_")) for name in service or []]
    return operations, consumers, [k.encode() for k in key or []]


def _holds_table(title: str, held: list[HeldKey]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("consumer", "key", "source topic", "blocker", "parked", "held for"):
        table.add_column(column, justify="right" if column in ("parked", "held for") else "left")
    now = datetime.now(UTC)
    for item in held:
        age = now - item.held_since
        table.add_row(
            Text(item.consumer),
            Text(item.key.decode(errors="replace")),
            Text(item.source_topic),
            Text(item.blocker),
            str(item.parked),
            str(age - timedelta(microseconds=age.microseconds)),
        )
    return table


@holds_app.command("ls")
def holds_ls(service: Service = None, key: Key = None, actor: Actor = None) -> None:
    """Held keys: consumer, key, source topic, the record they wait on, parked count, age."""
    try:
        operations, consumers, keys = _held(service, key, actor)
        held = operations.holds(consumers, keys)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    console.print(_holds_table(f"{len(held)} held keys", held))


@holds_app.command("release")
def holds_release(
    service: Service = None, key: Key = None, yes: Yes = False, actor: Actor = None
) -> None:
    """Release held keys, so their parked records are handled next, in order (dry run
    unless --yes). The record a key waited on stays where it is (retry tier or DLT)."""
    try:
        operations, consumers, keys = _held(service, key, actor)
        held = operations.release_holds(consumers, keys, dry_run=not yes)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    verb = "released" if yes else "would release"
    console.print(_holds_table(f"{verb} {len(held)} held keys", held))
    console.print(f"{verb} {len(held)} held keys (audited)" + ("" if yes else "; add --yes"))


consumer_app = typer.Typer(help="Consumers: resume one its circuit breaker stopped.")


@consumer_app.command("resume")
def consumer_resume(
    service: Annotated[str, typer.Option("--service", "-s", help="order-sync, invoice-sync, ...")],
    actor: Actor = None,
) -> None:
    """Close a consumer's open circuit breaker (audited): it takes records again."""
    try:
        operations = operations_for(actor)
        consumer = operations.catalog.consumer_of(service.replace("-", "_"))
        operations.resume_consumer(consumer)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    console.print(f"{consumer}: circuit breaker closed; it takes records again (audited)")
