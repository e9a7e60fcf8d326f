"""``revsync exceptions ls | act``: the console's worklist and its actions from a terminal,
through the same desk and the same audit trail (dry run unless ``--yes``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from revsync.errors import RevsyncError
from revsync.ops import exceptions as ex
from revsync.ops.cli import Actor, Yes, console, fail, operations_for
from revsync.settings import ConsoleSettings, OpsSettings, SettingsError

exceptions_app = typer.Typer(
    help="The exception worklist: rejections, dead letters, held keys, stuck orders.",
    no_args_is_help=True,
)

Kinds = Annotated[list[str] | None, typer.Option("--kind", help=f"One of {', '.join(ex.KINDS)}.")]
Reasons = Annotated[
    list[str] | None,
    typer.Option("--reason", help="A rejection reason (PRICING_MISMATCH) or error class."),
]
Consumers = Annotated[list[str] | None, typer.Option("--consumer", help="e.g. order-sync.")]


def _stage_ages() -> dict[str, timedelta]:
    return ex.parse_stage_ages(ConsoleSettings.load().console_stage_ages)


@exceptions_app.command("ls")
def ls(
    status: Annotated[str, typer.Option(help=f"{', '.join(ex.STATUSES)} or all.")] = "open",
    kind: Kinds = None,
    reason: Reasons = None,
    consumer: Consumers = None,
    order: Annotated[
        str | None, typer.Option(help="CRM order id or number, ERP order number, correlation id.")
    ] = None,
    assignee: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    actor: Actor = None,
) -> None:
    """The worklist, newest first, with its counts by kind and reason."""
    if status not in (*ex.STATUSES, "all"):
        raise fail(f"unknown status {status}; one of {', '.join(ex.STATUSES)} or all")
    unknown = sorted(set(kind or ()) - set(ex.KINDS))
    if unknown:
        raise fail(f"unknown kind {', '.join(unknown)}; one of {', '.join(ex.KINDS)}")
    filters = ex.Filters(
        status=status,
        kinds=frozenset(kind or ()),
        reasons=frozenset(reason or ()),
        consumers=frozenset(consumer or ()),
        assignee=assignee,
        tag=tag,
        order=order,
    )
    try:
        operations = operations_for(actor)
        page = operations.worklist(filters, _stage_ages(), limit)
    except (RevsyncError, SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    table = Table(title=f"{page.total} {status} (showing {len(page.items)})", title_justify="left")
    for column in ("ref", "opened", "kind", "reason", "order", "consumer", "what happened"):
        table.add_column(column, overflow="fold")
    for item in page.items:
        table.add_row(
            item.ref,
            f"{item.opened_at:%Y-%m-%d %H:%M}",
            item.kind,
            item.reason,
            item.crm_order_number or item.order_key or "",
            item.consumer,
            item.summary + (" (holds the order's later records)" if item.held else ""),
        )
    console.print(table)
    for facet in ("kind", "reason"):
        counts = page.counts.get(facet, {})
        if counts:
            console.print(
                f"by {facet}: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
            )


@exceptions_app.command("act")
def act(
    action: Annotated[str, typer.Argument(help=f"One of {', '.join(ex.ACTIONS)}.")],
    refs: Annotated[list[str], typer.Argument(help="Refs from `exceptions ls`.")],
    value: Annotated[
        str, typer.Option("--value", help="The note (resolve, discard), assignee or tags.")
    ] = "",
    yes: Yes = False,
    actor: Actor = None,
) -> None:
    """What ``action`` does to each exception; with --yes, do it (audited)."""
    if action not in ex.ACTIONS:
        raise fail(f"no action {action!r}; actions are {', '.join(ex.ACTIONS)}")
    try:
        operations = operations_for(actor)
        desk = operations.exception_desk(_stage_ages(), OpsSettings.load().dlt_max_replays)
        effects = desk.act(action, refs, value) if yes else desk.plan(action, refs, value)
    except (RevsyncError, SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    for effect in effects:
        console.print(f"{effect.ref}: {effect.change or 'nothing: ' + (effect.why_not or '')}")
    done = sum(effect.change is not None for effect in effects)
    if yes:
        console.print(f"{action}: done for {done} of {len(effects)} (audited)")
    else:
        console.print(f"dry run: {action} would act on {done} of {len(effects)}; add --yes")
