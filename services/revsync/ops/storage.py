"""The operators' tables: what became of each dead letter, replay jobs, and the audit trail.

A dead letter stays on its Kafka topic until retention removes it; the ledger says what an
operator did with it (replayed, purged, archived, quarantined), so the tooling never acts on
it twice and ``ls`` shows only what is still open.
"""

from __future__ import annotations

from revsync.migrations import Tables
from revsync.security import POSTGRES_OPERATOR

LEDGER = """
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
"""

# Who acted, as the systems that authenticated them say: the database role (PostgreSQL fills
# it in; no insert may name it) and the Kafka principal; ``actor`` (``--actor`` or the OS
# user) is only extra information, anyone can set it.
AUDIT = """
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
ALTER TABLE revsync_audit
    ADD COLUMN IF NOT EXISTS db_role text NOT NULL DEFAULT session_user,
    ADD COLUMN IF NOT EXISTS kafka_principal text;
"""
AUDITED = ("actor", "action", "filter", "count", "outcome", "job_id", "kafka_principal")
"""What an insert into the audit trail may set; the rest (id, time, role) PostgreSQL sets."""

TABLES = (
    Tables(LEDGER, writers=(POSTGRES_OPERATOR,)),
    # Append-only for the operators, whose commands it records, and closed to the services,
    # which write none; only its owner (the migrations' role) may change it.
    Tables(AUDIT, appenders=(POSTGRES_OPERATOR,), appendable=AUDITED),
)
