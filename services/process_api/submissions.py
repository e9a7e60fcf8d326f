"""Orders submitted through the process API: each written to revsync's outbox in one
transaction with its idempotency record, so it enters order_sync's pipeline exactly once.

The record is keyed by the client and its ``Idempotency-Key``, and bound to the submission's
fingerprint: the same key and body again answer what the first did; the key with another body
is refused, and so is another body under the same order id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from revsync.contracts.events import OrderCreated
from revsync.errors import BusinessRuleViolation
from revsync.migrations import Tables
from revsync.runtime.outbox import OutboxWriter
from revsync.security import POSTGRES_SERVICE

SCHEMA = """
-- An order submitted through the process API: the client's Idempotency-Key, what the request
-- was (its fingerprint), and the answer given, replayed for a repeat.
CREATE TABLE IF NOT EXISTS revsync_order_submissions (
    client_id        text        NOT NULL,
    idempotency_key  text        NOT NULL,
    fingerprint      text        NOT NULL,
    order_id         text        NOT NULL UNIQUE,
    event_id         uuid        NOT NULL,
    answer           jsonb       NOT NULL,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, idempotency_key)
);
"""
TABLES = (Tables(SCHEMA, writers=(POSTGRES_SERVICE,)),)


class KeyReused(BusinessRuleViolation):
    """The Idempotency-Key was used before with another request."""


class OrderSubmittedBefore(BusinessRuleViolation):
    """Another request (under another key) submitted this order id with other content."""


@dataclass(frozen=True)
class Submitted:
    answer: dict[str, Any]
    """The answer the first submission got."""
    replayed: bool
    """Whether this was a repeat of it."""


class Submissions:
    def __init__(self, pool: ConnectionPool, outbox: OutboxWriter, topic: str) -> None:
        self.pool = pool
        self.outbox = outbox
        self.topic = topic

    def submit(
        self,
        client_id: str,
        idempotency_key: str,
        fingerprint: str,
        order: OrderCreated,
        answer: dict[str, Any],
        traceparent: str,
    ) -> Submitted:
        """Record the submission and write its event to the outbox, both or neither; a repeat
        gets the answer recorded first."""
        with self.pool.connection() as connection, connection.transaction():
            claimed = connection.execute(
                "INSERT INTO revsync_order_submissions (client_id, idempotency_key, fingerprint, "
                "order_id, event_id, answer) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (
                    client_id,
                    idempotency_key,
                    fingerprint,
                    order.crm_order_id,
                    order.envelope.event_id,
                    Jsonb(answer),
                ),
            ).fetchone()
            if claimed is not None:
                with connection.cursor() as cursor:
                    self.outbox.write_traced(cursor, [(order, self.topic, traceparent)])
                return Submitted(answer, replayed=False)
            # A conflict waited for the transaction holding it: what it recorded is committed.
            first = connection.execute(
                "SELECT client_id = %s AND idempotency_key = %s, fingerprint, answer "
                "FROM revsync_order_submissions "
                "WHERE (client_id = %s AND idempotency_key = %s) OR order_id = %s "
                "ORDER BY 1 DESC LIMIT 1",
                (client_id, idempotency_key, client_id, idempotency_key, order.crm_order_id),
            ).fetchone()
        assert first is not None  # what conflicted is never deleted
        same_key, first_fingerprint, first_answer = first
        if first_fingerprint == fingerprint:
            return Submitted(first_answer, replayed=True)
        if same_key:
            raise KeyReused(f"Idempotency-Key {idempotency_key!r} was used with another request")
        raise OrderSubmittedBefore(
            f"order {order.crm_order_id} was submitted before with other content"
        )
