"""The runtime's PostgreSQL tables: inbox, outbox, key holds and parked records."""

from __future__ import annotations

from datetime import timedelta

import psycopg

OUTBOX_CHANNEL = "revsync_outbox"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS revsync_inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS revsync_inbox_processed_at ON revsync_inbox (processed_at);

-- Debezium outbox event router columns (id, aggregatetype, aggregateid, type, payload), plus
-- the topic and Kafka headers. The relay deletes what it has published, so the table holds
-- only the backlog.
CREATE TABLE IF NOT EXISTS revsync_outbox (
    seq           bigserial   UNIQUE,
    id            uuid        PRIMARY KEY,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       bytea       NOT NULL,
    topic         text        NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION revsync_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS revsync_outbox_notify ON revsync_outbox;
CREATE TRIGGER revsync_outbox_notify AFTER INSERT ON revsync_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION revsync_outbox_notify();

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
"""  # noqa: S608 - DDL; its one interpolation is a constant


def migrate(connection: psycopg.Connection[object]) -> None:
    """Create the runtime's tables if missing; safe to run from every replica at start-up."""
    with connection.transaction():
        # Serialise concurrent start-ups: DDL on the same objects would otherwise deadlock.
        connection.execute("SELECT pg_advisory_xact_lock(hashtext('revsync.migrate'))")
        connection.execute(SCHEMA)


def purge_inbox(connection: psycopg.Connection[object], retention: timedelta) -> int:
    """Delete inbox rows older than ``retention``; returns how many went."""
    with connection.transaction():
        cursor = connection.execute(
            "DELETE FROM revsync_inbox WHERE processed_at < now() - %s", (retention,)
        )
    return cursor.rowcount
