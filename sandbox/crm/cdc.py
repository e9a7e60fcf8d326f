"""Change Data Capture for the simulated org: each committed transaction's Order changes become
change events on Kafka, in the JSON shape Salesforce's CDC delivers, with fault knobs for the
duplicates, gap events and overflow events a real subscriber must cope with."""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from revsync.connectors.salesforce import encode_json

EMPTY_RECORD_ID = "000000000000000AAA"
"""What an overflow event names as its record: Salesforce's empty record id."""


@dataclass
class CdcKnobs:
    """How change events go wrong. Rates are probabilities per event."""

    duplicate_rate: float = 0.0
    """Deliver the same event (same replayId) twice."""
    gap_rate: float = 0.0
    """Send a GAP_<change type> event (header and record id only) instead of the event."""
    overflow_after: int | None = None
    """After this many events of one transaction, one GAP_OVERFLOW event stands for the
    rest, as Salesforce does past its per-transaction threshold. None: never."""

    def update(self, changes: Mapping[str, Any]) -> None:
        for name, value in changes.items():
            if name == "overflow_after":
                self.overflow_after = None if value is None else int(value)
            elif name in ("duplicate_rate", "gap_rate"):
                rate = float(value)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1, not {rate}")
                setattr(self, name, rate)
            else:
                raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One record change inside a transaction."""

    change_type: str
    """CREATE, UPDATE, DELETE or UNDELETE."""
    record_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    """CREATE: every non-null field; UPDATE: the changed ones (nulled ones as None)."""
    changed_fields: tuple[str, ...] = ()
    nulled_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Commit:
    """What every change event of one transaction shares."""

    entity: str
    origin: str
    transaction_key: str
    timestamp_ms: int
    number: int
    user: str

    def header(
        self,
        sequence: int,
        change_type: str,
        record_id: str,
        changed: Sequence[str] = (),
        nulled: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A ChangeEventHeader, its fields in the order Salesforce writes them."""
        return {
            "entityName": self.entity,
            "recordIds": [record_id],
            "changeType": change_type,
            "changeOrigin": self.origin,
            "transactionKey": self.transaction_key,
            "sequenceNumber": sequence,
            "commitTimestamp": self.timestamp_ms,
            "commitNumber": self.number,
            "commitUser": self.user,
            "changedFields": list(changed),
            "nulledFields": list(nulled),
            "diffFields": [],
        }


@dataclass
class CdcCounters:
    sent: int = 0
    """Events handed to Kafka, duplicates included."""
    delivered: int = 0
    failed: int = 0
    duplicates: int = 0
    gaps: int = 0
    overflows: int = 0


class ChangeEventPublisher:
    """Publishes one entity's change events to one topic, keyed by record id.

    Callers publish under the org's lock, so events leave in commit order; :meth:`flush`
    waits until Kafka has them all."""

    def __init__(
        self,
        *,
        kafka_config: Mapping[str, Any],
        topic: str,
        entity: str,
        field_names: Sequence[str],
        knobs: CdcKnobs,
        seed: int | None = None,
    ) -> None:
        self.topic = topic
        self.entity = entity
        self.knobs = knobs
        self.counters = CdcCounters()
        digest = hashlib.sha256(",".join([entity, *field_names]).encode()).digest()
        self.schema_id = base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
        self._producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 5})
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not secrets
        self._replay_id = 0
        self._commit_number = 1_000_000
        self._lock = threading.Lock()

    def publish(self, changes: Sequence[Change], *, origin: str, user: str) -> None:
        """The change events of one committed transaction."""
        if not changes:
            return
        with self._lock:
            self._commit_number += 1
            commit = _Commit(
                self.entity,
                origin,
                str(uuid.uuid4()),
                int(time.time() * 1000),
                self._commit_number,
                user,
            )
            limit = self.knobs.overflow_after
            for sequence, change in enumerate(changes, start=1):
                if limit is not None and sequence > limit:
                    self.counters.overflows += 1
                    overflow = commit.header(sequence, "GAP_OVERFLOW", EMPTY_RECORD_ID)
                    self._send(EMPTY_RECORD_ID, {"ChangeEventHeader": overflow})
                    break
                if self._chance(self.knobs.gap_rate):
                    self.counters.gaps += 1
                    gap = commit.header(sequence, f"GAP_{change.change_type}", change.record_id)
                    payload: dict[str, Any] = {"ChangeEventHeader": gap}
                else:
                    header = commit.header(
                        sequence,
                        change.change_type,
                        change.record_id,
                        change.changed_fields,
                        change.nulled_fields,
                    )
                    payload = {"ChangeEventHeader": header, **change.fields}
                copies = 2 if self._chance(self.knobs.duplicate_rate) else 1
                self.counters.duplicates += copies - 1
                self._send(change.record_id, payload, copies)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout_s)

    def close(self) -> None:
        """Deliver whatever is still queued; nothing is lost on stop."""
        self._producer.flush(60.0)

    def _send(self, key: str, payload: Mapping[str, Any], copies: int = 1) -> None:
        self._replay_id += 1
        value = encode_json(
            {"schema": self.schema_id, "replayId": self._replay_id, "payload": payload}
        )
        for _ in range(copies):
            self.counters.sent += 1
            self._producer.produce(
                self.topic, key=key.encode(), value=value, on_delivery=self._delivered
            )

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.counters.delivered += 1
        else:
            self.counters.failed += 1

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate
