"""The runtime's PostgreSQL tables, each defined beside the collaborator that owns it (the
inbox, the outbox, key holds and parked records, circuit breakers), created together at
start-up."""

from __future__ import annotations

from typing import Any

import psycopg

from revsync.runtime import breaker, holds, inbox, outbox

SCHEMA = inbox.SCHEMA + outbox.SCHEMA + holds.SCHEMA + breaker.SCHEMA


def migrate(connection: psycopg.Connection[Any]) -> None:
    """Create the runtime's tables if missing; safe to run from every replica at start-up."""
    with connection.transaction():
        # Serialise concurrent start-ups: DDL on the same objects would otherwise deadlock.
        connection.execute("SELECT pg_advisory_xact_lock(hashtext('revsync.migrate'))")
        connection.execute(SCHEMA)
