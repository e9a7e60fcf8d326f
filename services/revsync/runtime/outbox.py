"""The transactional outbox: revsync's outbox table, and handlers' events written to it in the
transaction of their effects, with their CloudEvents headers."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from revsync.contracts.events import Event
from revsync.contracts.serde import EventSerde
from revsync.runtime import headers as h
from revsync.runtime.records import Record

log = logging.getLogger(__name__)
CLOUDEVENTS_SPEC = "1.0"
OUTBOX_CHANNEL = "revsync_outbox"

SCHEMA = f"""
-- Debezium outbox event router columns (id, aggregatetype, aggregateid, type, payload), plus
-- the topic and Kafka headers, and the service that emitted the row: each service's relay
-- publishes its own rows as itself (its principal may write only its own topics). The relay
-- deletes what it has published, so the table holds only the backlog.
CREATE TABLE IF NOT EXISTS revsync_outbox (
    seq           bigserial   UNIQUE,
    id            uuid        PRIMARY KEY,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       bytea       NOT NULL,
    topic         text        NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    service       text        NOT NULL
);
-- An outbox from before services had their own rows: those rows were order_sync's, the one
-- service that emitted then.
ALTER TABLE revsync_outbox ADD COLUMN IF NOT EXISTS service text NOT NULL DEFAULT 'order_sync';
ALTER TABLE revsync_outbox ALTER COLUMN service DROP DEFAULT;
CREATE INDEX IF NOT EXISTS revsync_outbox_by_service ON revsync_outbox (service, seq);
CREATE OR REPLACE FUNCTION revsync_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS revsync_outbox_notify ON revsync_outbox;
CREATE TRIGGER revsync_outbox_notify AFTER INSERT ON revsync_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION revsync_outbox_notify();
"""


class OutboxWriter:
    """Turns a batch's emitted events into rows of revsync's own outbox table."""

    def __init__(self, serde: EventSerde, service: str) -> None:
        self.serde = serde
        self.service = service
        self.source = f"/revsync/{service}"

    def write(
        self, cursor: psycopg.Cursor[Any], emissions: Sequence[tuple[Event, str, Record]]
    ) -> None:
        """Events a batch's records caused, each in the trace of its cause."""
        self.write_traced(
            cursor,
            [
                (event, topic, h.get(cause.headers, h.TRACEPARENT))
                for event, topic, cause in emissions
            ],
        )

    def write_traced(
        self, cursor: psycopg.Cursor[Any], emissions: Sequence[tuple[Event, str, str | None]]
    ) -> None:
        """Events with the ``traceparent`` each belongs to, if any (an API request's)."""
        if not emissions:
            return
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        ids, aggregates, keys, types, payloads, topics, headers = columns
        for event, topic, trace in emissions:
            envelope = event.envelope
            ids.append(envelope.event_id)
            aggregates.append(topic.split(".")[1])
            keys.append(event.key)
            types.append(envelope.event_type)
            payloads.append(self.serde.serialize(topic, event))
            topics.append(topic)
            headers.append(json.dumps(h.to_json(cloud_event_headers(event, self.source, trace))))
        # One statement for the batch, its rows numbered in the batch's order: the relay
        # publishes by seq, so one key's events keep their order.
        cursor.execute(
            "INSERT INTO revsync_outbox (id, aggregatetype, aggregateid, type, payload, topic, "
            "headers, service) SELECT id, agg, key, type, payload, topic, headers::jsonb, %s "
            "FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::bytea[], "
            "%b::text[], %b::text[]) WITH ORDINALITY AS r(id, agg, key, type, payload, topic, "
            "headers, n) ORDER BY n ON CONFLICT (id) DO NOTHING",
            (self.service, *columns),
        )


def cloud_event_headers(event: Event, source: str, traceparent: str | None = None) -> h.Headers:
    """CloudEvents Kafka binary-mode headers for an Avro event, and the trace it belongs to."""
    envelope = event.envelope
    pairs = [
        ("ce_id", str(envelope.event_id)),
        ("ce_type", envelope.event_type),
        ("ce_source", source),
        ("ce_time", envelope.occurred_at.isoformat()),
        ("ce_specversion", CLOUDEVENTS_SPEC),
        ("content-type", "application/avro"),
    ]
    if traceparent:
        pairs.append((h.TRACEPARENT, traceparent))
    return [(key, value.encode()) for key, value in pairs]
