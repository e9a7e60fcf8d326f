"""``revsync dlt ls | show | replay | purge | archive | export | status | cancel``: dry runs
by default, ``--yes`` to act; the options and the wiring the operators' commands share
(:mod:`revsync.ops.consumer_cli` has the consumers' own)."""

from __future__ import annotations

import functools
import getpass
import inspect
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from revsync.errors import RevsyncError
from revsync.ops import dead_letters as dl
from revsync.ops import masking
from revsync.ops.operations import Operations, grouped
from revsync.ops.replay import ReplayReport
from revsync.runtime import headers as h
from revsync.settings import OpsSettings, Settings, SettingsError

dlt_app = typer.Typer(help="Dead letters: inspect, replay, purge, archive, export.")
# No markup: what is printed comes from other systems (error text, keys, headers), and a "[/x]"
# in it must show as it is, not be read as Rich's markup (or crash it).
console = Console(markup=False, highlight=False)
errors = Console(stderr=True, markup=False, highlight=False)

Service = Annotated[
    list[str] | None, typer.Option("--service", "-s", help="order-sync, invoice-sync, ...")
]
SourceTopic = Annotated[list[str] | None, typer.Option("--topic", help="The source topic.")]
ErrorClass = Annotated[
    list[str] | None, typer.Option("--error-class", help="e.g. deserialization, transient.")
]
Key = Annotated[list[str] | None, typer.Option("--key", help="Record key (the CRM order id).")]
Correlation = Annotated[list[str] | None, typer.Option("--correlation-id")]
EventType = Annotated[list[str] | None, typer.Option("--event-type")]
Ref = Annotated[list[str] | None, typer.Option("--ref", help="topic:partition:offset.")]
Since = Annotated[datetime | None, typer.Option(help="Last failure at or after (UTC if naive).")]
Until = Annotated[datetime | None, typer.Option(help="Last failure before (UTC if naive).")]
State = Annotated[
    list[str] | None, typer.Option("--state", help=f"One of {', '.join(dl.STATES)} (open).")
]
Yes = Annotated[bool, typer.Option("--yes", help="Act; without it, a dry run.")]
Everything = Annotated[
    bool, typer.Option("--all", help="Act on every dead letter when no filter is given.")
]
Actor = Annotated[str | None, typer.Option(help="Who acts, for the audit trail.")]
FILTERS: dict[str, Any] = {
    "service": Service,
    "topic": SourceTopic,
    "error_class": ErrorClass,
    "key": Key,
    "correlation_id": Correlation,
    "event_type": EventType,
    "ref": Ref,
    "since": Since,
    "until": Until,
}


