"""The inbox: one row per (consumer, event id) handled, written in the transaction of the
handling's effects, so a redelivered event is recognised and skipped."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS revsync_inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS revsync_inbox_processed_at ON revsync_inbox (processed_at);
"""


class Inbox:
    """One consumer's inbox rows."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer

    def claim(self, connection: psycopg.Connection[Any], event_ids: list[str]) -> set[str]:
        """Insert inbox rows; the ids inserted now are ours to handle, the rest are duplicates.
        A concurrent claim of the same id waits for ours to commit, then finds it taken."""
        if not event_ids:
            return set()
        rows = connection.execute(
            "INSERT INTO revsync_inbox (consumer, event_id) SELECT %s, unnest(%b::text[]::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id::text",
            (self.consumer, event_ids),
        ).fetchall()
        return {row[0] for row in rows}

    def unclaim(self, cursor: psycopg.Cursor[Any], event_ids: Collection[str]) -> None:
        """Give back claims that were not used (failed, parked, revoked mid-batch)."""
        if event_ids:
            cursor.execute(
                "DELETE FROM revsync_inbox WHERE consumer = %s AND event_id = ANY(%s::uuid[])",
                (self.consumer, list(event_ids)),
            )


def purge_inbox(connection: psycopg.Connection[Any], retention: timedelta) -> int:
    """Delete inbox rows older than ``retention``; returns how many went."""
    with connection.transaction():
        cursor = connection.execute(
            "DELETE FROM revsync_inbox WHERE processed_at < now() - %s", (retention,)
        )
    return cursor.rowcount
