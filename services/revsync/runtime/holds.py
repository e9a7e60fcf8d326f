"""Key holds: a key whose record waits in a retry tier or the dead letters holds back its later
records of the same source topic, which are parked in PostgreSQL until the hold is released
(by the blocker's success, or by an operator's :func:`release`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from revsync.runtime import headers as h
from revsync.runtime.records import Hold, Partition, Record

RELEASED = "released"
"""A hold's blocker after an operator's discard: its parked records are handled next."""

SCHEMA = """
-- A key whose record waits in a retry tier or the DLT; later records of the key from the
-- same source topic are parked. (Kafka orders a key within one topic only.)
CREATE TABLE IF NOT EXISTS revsync_key_holds (
    consumer     text        NOT NULL,
    record_key   bytea       NOT NULL,
    source_topic text        NOT NULL,
    blocker      text        NOT NULL,
    held_since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, record_key, source_topic)
);
CREATE TABLE IF NOT EXISTS revsync_parked (
    seq          bigserial   PRIMARY KEY,
    consumer     text        NOT NULL,
    record_key   bytea       NOT NULL,
    source_topic text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    value        bytea,
    headers      jsonb       NOT NULL DEFAULT '[]',
    parked_at    timestamptz NOT NULL DEFAULT now()
);
-- Tables from before holds were per source topic gain the column; their holds (topic '')
-- match no record any more and are for an operator to release.
ALTER TABLE revsync_key_holds ADD COLUMN IF NOT EXISTS source_topic text NOT NULL DEFAULT '';
ALTER TABLE revsync_parked ADD COLUMN IF NOT EXISTS source_topic text NOT NULL DEFAULT '';
DO $$
BEGIN
    IF (SELECT count(*) FROM pg_index i JOIN pg_attribute a
            ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = 'revsync_key_holds'::regclass AND i.indisprimary) = 2 THEN
        ALTER TABLE revsync_key_holds DROP CONSTRAINT revsync_key_holds_pkey;
        ALTER TABLE revsync_key_holds ADD PRIMARY KEY (consumer, record_key, source_topic);
    END IF;
END $$;
DROP INDEX IF EXISTS revsync_parked_key;
CREATE INDEX IF NOT EXISTS revsync_parked_hold
    ON revsync_parked (consumer, record_key, source_topic, seq);
"""


def _columns(holds: Collection[Hold]) -> tuple[list[bytes], list[str]]:
    return [key for key, _ in holds], [topic for _, topic in holds]


class KeyHolds:
    """One consumer's holds and parked records."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer

    def held(self, connection: psycopg.Connection[Any], holds: set[Hold]) -> dict[Hold, str]:
        """The blockers of those of ``holds`` that are held, locked for this transaction, so
        that a member releasing one waits for this batch's parked rows to commit, then finds
        them."""
        if not holds:
            return {}
        rows = connection.execute(
            "SELECT record_key, source_topic, blocker FROM revsync_key_holds "
            "WHERE consumer = %s AND (record_key, source_topic) IN "
            "(SELECT * FROM unnest(%s::bytea[], %s::text[])) "
            "ORDER BY record_key, source_topic FOR UPDATE",
            (self.consumer, *_columns(holds)),
        ).fetchall()
        return {(bytes(key), topic): blocker for key, topic, blocker in rows}

    def unpark(self, connection: psycopg.Connection[Any], hold: Hold) -> list[Record]:
        """The records parked behind ``hold``, in the order they arrived."""
        rows = connection.execute(
            'SELECT seq, topic, partition, "offset", value, headers FROM revsync_parked '
            "WHERE consumer = %s AND record_key = %s AND source_topic = %s ORDER BY seq",
            (self.consumer, hold[0], hold[1]),
        ).fetchall()
        return [
            Record(topic, partition, offset, hold[0], value, h.from_json(pairs), 0, seq)
            for seq, topic, partition, offset, value, pairs in rows
        ]

    def released(
        self, connection: psycopg.Connection[Any], assigned: Iterable[Partition]
    ) -> frozenset[Hold]:
        """Keys an operator released whose parked records are on partitions we own."""
        owned = list(assigned)
        rows = connection.execute(
            "SELECT DISTINCT h.record_key, h.source_topic FROM revsync_key_holds h "
            "JOIN revsync_parked p ON p.consumer = h.consumer AND p.record_key = h.record_key "
            "AND p.source_topic = h.source_topic "
            "WHERE h.consumer = %s AND h.blocker = %s AND (p.topic, p.partition) IN "
            "(SELECT t, p FROM unnest(%s::text[], %s::int[]) AS a(t, p))",
            (self.consumer, RELEASED, [t for t, _ in owned], [p for _, p in owned]),
        ).fetchall()
        return frozenset((bytes(key), topic) for key, topic in rows)

    def write(
        self,
        cursor: psycopg.Cursor[Any],
        *,
        parks: Iterable[Record],
        unparked: list[int],
        releases: Collection[Hold],
        holds: Mapping[Hold, str],
    ) -> None:
        """One batch's changes: records parked, un-parked records done, keys released, keys
        newly held."""
        parked = [
            (
                self.consumer,
                r.key,
                r.origin[0],
                r.topic,
                r.partition,
                r.offset,
                r.value,
                Jsonb(h.to_json(r.headers)),
            )
            for r in parks
        ]
        if parked:
            cursor.executemany(
                "INSERT INTO revsync_parked (consumer, record_key, source_topic, topic, "
                'partition, "offset", value, headers) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)',
                parked,
            )
        if unparked:
            cursor.execute("DELETE FROM revsync_parked WHERE seq = ANY(%s)", (unparked,))
        if releases:
            cursor.execute(
                "DELETE FROM revsync_key_holds WHERE consumer = %s AND (record_key, source_topic) "
                "IN (SELECT * FROM unnest(%s::bytea[], %s::text[]))",
                (self.consumer, *_columns(releases)),
            )
        if holds:
            cursor.executemany(
                "INSERT INTO revsync_key_holds (consumer, record_key, source_topic, blocker) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (consumer, record_key, source_topic) DO NOTHING",
                [(self.consumer, key, topic, blocker) for (key, topic), blocker in holds.items()],
            )


