"""A record as the runtime handles it, from Kafka or un-parked from PostgreSQL, and the few
types every runtime collaborator speaks in."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from revsync.errors import DecodeError, ErrorClass, MalformedHeader
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


ROUTING_PARSERS = (
    h.original_partition,
    h.original_offset,
    h.original_timestamp,
    h.attempts,
    h.replay_count,
    h.due_at,
    h.first_failure_at,
    h.last_failure_at,
)
"""Every routing header revsync reads back: each parses, or raises MalformedHeader."""
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class MalformedRoutingHeaders(DecodeError):
    """A record on one of the consumer's own retry or replay topics carries routing headers
    that cannot be revsync's: dead-lettered as it is, never trusted."""

    error_class = ErrorClass.DESERIALIZATION


def routing_problem(headers: h.Headers) -> str | None:
    """What is wrong with a record's revsync routing headers, or None."""
    names = [name for name, _ in headers if name.startswith(h.ERROR_PREFIX)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"{', '.join(repeated)} given more than once"
    for parse in ROUTING_PARSERS:
        try:
            parse(headers)
        except MalformedHeader as error:
            return str(error)
    topic = h.get(headers, h.ORIGINAL_TOPIC)
    if topic is not None and not TOPIC_NAME.fullmatch(topic):
        return f"{h.ORIGINAL_TOPIC} is {topic[:40]!r}, not a topic name"
    return None


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
    problem: MalformedRoutingHeaders | None = None
    """Set when the record came with routing headers that cannot be revsync's own."""

    @classmethod
    def of(cls, message: Message, *, trusted: bool) -> Record:
        """The record of ``message``. Only a ``trusted`` topic (the consumer's own retry and
        replay topics, which only revsync writes) may carry revsync's routing headers: on any
        other they are dropped, so no producer or mirror can steer the runtime. Malformed
        ones on a trusted topic are dropped too, and the record is marked with the problem."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        headers = h.as_list(message.headers())
        problem = None
        if trusted:
            found = routing_problem(headers)
            if found is not None:
                problem = MalformedRoutingHeaders(topic, found)
        if problem is not None or not trusted:
            headers = h.without_revsync(headers)
        return cls(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            headers,
            message.timestamp()[1],
            problem=problem,
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
        partition, offset = h.original_partition(self.headers), h.original_offset(self.headers)
        return topic, -1 if partition is None else partition, -1 if offset is None else offset

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
