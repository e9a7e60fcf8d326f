"""The CDC bridge's table: per org and channel, the replay id to resume after (with its
event's commit time) and a gap not yet written. Read and written on the connection that
holds the channel's leadership, so a replica that lost it can no longer move the position."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from crm_cdc_bridge.logic import Position
from revsync.migrations import Tables
from revsync.security import POSTGRES_SERVICE

SCHEMA = """
CREATE TABLE IF NOT EXISTS revsync_cdc_checkpoint (
    org_id       text        NOT NULL,
    channel      text        NOT NULL,
    replay_id    bytea,
    committed_at timestamptz,
    gap_since    timestamptz,
    gap_reason   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, channel)
);
"""
TABLES = (Tables(SCHEMA, writers=(POSTGRES_SERVICE,)),)


@dataclass(frozen=True)
class Checkpoint:
    position: Position | None
    """Where to resume after; None before the first event was checkpointed."""
    gap_since: datetime | None
    """A gap found but not yet written: reconcile from this time."""
    gap_reason: str | None


class Checkpoints:
    """One channel's row, on one connection (autocommit: each write is durable at once)."""

    def __init__(self, connection: psycopg.Connection[Any], org_id: str, channel: str) -> None:
        self._connection = connection
        self._key = (org_id, channel)
        self._lock_id = zlib.crc32(f"revsync.cdc-bridge.{org_id}.{channel}".encode())

    def try_lead(self) -> bool:
        """The channel's leadership: a session lock, held until this connection ends."""
        row = self._connection.execute(
            "SELECT pg_try_advisory_lock(%s)", (self._lock_id,)
        ).fetchone()
        return bool(row and row[0])

    def load(self) -> Checkpoint | None:
        row = self._connection.execute(
            "SELECT replay_id, committed_at, gap_since, gap_reason FROM revsync_cdc_checkpoint "
            "WHERE org_id = %s AND channel = %s",
            self._key,
        ).fetchone()
        if row is None:
            return None
        replay_id, committed_at, gap_since, gap_reason = row
        position = Position(bytes(replay_id), committed_at) if replay_id is not None else None
        return Checkpoint(position, gap_since, gap_reason)

    def save(self, position: Position) -> None:
        self._connection.execute(
            "INSERT INTO revsync_cdc_checkpoint (org_id, channel, replay_id, committed_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, channel) DO UPDATE SET "
            "replay_id = excluded.replay_id, committed_at = excluded.committed_at, "
            "updated_at = now()",
            (*self._key, position.replay_id, position.committed_at),
        )

    def record_gap(self, since: datetime, reason: str) -> datetime:
        """A gap to write before anything else: kept until :meth:`gap_written`, so a crash
        in between writes it again; of two gaps not yet written, the earlier time stands,
        which is returned."""
        row = self._connection.execute(
            "INSERT INTO revsync_cdc_checkpoint (org_id, channel, gap_since, gap_reason) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, channel) DO UPDATE SET "
            "gap_since = least(revsync_cdc_checkpoint.gap_since, excluded.gap_since), "
            "gap_reason = excluded.gap_reason, "
            "replay_id = NULL, committed_at = NULL, updated_at = now() RETURNING gap_since",
            (*self._key, since, reason),
        ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def gap_written(self) -> None:
        self._connection.execute(
            "UPDATE revsync_cdc_checkpoint SET gap_since = NULL, gap_reason = NULL, "
            "updated_at = now() WHERE org_id = %s AND channel = %s",
            self._key,
        )