def selecting(*, states: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the filter options, and hand it their :class:`Selection` as
    ``selection``; with ``states``, ``--state`` too (else only open records are selected)."""
    options = {**FILTERS, **({"state": State} if states else {})}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.name != "selection"
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
            for name, kind in options.items()
        ]

        @functools.wraps(command)
        def run(**arguments: Any) -> None:
            chosen = {name: arguments.pop(name) for name in options}
            command(selection=_selection(**{"state": None, **chosen}), **arguments)

        run.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        run.__annotations__ = {}  # the signature carries them, resolved
        return run

    return decorate


def fail(message: str) -> typer.Exit:
    errors.print(Text.assemble(("error:", "bold red"), " ", masking.printable(message)))
    return typer.Exit(code=2)


def operations_for(actor: str | None) -> Operations:
    return Operations.from_settings(Settings.load(), actor or getpass.getuser())


def _selection(
    service: list[str] | None,
    topic: list[str] | None,
    error_class: list[str] | None,
    key: list[str] | None,
    correlation_id: list[str] | None,
    event_type: list[str] | None,
    ref: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    state: list[str] | None,
) -> dl.Selection:
    unknown = sorted(set(state or ()) - set(dl.STATES))
    if unknown:
        raise fail(f"unknown state {', '.join(unknown)}; one of {', '.join(dl.STATES)}")
    return dl.Selection(
        services=frozenset(name.replace("-", "_") for name in service or ()),
        source_topics=frozenset(topic or ()),
        error_classes=frozenset(error_class or ()),
        keys=frozenset(key or ()),
        correlation_ids=frozenset(correlation_id or ()),
        event_types=frozenset(event_type or ()),
        refs=frozenset(ref or ()),
        since=utc(since),
        until=utc(until),
        states=frozenset(state or (dl.OPEN,)),
    )


def utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _letters_table(letters: list[dl.DeadLetter], limit: int, errors: list[str]) -> Table:
    """The first ``limit`` letters, each with its error (``errors``, masked, in their order)."""
    table = Table(title=f"{len(letters)} dead letters", title_justify="left")
    for column in ("ref", "service", "source topic", "key", "class", "event", "failed at"):
        table.add_column(column, overflow="fold")
    table.add_column("replays", justify="right")
    table.add_column("state")
    table.add_column("error", overflow="fold", max_width=50)
    for letter, error in zip(letters[:limit], errors, strict=True):
        failed = letter.failed_at
        table.add_row(
            letter.ref,
            letter.service,
            letter.source_topic,
            masking.printable(letter.key_text),
            letter.error_class,
            letter.event_type or "-",
            failed.strftime("%Y-%m-%d %H:%M:%S") if failed else "-",
            str(letter.replay_count),
            letter.state,
            error[:200],
        )
    if len(letters) > limit:
        table.caption = f"{len(letters) - limit} more; narrow the filter or raise --limit"
    return table


def _groups(letters: list[dl.DeadLetter]) -> Table:
    table = Table(title="by", title_justify="left")
    table.add_column("group")
    table.add_column("value", overflow="fold")
    table.add_column("count", justify="right")
    for group, counts in grouped(letters).items():
        for value, count in counts.most_common():
            table.add_row(group, masking.printable(value), str(count))
    return table


@dlt_app.command("ls")
@selecting(states=True)
def ls(
    selection: dl.Selection,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    actor: Actor = None,
) -> None:
    """Dead letters across services, with counts by error class, source, region, product line
    (audited: they hold customer data)."""
    try:
        operations = operations_for(actor)
        letters = operations.list_letters(selection)
        fields = OpsSettings.load().mask_fields
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    errors = [
        dict(_shown(letter, operations, fields)[2]).get(h.ERROR_MESSAGE, "")
        for letter in letters[:limit]
    ]
    console.print(_letters_table(letters, limit, errors))
    if letters:
        console.print(_groups(letters))


@dlt_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="topic:partition:offset")], actor: Actor = None
) -> None:
    """One dead letter decoded, with every header and the error; secrets and PII masked
    (audited)."""
    try:
        operations = operations_for(actor)
        letter = operations.show_letter(ref)
        ops = OpsSettings.load()
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    kind, payload, headers = _shown(letter, operations, ops.mask_fields)
    told = dict(headers)
    console.rule(f"{letter.ref}  ({letter.state})")
    console.print(
        f"consumer {letter.consumer}, source {letter.source_topic}, "
        f"key {masking.printable(repr(letter.key_text))}, {letter.replay_count} replays"
    )
    console.print(
        Text.assemble(
            (letter.error_class, "bold"),
            ": ",
            f"{told.get(h.ERROR_TYPE)}: {told.get(h.ERROR_MESSAGE)}",
        )
    )
    table = Table(title="headers", title_justify="left")
    table.add_column("name")
    table.add_column("value", overflow="fold")
    for name, value in headers:
        if name != h.ERROR_STACK:
            table.add_row(name, value)
    console.print(table)
    console.rule(f"payload ({kind})")
    console.print_json(json.dumps(payload, default=str))
    stack = told.get(h.ERROR_STACK)
    if stack:
        console.rule("stack (truncated)")
        console.print(stack)


def _shown(
    letter: dl.DeadLetter, operations: Operations, fields: frozenset[str]
) -> tuple[str, Any, list[tuple[str, str]]]:
    """How a letter is shown: its payload's kind, and the payload and headers masked."""
    kind, payload = dl.payload(letter, operations.registry)
    shown, headers = masking.masked_letter(letter, payload, fields)
    return kind, shown, headers


@dlt_app.command("replay")
@selecting(states=False)
def replay(
    selection: dl.Selection,
    rate: Annotated[float, typer.Option(help="Records per second at most; 0: no limit.")] = 50,
    resume: Annotated[str | None, typer.Option(help="An interrupted job's id.")] = None,
    yes: Yes = False,
    everything: Everything = False,
    actor: Actor = None,
) -> None:
    """Send dead letters back through their own consumer only (dry run unless --yes)."""
    try:
        operations = operations_for(actor)
        max_replays = OpsSettings.load().dlt_max_replays
        if resume is not None:
            report = _with_progress(
                lambda progress, stop: operations.replays.resume(
                    uuid.UUID(resume), max_replays=max_replays, on_progress=progress, stop=stop
                )
            )
            _print_report(report)
            return
        if not yes:
            letters = operations.preview("replay", selection)
            guarded = sum(letter.replay_count >= max_replays for letter in letters)
            console.print(_groups(letters) if letters else "nothing matches")
            console.print(
                f"dry run: would replay {len(letters) - guarded} dead letters"
                + (f" and quarantine {guarded} replayed {max_replays} times" if guarded else "")
                + "; add --yes to do it"
            )
            return
        report = _with_progress(
            lambda progress, stop: operations.replays.replay(
                selection,
                rate_per_s=rate or None,
                max_replays=max_replays,
                on_progress=progress,
                stop=stop,
                everything=everything,
            )
        )
    except (RevsyncError, SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    _print_report(report)


def _with_progress(
    run: Callable[[Callable[[ReplayReport], None], threading.Event], ReplayReport],
) -> ReplayReport:
    stop = threading.Event()
    with Progress(
        TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("replay", total=None)

        def update(report: ReplayReport) -> None:
            progress.update(
                task, total=report.selected, completed=report.moved + report.quarantined
            )

        try:
            return run(update, stop)
        except KeyboardInterrupt:
            raise fail("interrupted; resume with revsync dlt replay --resume JOB") from None


def _print_report(report: ReplayReport) -> None:
    console.print(
        f"replay {report.job_id}: {report.status}; {report.moved} replayed, "
        f"{report.quarantined} quarantined"
        + (f", {report.already_sent} found already sent" if report.already_sent else ""),
        highlight=False,
    )


def _act(
    action: str, selection: dl.Selection, yes: bool, everything: bool, actor: str | None
) -> None:
    try:
        operations = operations_for(actor)
        if not yes:
            letters = operations.preview(action, selection)
            console.print(_groups(letters) if letters else "nothing matches")
            console.print(f"dry run: would {action} {len(letters)} dead letters; add --yes")
            return
        act = operations.purge if action == "purge" else operations.archive
        count = act(selection, everything=everything)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    console.print(f"{action}d {count} dead letters (audited)")


@dlt_app.command("purge")
@selecting(states=False)
def purge(
    selection: dl.Selection, yes: Yes = False, everything: Everything = False, actor: Actor = None
) -> None:
    """Mark dead letters as dealt with, never to be replayed (dry run unless --yes)."""
    _act("purge", selection, yes, everything, actor)


@dlt_app.command("archive")
@selecting(states=False)
def archive(
    selection: dl.Selection, yes: Yes = False, everything: Everything = False, actor: Actor = None
) -> None:
    """Copy dead letters into PostgreSQL, past the topic's retention, and set them aside."""
    _act("archive", selection, yes, everything, actor)


@dlt_app.command("export")
@selecting(states=True)
def export(
    selection: dl.Selection,
    to: Annotated[Path, typer.Option("--to", help="A JSON Lines file to write.")],
    raw: Annotated[bool, typer.Option(help="Add key and value bytes (unmasked).")] = False,
    actor: Actor = None,
) -> None:
    """Write dead letters to JSON Lines: error, headers and payload, masked."""
    try:
        count = operations_for(actor).export(selection, to, OpsSettings.load().mask_fields, raw)
    except (RevsyncError, SettingsError) as error:
        raise fail(str(error)) from None
    console.print(f"exported {count} dead letters to {to}")


@dlt_app.command("status")
def status(
    job: Annotated[str | None, typer.Argument(help="A job id; all when left out.")] = None,
    actor: Actor = None,
) -> None:
    """Replay jobs: running, completed, cancelled, interrupted; moved and remaining."""
    try:
        jobs = operations_for(actor).replay_jobs(uuid.UUID(job) if job else None)
    except (RevsyncError, SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    table = Table(title="replay jobs", title_justify="left")
    for column in (
        "job",
        "actor",
        "status",
        "moved",
        "quarantined",
        "remaining",
        "rate",
        "started",
    ):
        table.add_column(column)
    for item in jobs:
        table.add_row(
            str(item.id),
            item.actor,
            item.shown_status,
            str(item.moved),
            str(item.quarantined),
            str(item.remaining),
            f"{item.rate_per_s:g}/s" if item.rate_per_s else "-",
            item.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@dlt_app.command("cancel")
def cancel(job: Annotated[str, typer.Argument(help="The job id.")], actor: Actor = None) -> None:
    """Stop a running replay after the record in hand; what it moved stays moved."""
    try:
        item = operations_for(actor).replays.cancel(uuid.UUID(job))
    except (RevsyncError, SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(f"job {item.id}: {item.shown_status} (cancel requested)")
