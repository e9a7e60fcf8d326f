"""A record as the runtime handles it, from Kafka or un-parked from PostgreSQL, and the few
types every runtime collaborator speaks in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from revsync.runtime import headers as h
from revsync.runtime.handler import Inbound

Hold = tuple[bytes, str]
"""A record key and its source topic: the unit per-key order is kept in."""

Partition = tuple[str, int]
"""A topic and a partition number."""

Outgoing = tuple[str, bytes | None, bytes | None, h.Headers]
"""A retry or dead-letter copy: topic, key, value, headers."""

Decoder = Callable[[str, bytes | None], Inbound]
"""Turns a record's value into the handler's input, raising a DecodeError for bad bytes; it
is given the topic the record was first consumed from."""


@dataclass
class Record:
    """A record being handled: from Kafka, or un-parked from PostgreSQL (``parked_seq``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: h.Headers
    timestamp: int
    parked_seq: int | None = None

    @classmethod
    def of(cls, message: Message) -> Record:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        raw = message.headers() or []
        headers: h.Headers = list(raw.items()) if isinstance(raw, dict) else list(raw)
        return cls(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            headers,
            message.timestamp()[1],
        )

    @property
    def where(self) -> Partition:
        return self.topic, self.partition

    @property
    def origin(self) -> tuple[str, int, int]:
        """Where the record was first consumed, kept across retry tiers and replays."""
        topic = h.get(self.headers, h.ORIGINAL_TOPIC)
        if topic is None:
            return self.topic, self.partition, self.offset
        return (
            topic,
            int(h.get(self.headers, h.ORIGINAL_PARTITION) or -1),
            int(h.get(self.headers, h.ORIGINAL_OFFSET) or -1),
        )

    @property
    def hold(self) -> Hold | None:
        """What orders this record: its key within the topic it was first consumed from.
        Kafka orders a key only within one topic, so a failure holds back the key's later
        records of that topic; the key's records on other topics have no order to keep."""
        return None if self.key is None else (self.key, self.origin[0])

    @property
    def blocker_id(self) -> str:
        topic, partition, offset = self.origin
        return f"{topic}:{partition}:{offset}"
