"""What a service brings to the runtime: a handler that turns one event into a decision."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from revsync.contracts.events import Envelope, Event, SourceSystem
from revsync.errors import RevsyncError
from revsync.runtime.observability import event_context

# Event ids of emitted events derive from the causing event, so a re-emission after a crash
# carries the same id and every inbox recognises it.
EMITTED_EVENT_NAMESPACE = uuid.UUID("5b0c6f1e-3c2a-4d7e-9a51-2f6f0c8e9d10")


@dataclass(frozen=True)
class StateWrite:
    """One row of a set-based statement against the service's own tables, run in the batch's
    transaction with the inbox rows.

    The statement runs once per batch over every row given with the same SQL: each of its
    parameters is one column, an array of that column's values in the batch's order, as
    ``unnest(%b::text[], %b::numeric[]) WITH ORDINALITY`` reads them (``%b``: sent in
    binary, a fraction of the cost of arrays in text). A statement that may
    meet one key twice in a batch keeps the later row itself (``DISTINCT ON (key) … ORDER
    BY key, ordinality DESC``); ordering by key also locks rows in one order.
    """

    sql: str
    row: Sequence[Any]


@dataclass(frozen=True)
class Emission:
    """An event to publish, written to the outbox in the same transaction."""

    topic: str
    event: Event


@dataclass(frozen=True)
class Decision:
    """What handling one event decided: state to write and events to emit, and the parts of
    it that failed on their own (``failed``)."""

    writes: Sequence[StateWrite] = field(default_factory=tuple)
    emits: Sequence[Emission] = field(default_factory=tuple)
    at: datetime | None = None
    """When handling the input began, as the order journey records it: what the handling
    causes elsewhere (an ERP that ships the order it was just sent) can only be seen after
    that moment, so journeys read in causal order across consumers. The runtime sets it."""
    failed: Sequence[FailedPart] = field(default_factory=tuple)
    """For an input that names several records (a merged change event): the records that
    failed, each routed on as a record of its own, so that one holds back only itself while
    the rest of the decision is committed."""


@dataclass(frozen=True)
class FailedPart:
    """One record of a many-record input that failed: retried or dead-lettered on its own,
    under its own key, as ``value`` (the input narrowed to that record)."""

    key: bytes
    value: bytes
    error: Exception


class Inbound(Protocol):
    """What a consumer hands its handler: a revsync event, or an input in a system's own shape
    (a Salesforce change event) that its decoder gave an envelope, so the inbox, the logs and
    the retry headers treat both alike."""

    @property
    def envelope(self) -> Envelope: ...


class Handler(Protocol):
    """Does one input's outbound calls (with idempotency keys) and returns its decision; raises
    a revsync error (transient, dependency-not-ready, business rule, ...) to fail."""

    def __call__(self, inbound: Inbound, /) -> Decision: ...


@runtime_checkable
class BatchHandler(Handler, Protocol):
    """A handler that can also take many inputs at once, to batch its outbound calls.

    The loop gives :meth:`handle_many` at most one input per key, so a key's later inputs still
    wait for the outcome of its earlier ones; each result is that input's decision, or the
    error it failed with (a transient one is then retried alone, through ``__call__``).
    """

    def handle_many(self, inbounds: Sequence[Inbound], /) -> Sequence[Decision | Exception]: ...


class UnexpectedInput(RevsyncError):
    """An input of a type the handler does not declare (a catalog routing it a foreign
    topic); permanent, so it goes to the dead letters."""


def route(table: Mapping[type, Callable[..., Any]], inbound: Inbound) -> Callable[..., Any]:
    """The entry of a handler's routing table for ``inbound``'s type: the table is the one
    place a service says what it takes."""
    try:
        return table[type(inbound)]
    except KeyError:
        raise UnexpectedInput(
            f"no handling for {inbound.envelope.event_type} ({type(inbound).__name__})"
        ) from None


def handle_concurrently(
    handler: Handler, inbounds: Sequence[Inbound], pool: Executor
) -> list[Decision | Exception]:
    """Each input through ``handler`` on ``pool``'s threads, for a :class:`BatchHandler`
    whose calls are I/O-bound: concurrency across keys, never within one, because
    ``handle_many`` is never given two inputs of one key."""

    def one(inbound: Inbound) -> Decision | Exception:
        envelope = inbound.envelope
        with event_context(envelope.correlation_id, str(envelope.event_id)):
            started = datetime.now(UTC)
            try:
                return replace(handler(inbound), at=started)
            except Exception as error:  # the input's own outcome, routed by the loop
                return error

    return list(pool.map(one, inbounds))


def caused_envelope(
    cause: Envelope,
    event_type: str,
    *,
    source_system: SourceSystem = SourceSystem.REVSYNC,
    occurred_at: datetime | None = None,
    schema_version: int = 1,
    identity: str | None = None,
) -> Envelope:
    """The envelope of an event caused by ``cause``: same correlation, deterministic id.

    The id derives from the cause, or from ``identity`` when the fact is one per business
    object (an order is created once, whichever change event revealed it): then two causes of
    the same fact emit the same id, and every inbox downstream keeps only one.
    """
    return Envelope(
        event_id=derived_event_id(identity or str(cause.event_id), event_type),
        event_type=event_type,
        occurred_at=occurred_at or datetime.now(UTC),
        source_system=source_system,
        correlation_id=cause.correlation_id,
        causation_id=str(cause.event_id),
        schema_version=schema_version,
    )


def derived_event_id(identity: str, event_type: str) -> uuid.UUID:
    """The id of the ``event_type`` event about ``identity``: the same fact, the same id."""
    return uuid.uuid5(EMITTED_EVENT_NAMESPACE, f"{identity}/{event_type}")
