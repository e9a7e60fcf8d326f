"""Change Data Capture for the simulated org: each committed transaction's changes to Orders,
their items and Accounts become change events, as Salesforce builds them (one transaction key,
sequence numbers across the transaction, identical changes merged), with fault knobs for the
duplicates, gap events and overflow events a real subscriber must cope with. The events are
served by :mod:`sandbox.crm.pubsub`, whose knobs live here too, in one place."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CHANGE_EVENT_ENTITIES = ("Order", "OrderItem", "Account")
"""The sObjects whose changes are published, each on its channel."""
EMPTY_RECORD_ID = "000000000000000AAA"
"""What an overflow event names as its record: Salesforce's empty record id."""
EXPIRED_REPLAY_MODES = ("error", "silent")
RATES = ("duplicate_rate", "gap_rate", "merge_rate")


@dataclass
class CdcKnobs:
    """How change events go wrong, and how the Pub/Sub API serves them. Rates are
    probabilities per event (``merge_rate``: per group of identical changes)."""

    duplicate_rate: float = 0.0
    """Publish the same event twice, under two replay ids."""
    gap_rate: float = 0.0
    """Publish a GAP_<change type> event (header and record ids only) instead of the event."""
    overflow_after: int | None = None
    """After this many events of one entity in one transaction, one GAP_OVERFLOW event stands
    for the rest, as Salesforce does past its per-transaction threshold. None: never."""
    merge_rate: float = 0.0
    """Publish the same change to several records of one transaction as one event naming them
    all, as Salesforce does."""
    retention_s: float = 72 * 3600.0
    """How long a channel keeps an event (Salesforce: 72 hours)."""
    keepalive_s: float = 270.0
    """An idle Subscribe stream gets an empty response this often (Salesforce: 270 s)."""
    expired_replay: str = "error"
    """A subscription from a replay id past retention: "error" refuses it as Salesforce
    documents; "silent" starts it at the latest event without a word."""
    batch: int = 100
    """The most events in one FetchResponse."""

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (knob name -> value); KeyError, TypeError or ValueError on a bad
        one, after applying those before it."""
        for name, value in changes.items():
            if name == "overflow_after":
                self.overflow_after = None if value is None else _whole(name, value, 0)
            elif name in RATES:
                rate = float(value)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1, not {rate}")
                setattr(self, name, rate)
            elif name in ("retention_s", "keepalive_s"):
                seconds = float(value)
                if seconds <= 0:
                    raise ValueError(f"{name} must be above 0, not {seconds}")
                setattr(self, name, seconds)
            elif name == "expired_replay":
                if value not in EXPIRED_REPLAY_MODES:
                    raise ValueError(f"expired_replay is one of {EXPIRED_REPLAY_MODES}")
                self.expired_replay = value
            elif name == "batch":
                self.batch = _whole(name, value, 1)
            else:
                raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _whole(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
    return value


@dataclass(frozen=True)
class Change:
    """One record change inside a transaction."""

    entity: str
    change_type: str
    """CREATE, UPDATE or DELETE."""
    record_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    """Stored values. CREATE: every non-null field; UPDATE: the changed ones (nulled ones as
    None)."""
    changed_fields: tuple[str, ...] = ()
    nulled_fields: tuple[str, ...] = ()

    def merge_key(self) -> tuple[Any, ...]:
        """What two changes share when Salesforce sends them as one event."""
        values = tuple(sorted(self.fields.items()))
        return (self.entity, self.change_type, self.changed_fields, self.nulled_fields, values)


@dataclass(frozen=True)
class Commit:
    """What every change event of one transaction shares."""

    origin: str
    """changeOrigin: the API and client, or "" for the UI."""
    transaction_key: str
    timestamp_ms: int
    number: int
    user: str


@dataclass(frozen=True)
class ChangeEvent:
    """One change event, before it is encoded against its channel's schema."""

    entity: str
    change_type: str
    record_ids: tuple[str, ...]
    commit: Commit
    sequence: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    changed: tuple[str, ...] = ()
    nulled: tuple[str, ...] = ()
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    """The ProducerEvent id: a duplicate delivery carries its original's."""


@dataclass
class CdcCounters:
    published: int = 0
    """Events handed to the event bus, duplicates included."""
    duplicates: int = 0
    gaps: int = 0
    overflows: int = 0
    merges: int = 0
    """Events that each stand for the same change to several records."""


class ChangeCapture:
    """Turns committed transactions into change events with the fault knobs applied. Callers
    hold the org's lock, so commit numbers follow commit order."""

    def __init__(self, knobs: CdcKnobs, seed: int | None = None) -> None:
        self.knobs = knobs
        self.counters = CdcCounters()
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not secrets
        self._commit_number = 1_000_000
        self._lock = threading.Lock()

    def events(self, changes: Sequence[Change], *, origin: str, user: str) -> list[ChangeEvent]:
        """The change events of one committed transaction, in the order they are published
        (a duplicate right after its original)."""
        if not changes:
            return []
        with self._lock:
            self._commit_number += 1
            commit = Commit(
                origin, str(uuid.uuid4()), int(time.time() * 1000), self._commit_number, user
            )
            published: list[ChangeEvent] = []
            per_entity: dict[str, int] = {}
            limit = self.knobs.overflow_after
            for sequence, (change, record_ids) in enumerate(self._merged(changes), start=1):
                count = per_entity[change.entity] = per_entity.get(change.entity, 0) + 1
                if limit is not None and count > limit:
                    if count == limit + 1:
                        self.counters.overflows += 1
                        published.append(
                            ChangeEvent(
                                change.entity, "GAP_OVERFLOW", (EMPTY_RECORD_ID,), commit, sequence
                            )
                        )
                    continue
                if self._chance(self.knobs.gap_rate):
                    self.counters.gaps += 1
                    event = ChangeEvent(
                        change.entity, f"GAP_{change.change_type}", record_ids, commit, sequence
                    )
                else:
                    event = ChangeEvent(
                        change.entity,
                        change.change_type,
                        record_ids,
                        commit,
                        sequence,
                        change.fields,
                        change.changed_fields,
                        change.nulled_fields,
                    )
                published.append(event)
                if self._chance(self.knobs.duplicate_rate):
                    self.counters.duplicates += 1
                    published.append(event)
            self.counters.published += len(published)
            return published

    def _merged(self, changes: Sequence[Change]) -> list[tuple[Change, tuple[str, ...]]]:
        """Each change with the records its event names: identical UPDATEs of several records
        become one, at the first one's place, when the merge dice say so. Changes are only
        merged when no other change to one of their records lies between them, so each
        record's events stay in the order they happened."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, change in enumerate(changes):
            if change.change_type == "UPDATE":
                groups.setdefault(change.merge_key(), []).append(index)
        absorbed: set[int] = set()
        merged: dict[int, tuple[str, ...]] = {}
        for members in groups.values():
            if len(members) < 2 or not self._chance(self.knobs.merge_rate):
                continue
            records = {changes[i].record_id for i in members}
            between = set(range(members[0], members[-1] + 1)) - set(members)
            entity = changes[members[0]].entity
            if any(
                changes[i].entity == entity and changes[i].record_id in records for i in between
            ):
                continue
            self.counters.merges += 1
            merged[members[0]] = tuple(changes[i].record_id for i in members)
            absorbed.update(members[1:])
        return [
            (change, merged.get(index, (change.record_id,)))
            for index, change in enumerate(changes)
            if index not in absorbed
        ]

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate
