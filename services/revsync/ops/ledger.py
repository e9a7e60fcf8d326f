"""The dead-letter ledger, the archive and the audit trail: what every operator action
writes down, each in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from revsync.ops import dead_letters as dl
from revsync.runtime import headers as h
from revsync.runtime.holds import release


@dataclass(frozen=True)
class Actor:
    """Who runs an operator command. The audit trail records the database role the session
    authenticated as (PostgreSQL fills it in) and ``kafka_principal``, the Kafka user the
    tooling authenticated as; ``name`` (``--actor`` or the OS user) anyone can set, so it is
    recorded only as extra information."""

    name: str
    kafka_principal: str


def record(
    connection: psycopg.Connection[Any],
    job_id: uuid.UUID | None,
    refs: Iterable[str],
    state: str,
) -> None:
    """Dead letters ``refs`` (``topic:partition:offset``) are now in ``state`` (replayed,
    quarantined, purged, archived); a letter's first state for a job is kept. One statement
    however many, the refs in one text (a topic name has no colon and no line break)."""
    lines = "\n".join(refs)
    if lines:
        connection.execute(
            'INSERT INTO revsync_dlt_ledger (dlt_topic, partition, "offset", state, job_id) '
            "SELECT split_part(ref, ':', 1), split_part(ref, ':', 2)::int, "
            "split_part(ref, ':', 3)::bigint, %s, %s "
            "FROM unnest(string_to_array(%s, E'\\n')) AS ref ON CONFLICT DO NOTHING",
            (state, job_id, lines),
        )


def archive(connection: psycopg.Connection[Any], letters: Sequence[dl.DeadLetter]) -> None:
    """Keep the letters' bytes and headers beyond the dead-letter topic's retention."""
    connection.cursor().executemany(
        'INSERT INTO revsync_dlt_archive (dlt_topic, partition, "offset", key, value, '
        "headers, timestamp_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        [
            (
                letter.dlt_topic,
                letter.partition,
                letter.offset,
                letter.key,
                letter.value,
                Jsonb(h.to_json(letter.headers)),
                letter.timestamp_ms,
            )
            for letter in letters
        ],
    )


def audit(
    connection: psycopg.Connection[Any],
    actor: Actor,
    action: str,
    selection: dict[str, Any],
    count: int,
    outcome: str,
    job_id: uuid.UUID | None = None,
) -> None:
    """One line of the audit trail: who did what to how many, and how it ended."""
    connection.execute(
        "INSERT INTO revsync_audit "
        "(actor, kafka_principal, action, filter, count, outcome, job_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (actor.name, actor.kafka_principal, action, Jsonb(selection), count, outcome, job_id),
    )


def release_holds(connection: psycopg.Connection[Any], letters: Iterable[dl.DeadLetter]) -> None:
    """Letters dealt with for good no longer hold their keys: what the keys parked is
    handled next, in order."""
    for letter in letters:
        if letter.key is not None:
            release(connection, letter.consumer, letter.key, letter.source_topic, letter.blocker)
