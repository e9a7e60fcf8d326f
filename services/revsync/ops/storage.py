"""The operators' tables: what became of each dead letter, replay jobs, and the audit trail.

A dead letter stays on its Kafka topic until retention removes it; the ledger says what an
operator did with it (replayed, purged, archived, quarantined), so the tooling never acts on
it twice and ``ls`` shows only what is still open.
"""

from __future__ import annotations

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS revsync_dlt_ledger (
    dlt_topic   text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    state       text        NOT NULL,
    job_id      uuid,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlt_topic, partition, "offset")
);
CREATE TABLE IF NOT EXISTS revsync_dlt_archive (
    dlt_topic   text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    value       bytea,
    headers     jsonb       NOT NULL,
    timestamp_ms bigint     NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlt_topic, partition, "offset")
);
CREATE TABLE IF NOT EXISTS revsync_replay_jobs (
    id               uuid        PRIMARY KEY,
    actor            text        NOT NULL,
    filter           jsonb       NOT NULL,
    rate_per_s       double precision,
    status           text        NOT NULL,
    total            integer     NOT NULL,
    moved            integer     NOT NULL DEFAULT 0,
    quarantined      integer     NOT NULL DEFAULT 0,
    start_offsets    jsonb       NOT NULL,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS revsync_audit (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    action    text        NOT NULL,
    filter    jsonb       NOT NULL,
    count     integer     NOT NULL,
    outcome   text        NOT NULL,
    job_id    uuid
);
"""


def migrate(connection: psycopg.Connection[object]) -> None:
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext('revsync.ops.migrate'))")
        connection.execute(SCHEMA)