def release(
    connection: psycopg.Connection[Any], consumer: str, key: bytes, source_topic: str, blocker: str
) -> bool:
    """An operator's discard of ``blocker`` (``topic:partition:offset``): if it still holds its
    key, the key is released. A key with nothing parked goes at once; one with parked records
    is marked :data:`RELEASED`, and the consumer owning them handles them next, in order.
    Returns whether a hold was released. Runs in the caller's transaction, if any."""
    with connection.transaction():
        row = connection.execute(
            "SELECT blocker FROM revsync_key_holds WHERE consumer = %s AND record_key = %s "
            "AND source_topic = %s FOR UPDATE",
            (consumer, key, source_topic),
        ).fetchone()
        if row is None or row[0] != blocker:
            return False
        parked = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM revsync_parked WHERE consumer = %s "
            "AND record_key = %s AND source_topic = %s)",
            (consumer, key, source_topic),
        ).fetchone()
        if parked and parked[0]:
            connection.execute(
                "UPDATE revsync_key_holds SET blocker = %s WHERE consumer = %s "
                "AND record_key = %s AND source_topic = %s",
                (RELEASED, consumer, key, source_topic),
            )
        else:
            connection.execute(
                "DELETE FROM revsync_key_holds WHERE consumer = %s AND record_key = %s "
                "AND source_topic = %s",
                (consumer, key, source_topic),
            )
    return True


@dataclass(frozen=True)
class HeldKey:
    """A held key as an operator sees it."""

    consumer: str
    key: bytes
    source_topic: str
    blocker: str
    """The record it waits on (``topic:partition:offset``), or :data:`RELEASED`."""
    parked: int
    held_since: datetime


def held_keys(
    connection: psycopg.Connection[Any], consumers: Collection[str], keys: Collection[bytes]
) -> list[HeldKey]:
    """The held keys of ``consumers`` (every consumer if empty), of ``keys`` (any if empty),
    longest held first, each with how many records it has parked."""
    rows = connection.execute(
        "SELECT h.consumer, h.record_key, h.source_topic, h.blocker, count(p.seq), "
        "h.held_since FROM revsync_key_holds h LEFT JOIN revsync_parked p "
        "ON p.consumer = h.consumer AND p.record_key = h.record_key "
        "AND p.source_topic = h.source_topic "
        "WHERE (cardinality(%s::text[]) = 0 OR h.consumer = ANY(%s::text[])) "
        "AND (cardinality(%s::bytea[]) = 0 OR h.record_key = ANY(%s::bytea[])) "
        "GROUP BY h.consumer, h.record_key, h.source_topic, h.blocker, h.held_since "
        "ORDER BY h.held_since, h.consumer, h.record_key",
        (list(consumers), list(consumers), list(keys), list(keys)),
    ).fetchall()
    return [
        HeldKey(consumer, bytes(key), topic, blocker, int(parked), since)
        for consumer, key, topic, blocker, parked, since in rows
    ]
