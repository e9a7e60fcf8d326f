"""Start-up schema checks against the real PostgreSQL: DDL that has run is not run again, so a
start-up takes no lock that would stall the tables' other users."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from revsync.migrations import Tables, ensure
from revsync.runtime.storage import TABLES
from revsync.settings import Settings


@pytest.fixture
def schema(settings: Settings) -> Iterator[str]:
    """A schema of the test's own, first on its connections' search path."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def connect(settings: Settings, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        settings.postgres_dsn.get_secret_value(),
        autocommit=True,
        options=f"-c search_path={schema}",
    )


def test_a_start_up_with_the_schema_in_place_waits_for_no_open_transaction(
    settings: Settings, schema: str
) -> None:
    with connect(settings, schema) as first:
        ensure(first, TABLES)
    # A relay's open transaction over the outbox rows it is publishing.
    with connect(settings, schema) as relay, connect(settings, schema) as starting:
        relay.execute("BEGIN")
        relay.execute("SELECT id FROM revsync_outbox FOR UPDATE")
        starting.execute("SET statement_timeout = '3s'")

        ensure(starting, TABLES)  # would wait on the relay (and time out) if it ran the DDL

        relay.execute("ROLLBACK")


def test_ddl_runs_once_per_schema_and_again_where_it_has_not(
    settings: Settings, schema: str
) -> None:
    # Not safe to run twice: a second run would fail on the table it made.
    once = Tables("CREATE TABLE migrations_once (id integer);")
    other = f"{schema}_other"
    with connect(settings, schema) as db:
        ensure(db, [once])
        ensure(db, [once])
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        with connect(settings, other) as db:
            ensure(db, [once])
            assert db.execute("SELECT to_regclass('migrations_once') IS NOT NULL").fetchone() == (
                True,
            )
    finally:
        with connect(settings, schema) as db:
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))


def test_changed_ddl_runs_on_the_next_start_up(settings: Settings, schema: str) -> None:
    with connect(settings, schema) as db:
        ensure(db, [Tables("CREATE TABLE IF NOT EXISTS migrations_grow (id integer);")])
        ensure(
            db,
            [
                Tables(
                    "CREATE TABLE IF NOT EXISTS migrations_grow (id integer);"
                    "ALTER TABLE migrations_grow ADD COLUMN IF NOT EXISTS note text;"
                )
            ],
        )
        columns = db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'migrations_grow' ORDER BY ordinal_position",
            (schema,),
        ).fetchall()
    assert columns == [("id",), ("note",)]
