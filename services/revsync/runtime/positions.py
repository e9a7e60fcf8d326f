"""Partition positions: what this member owns, which partitions wait for a retry tier's due
time, where a failed batch rewinds to, and which offsets may be committed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaException, TopicPartition

from revsync.runtime import headers as h
from revsync.runtime.records import Partition, Record

log = logging.getLogger(__name__)
Waiting = tuple[str, int, int, datetime]
"""A retry-tier partition stopped at an offset until a due time."""


def split_due(
    records: list[Record], now: datetime, delays: Mapping[str, timedelta]
) -> tuple[list[Record], list[Waiting]]:
    """Retry-tier records not yet due stop their partition at the first of them; the rest go
    on. A tier's record never waits longer than the tier's delay (``delays``, by topic) from
    now, whatever due time it carries."""
    due: list[Record] = []
    waiting: dict[Partition, Waiting] = {}
    for record in records:
        if record.where in waiting:
            continue
        until = h.due_at(record.headers) if record.topic in delays else None
        if until is not None:
            until = min(until, now + delays[record.topic])
        if until is not None and until > now and record.parked_seq is None:
            waiting[record.where] = (record.topic, record.partition, record.offset, until)
            continue
        due.append(record)
    return due, list(waiting.values())


def rewind_points(records: list[Record]) -> dict[Partition, int]:
    """Where each partition of a failed batch starts again: its first record's offset."""
    first: dict[Partition, int] = {}
    for record in records:
        if record.parked_seq is None:
            first.setdefault(record.where, record.offset)
    return first


class Positions:
    """This member's partitions of one consumer group, as Kafka assigns them."""

    def __init__(self) -> None:
        self.assigned: set[Partition] = set()
        self.paused: dict[Partition, datetime] = {}
        self.stopped = False
        """Every partition paused (an open circuit breaker), whatever its due time."""
        self._fresh: set[Partition] = set()
        """Assigned since :meth:`settle`: their pause state is still the client's."""

    def assign(self, partitions: list[TopicPartition]) -> None:
        fresh = {(p.topic, p.partition) for p in partitions}
        self.assigned |= fresh
        self._fresh |= fresh

    def settle(self, consumer: Consumer) -> None:
        """Give partitions assigned since the last call the state this member wants: flowing,
        or paused while :attr:`stopped`. The client keeps a partition's pause across a
        rebalance, so one revoked while paused (by the keepalive, or for a due time) would
        otherwise come back paused for ever. (Not in the assignment callback: the partitions
        are only assigned after it returns.)"""
        fresh = [
            TopicPartition(t, p)
            for t, p in self._fresh
            if (t, p) in self.assigned and (t, p) not in self.paused  # waiting for a due time
        ]
        self._fresh.clear()
        if not fresh:
            return
        if self.stopped:
            consumer.pause(fresh)
        else:
            consumer.resume(fresh)

    def revoke(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
            self.paused.pop((p.topic, p.partition), None)
            self._fresh.discard((p.topic, p.partition))

    def owns(self, where: Partition) -> bool:
        return where in self.assigned

    def active(self) -> list[TopicPartition]:
        if self.stopped:
            return []
        return [TopicPartition(t, p) for t, p in self.assigned if (t, p) not in self.paused]

    def stop(self, consumer: Consumer) -> None:
        """Pause every partition we own (and keep them paused) until :meth:`start`."""
        self.stopped = True
        consumer.pause([TopicPartition(t, p) for t, p in self.assigned])

    def start(self, consumer: Consumer) -> None:
        self.stopped = False
        consumer.resume(self.active())

    def pause_until(self, consumer: Consumer, waiting: Waiting) -> None:
        topic, partition, offset, until = waiting
        if (topic, partition) not in self.assigned:
            return
        position = TopicPartition(topic, partition, offset)
        consumer.pause([position])
        consumer.seek(position)
        self.paused[(topic, partition)] = until

    def resume_due(self, consumer: Consumer) -> None:
        if self.stopped:
            return
        now = datetime.now(UTC)
        ready = [where for where, until in self.paused.items() if until <= now]
        if ready:
            consumer.resume([TopicPartition(t, p) for t, p in ready])
            for where in ready:
                del self.paused[where]

    def rewind(self, consumer: Consumer, records: list[Record]) -> None:
        for (topic, partition), offset in rewind_points(records).items():
            if (topic, partition) in self.assigned:
                consumer.seek(TopicPartition(topic, partition, offset))

    def commit(self, consumer: Consumer, positions: dict[Partition, int]) -> None:
        """Commit the positions of partitions still ours; a failure is only logged, since the
        effects are committed with their inbox rows and a redelivery is a counted no-op."""
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in positions.items() if (t, p) in self.assigned
        ]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning("offset commit failed, records will be redelivered: %s", error)

    def poll_paused(self, consumer: Consumer) -> None:
        """Poll with every partition paused, so that the group keeps this member through a
        slow batch or a wait; a record from a partition assigned during the poll is left for
        the next batch."""
        active = self.active()
        consumer.pause(active)
        stray = consumer.poll(0)
        if stray is not None and stray.error() is None:
            topic, partition, offset = stray.topic(), stray.partition(), stray.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            consumer.seek(TopicPartition(topic, partition, offset))
        consumer.resume([tp for tp in active if self.owns((tp.topic, tp.partition))])
