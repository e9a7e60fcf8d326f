"""The runtime's PostgreSQL tables, each defined beside the collaborator that owns it (the
inbox, the outbox, key holds and parked records, circuit breakers, the order journey), ensured
together at start-up (:func:`revsync.migrations.ensure`)."""

from __future__ import annotations

from revsync.migrations import Tables
from revsync.runtime import breaker, holds, inbox, journey, outbox
from revsync.security import POSTGRES_OPERATOR, POSTGRES_SERVICE

PIPELINE = Tables(inbox.SCHEMA + outbox.SCHEMA, writers=(POSTGRES_SERVICE,))
"""What only the services touch: what they took in and what they owe Kafka."""
CONTROLS = Tables(holds.SCHEMA + breaker.SCHEMA, writers=(POSTGRES_SERVICE, POSTGRES_OPERATOR))
"""What operators act on too: held keys and parked records (``holds release``), circuit
breakers (``consumer resume``)."""
JOURNEY = Tables(
    journey.SCHEMA,
    writers=(POSTGRES_SERVICE,),
    readers=(POSTGRES_OPERATOR,),
    editable=journey.EDITABLE,
)
"""What the services record of each order; the operators read it, and change only what people
decide about an exception (its status, assignee, tags and resolution)."""
TABLES = (PIPELINE, CONTROLS, JOURNEY)
