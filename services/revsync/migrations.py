"""revsync's PostgreSQL tables: created by ``revsync db migrate`` as the migrations' role,
which owns them and grants each purpose's role only what it needs; checked (or, where one role
does everything, as in development, created) by every service and tool at start-up.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from revsync.errors import RevsyncError

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)
LOCK = "revsync.migrate"


class SchemaMissing(RevsyncError):
    """Tables this role may not create are missing: the migrations have not run."""


@dataclass(frozen=True)
class Tables:
    """Some of revsync's tables: their DDL (safe to run again) and who may touch them."""

    ddl: str
    writers: tuple[str, ...] = ()
    """Roles that read and change every row."""
    appenders: tuple[str, ...] = ()
    """Roles that may only add rows (an audit trail), and only in :attr:`appendable`."""
    appendable: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()
    """Roles that read every row and may change only the :attr:`editable` columns (of the
    tables that have them)."""
    editable: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return _TABLE.findall(self.ddl)


VERSIONS = """
CREATE TABLE IF NOT EXISTS revsync_schema_versions (
    schema_name text        NOT NULL,
    ddl_hash    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, ddl_hash)
);
GRANT SELECT ON revsync_schema_versions TO PUBLIC;
"""
"""Which DDL has run in which schema: a start-up that finds its DDL there runs none of it, so
it takes no lock (an ALTER TABLE, even one with nothing to do, waits for every open
transaction on its table, and every statement on the table then waits behind it)."""


def ensure(connection: psycopg.Connection[Any], every: Sequence[Tables]) -> None:
    """Before first use: create the tables where this role may (development: one role does
    everything); where it may not (production: the migrations' role owns them), check that
    the migrations made them. Safe to run from every replica at once, and with nothing to
    do, it only reads."""
    wanted = {_fingerprint(tables): tables for tables in every}
    if wanted.keys() <= _applied(connection):
        return
    try:
        with connection.transaction():
            # Serialise concurrent start-ups: DDL on the same objects would otherwise deadlock.
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK,))
            _apply(connection, wanted)
    except psycopg.errors.InsufficientPrivilege:
        names = [name for tables in every for name in tables.names]
        missing = [name for name in names if not _exists(connection, name)]
        if missing:
            raise SchemaMissing(
                f"tables {', '.join(missing)} are missing and role {_role(connection)} may not "
                "create them; run `revsync db migrate` as the migrations' role first"
            ) from None


def _fingerprint(tables: Tables) -> str:
    return hashlib.sha256(tables.ddl.encode()).hexdigest()


def _applied(connection: psycopg.Connection[Any]) -> set[str]:
    """The fingerprints of the DDL already run in this connection's schema (none known if
    this role may not read them)."""
    try:
        with connection.transaction():
            row = connection.execute(
                "SELECT to_regclass(quote_ident(current_schema()) || '.revsync_schema_versions')"
            ).fetchone()
            if not row or row[0] is None:
                return set()
            rows = connection.execute(
                "SELECT ddl_hash FROM revsync_schema_versions WHERE schema_name = current_schema()"
            ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return set()
    return {hash_ for (hash_,) in rows}


def _apply(connection: psycopg.Connection[Any], wanted: dict[str, Tables]) -> None:
    """Run the DDL not yet run here (under the lock, so after any other start-up's), and
    record it."""
    applied = _applied(connection)
    for fingerprint, tables in wanted.items():
        if fingerprint not in applied:
            connection.execute(tables.ddl)
    _record(connection, wanted.keys() - applied)


def _record(connection: psycopg.Connection[Any], fingerprints: Iterable[str]) -> None:
    connection.execute(VERSIONS)
    connection.execute(
        "INSERT INTO revsync_schema_versions (schema_name, ddl_hash) "
        "SELECT current_schema(), unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (sorted(fingerprints),),
    )


def migrate(
    connection: psycopg.Connection[Any], every: Sequence[Tables], every_role: Sequence[str]
) -> list[str]:
    """Create or update every table, then grant each role what its purpose needs, in one
    transaction, after revoking everything from ``every_role`` (revsync's roles, including
    any that no table names any more); roles that do not exist (a development database) are
    skipped. What was granted, one line each."""
    granted: list[str] = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK,))
        for tables in every:
            connection.execute(tables.ddl)
        _record(connection, {_fingerprint(tables) for tables in every})
        named = {role for t in every for role in (*t.writers, *t.appenders, *t.readers)}
        roles = _existing_roles(connection, named | set(every_role))
        for tables in every:
            granted += _grant(connection, tables, roles)
    return granted


def _grant(connection: psycopg.Connection[Any], tables: Tables, roles: set[str]) -> list[str]:
    granted = []
    for name in tables.names:
        table = sql.Identifier(name)
        # Whatever an earlier migration gave, this one decides: no role (nor PUBLIC) keeps a
        # right it no longer has.
        for role in ("PUBLIC", *sorted(roles)):
            grantee = sql.SQL(role) if role == "PUBLIC" else sql.Identifier(role)
            connection.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, grantee))
        for role in tables.writers:
            if role in roles:
                connection.execute(
                    sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                        table, sql.Identifier(role)
                    )
                )
                granted.append(f"{role}: read and write {name}")
        for role in tables.appenders:
            if role in roles:
                columns = sql.SQL(", ").join(map(sql.Identifier, tables.appendable))
                connection.execute(
                    sql.SQL("GRANT INSERT ({}) ON {} TO {}").format(
                        columns, table, sql.Identifier(role)
                    )
                )
                granted.append(f"{role}: insert only into {name} ({', '.join(tables.appendable)})")
        for role in tables.readers:
            if role in roles:
                connection.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(role))
                )
                granted.append(f"{role}: read {name}")
                editable = [c for c in tables.editable if _has_column(connection, name, c)]
                if editable:
                    connection.execute(
                        sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                            sql.SQL(", ").join(sql.Identifier(c) for c in editable),
                            table,
                            sql.Identifier(role),
                        )
                    )
                    granted.append(f"{role}: change {name} ({', '.join(editable)})")
        for sequence in _sequences(connection, name):
            for role in (*tables.writers, *tables.appenders):
                if role in roles:
                    connection.execute(
                        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                            sql.Identifier(sequence), sql.Identifier(role)
                        )
                    )
    return granted


def _existing_roles(connection: psycopg.Connection[Any], wanted: Iterable[str]) -> set[str]:
    rows = connection.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(wanted),)
    ).fetchall()
    return {row[0] for row in rows}


def _sequences(connection: psycopg.Connection[Any], table: str) -> list[str]:
    """The sequences a table's serial columns draw from (an insert needs them)."""
    rows = connection.execute(
        "SELECT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
        "JOIN pg_class t ON d.refobjid = t.oid WHERE s.relkind = 'S' AND t.relname = %s",
        (table,),
    ).fetchall()
    return [row[0] for row in rows]


def _has_column(connection: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return row is not None


def _exists(connection: psycopg.Connection[Any], table: str) -> bool:
    row = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _role(connection: psycopg.Connection[Any]) -> str:
    row = connection.execute("SELECT session_user").fetchone()
    return str(row[0]) if row else "?"
