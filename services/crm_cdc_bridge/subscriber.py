"""One channel's subscription: leadership, the Subscribe stream with flow control, records
produced to Kafka, and the checkpoint that follows Kafka's acknowledgements."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from crm_cdc_bridge import logic
from crm_cdc_bridge.checkpoints import TABLES, Checkpoint, Checkpoints
from crm_cdc_bridge.options import Options, Preset
from revsync.connectors.pubsub import (
    PubSubAuthRefused,
    PubSubClient,
    PubSubRefused,
    ReplayIdRefused,
)
from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.errors import TransientError
from revsync.migrations import ensure
from revsync.runtime.observability import (
    CDC_CHECKPOINT_AGE,
    CDC_GAPS,
    CDC_IN_FLIGHT,
    CDC_LAG,
    CDC_LEADER,
    CDC_PRODUCED,
    CDC_RECEIVED,
    CDC_UNDECODABLE,
    Backoff,
)

log = logging.getLogger(__name__)
RESUBSCRIBE_PAUSE_S = 0.5
DRAIN_S = 30.0
"""How long a stream's end waits for Kafka to acknowledge what it was handed."""
SETTLE_S = 2.0
"""A stream still open this long after its first request is subscribed (an idle channel
answers only with its first keepalive, up to 270 s later)."""


class DeliveryFailed(TransientError):
    """Kafka did not acknowledge a change record in time; the stream is subscribed again
    from the last position Kafka has everything up to."""


@dataclass(frozen=True)
class _Start:
    preset: pb.ReplayPreset.ValueType
    resume_after: logic.Position | None = None
    """The position a CUSTOM start resumes after."""
    gap: tuple[datetime, str] | None = None
    """A gap to write (reconcile since, reason) once the subscription answers."""

    @property
    def replay_id(self) -> bytes:
        return self.resume_after.replay_id if self.resume_after else b""


class State(StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    SUBSCRIBED = "subscribed"
    FAILING = "failing"


_END = object()


class ChannelSubscriber:
    """Subscribes to one channel for as long as this replica holds its leadership (a
    PostgreSQL advisory lock per org and channel, on the connection that also writes the
    checkpoint), and stands by otherwise."""

    def __init__(
        self,
        *,
        channel: str,
        pubsub: PubSubClient,
        dsn: str,
        producer: Producer,
        topics: Mapping[str, str],
        options: Options,
        stopping: threading.Event,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.channel = channel
        self.pubsub = pubsub
        self.dsn = dsn
        self.producer = producer
        self.topics = topics
        self.options = options
        self.stopping = stopping
        self.clock = clock
        self.state = State.STARTING
        self.last_beat = time.monotonic()
        entity = logic.channel_entity(channel)
        self.entities = [entity] if entity else list(topics)
        """The sObjects a gap of this channel reconciles: a custom channel's may be any."""
        self._saved: logic.Position | None = None
        self._saved_at = time.monotonic()

    # --- leadership --------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Backoff(first_s=0.5, max_s=30.0)
        while not self.stopping.is_set():
            try:
                self._lead_when_possible()
                backoff.reset()
            except psycopg.Error as error:
                self._failing("PostgreSQL", error, backoff)
            except TransientError as error:
                self._failing("a dependency", error, backoff)
            except Exception as error:  # a refusal or a misconfiguration: said, then retried
                log.error("channel %s: %s", self.channel, error)
                self._failing("a refusal", error, backoff)
            finally:
                CDC_LEADER.labels(self.channel).set(0)

    def _failing(self, what: str, error: BaseException, backoff: Backoff) -> None:
        self.state = State.FAILING
        wait = backoff.next_wait()
        log.warning("channel %s: %s failed (%s); again in %.1fs", self.channel, what, error, wait)
        self._sleep(wait)

    def _lead_when_possible(self) -> None:
        org_id = self.pubsub.session.org_id()
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as connection:
            store = Checkpoints(connection, org_id, self.channel)
            ensure(connection, TABLES)
            while not store.try_lead():
                if self.state is not State.STANDBY:
                    log.info("channel %s: standing by; another replica subscribes", self.channel)
                self.state = State.STANDBY
                self._sleep(self.options.poll_interval_s)
                if self.stopping.is_set():
                    return
                connection.execute("SELECT 1")  # a lost database ends the standby too
            self._check_channel()
            log.info("channel %s: this replica subscribes", self.channel)
            CDC_LEADER.labels(self.channel).set(1)
            start = self._start(store, store.load())
            while not self.stopping.is_set():
                try:
                    start = self._subscribe(store, start)
                    self._sleep(RESUBSCRIBE_PAUSE_S)  # a server ending every stream at once
                except ReplayIdRefused as refused:
                    start = self._gap(store, self._resume_time(store), "replay-id-refused")
                    log.error("channel %s: %s", self.channel, refused)
                except PubSubAuthRefused:
                    log.info("channel %s: access token refused; subscribing anew", self.channel)

    def _check_channel(self) -> None:
        """The channel exists and the integration user may subscribe to it (GetTopic), or a
        refusal that says so before any stream is opened."""
        topic = self.pubsub.topic(self.channel)
        if not topic.can_subscribe:
            raise PubSubRefused(
                f"channel {self.channel}: the integration user may not subscribe to it "
                "(give it read access to the entity, and select it for change data capture)"
            )

    def _resume_time(self, store: Checkpoints) -> datetime:
        checkpoint = store.load()
        if checkpoint is not None and checkpoint.gap_since is not None:
            return checkpoint.gap_since
        if checkpoint is not None and checkpoint.position is not None:
            return checkpoint.position.committed_at
        return self.clock()

    # --- where to start ----------------------------------------------------------------------

    def _start(self, store: Checkpoints, checkpoint: Checkpoint | None) -> _Start:
        options = self.options
        if checkpoint is not None and checkpoint.gap_since is not None:
            return _Start(
                options.after_gap.replay_preset,
                gap=(checkpoint.gap_since, checkpoint.gap_reason or "gap"),
            )
        if checkpoint is not None and checkpoint.position is not None:
            position = checkpoint.position
            if self.clock() - position.committed_at > options.retention:
                return self._gap(store, position.committed_at, "replay-id-expired")
            return _Start(pb.CUSTOM, position)
        if isinstance(options.initial, datetime):
            return self._gap(store, options.initial, "first-start-since", Preset.LATEST)
        if options.initial is Preset.LATEST:
            # Until the first checkpoint, a restart would start from the latest event again
            # and miss what came in between: a gap from now covers it.
            return self._gap(store, self.clock(), "first-start", Preset.LATEST)
        return _Start(pb.EARLIEST)

    def _gap(
        self, store: Checkpoints, since: datetime, reason: str, preset: Preset | None = None
    ) -> _Start:
        """Record a lost position durably; it is written to the topics once the new
        subscription (from ``preset``, else the one configured after a gap) answers, so
        nothing committed before the subscription began is left out."""
        since = store.record_gap(since, reason)
        return _Start((preset or self.options.after_gap).replay_preset, gap=(since, reason))

    # --- one stream --------------------------------------------------------------------------

    def _subscribe(self, store: Checkpoints, start: _Start) -> _Start:
        """One Subscribe stream until it ends, stalls or fails; returns where the next one
        starts."""
        options = self.options
        requests: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        first = pb.FetchRequest(
            topic_name=self.channel,
            replay_preset=start.preset,
            replay_id=start.replay_id,
            num_requested=options.max_in_flight,
        )
        server_pending = options.max_in_flight
        subscription = self.pubsub.subscribe(_requests(first, requests))
        responses: queue.Queue[Any] = queue.Queue()
        reader = threading.Thread(
            target=_read, args=(subscription, responses), name=f"pubsub {self.channel}"
        )
        reader.start()
        positions = logic.Positions(start.resume_after)
        gap = start.gap
        opened_at = heard_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                self.last_beat = time.monotonic()
                if self.last_beat - opened_at > SETTLE_S:
                    self.state = State.SUBSCRIBED
                item = self._next(responses, awaiting_kafka=positions.unacked_events > 0)
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    log.warning("channel %s: the server ended the stream", self.channel)
                    break
                if isinstance(item, pb.FetchResponse):
                    heard_at = time.monotonic()
                    self.state = State.SUBSCRIBED
                    if gap is not None:
                        self._write_gap(store, *gap)
                        gap = None
                    server_pending -= len(item.events)
                    self._take(item, positions, server_pending)
                self.producer.poll(0)
                if positions.failed:
                    raise DeliveryFailed(f"channel {self.channel}: Kafka refused a record")
                in_flight = server_pending + positions.unacked_events
                wanted = options.max_in_flight - in_flight
                if wanted > 0 and (wanted >= options.max_in_flight // 4 or server_pending == 0):
                    requests.put(pb.FetchRequest(topic_name=self.channel, num_requested=wanted))
                    server_pending += wanted
                CDC_IN_FLIGHT.labels(self.channel).set(server_pending + positions.unacked_events)
                self._checkpoint(store, positions.acked, force=False)
                if time.monotonic() - heard_at > options.stall_timeout_s:
                    log.warning(
                        "channel %s: nothing, not even a keepalive, for %.0fs; subscribing again",
                        self.channel,
                        options.stall_timeout_s,
                    )
                    break
        finally:
            subscription.cancel()
            requests.put(None)
            reader.join(timeout=10)
            # What was handed to Kafka is settled before the position moves for the last time.
            self.producer.flush(DRAIN_S)
            self._checkpoint(store, positions.acked, force=True)
        acked = positions.acked
        if acked is not None:
            return _Start(pb.CUSTOM, acked)
        return replace(start, gap=gap)  # the gap, if the stream ended before it was written

    def _next(self, responses: queue.Queue[Any], *, awaiting_kafka: bool) -> Any:
        """The stream's next item, or None. While Kafka owes acknowledgements, they are what
        frees room for more events: waited for a few milliseconds at a time, never behind a
        long wait for a response that cannot come until more events are requested."""
        try:
            if not awaiting_kafka:
                return responses.get(timeout=0.2)
            item = responses.get_nowait()
        except queue.Empty:
            if awaiting_kafka:
                self.producer.poll(0.005)
            return None
        return item

    def _take(self, response: pb.FetchResponse, positions: logic.Positions, pending: int) -> None:
        now = self.clock()
        if not response.events:
            positions.idle_at(
                response.latest_replay_id,
                now,
                waiting_for_more=pending > 0 and response.pending_num_requested > 0,
            )
            return
        for consumer_event in response.events:
            records, committed_at = self._records(consumer_event)
            routed = [(self._topic(record), record) for record in records]
            entry = positions.received(
                logic.Position(consumer_event.replay_id, committed_at), len(routed)
            )
            for topic, record in routed:
                self._produce(topic, record, self._on_delivery(positions, entry, topic))
            CDC_RECEIVED.labels(self.channel).inc()
            CDC_LAG.labels(self.channel).set(max((now - committed_at).total_seconds(), 0))

    def _records(
        self, consumer_event: pb.ConsumerEvent
    ) -> tuple[list[logic.ChangeRecord], datetime]:
        event = consumer_event.event
        schema = self.pubsub.schema(event.schema_id)
        try:
            try:
                record = schema.decode(event.payload)
            except Exception as error:  # fastavro's many failures: one typed error
                raise logic.UndecodableChangeEvent(
                    f"payload not decodable with schema {event.schema_id}: {type(error).__name__}"
                ) from None
            records = logic.change_records(record, schema, consumer_event.replay_id)
            stamp = int(record["ChangeEventHeader"].get("commitTimestamp") or 0)
            return records, datetime.fromtimestamp(stamp / 1000, UTC)
        except (
            logic.UndecodableChangeEvent,
            TypeError,
            ValueError,
            ArithmeticError,
            OSError,
        ) as error:
            CDC_UNDECODABLE.labels(self.channel).inc()
            log.error("channel %s: event %s not decodable: %s", self.channel, event.id, error)
            entity = self.entities[0]
            undecodable = logic.undecodable_record(
                entity, event.schema_id, consumer_event.replay_id, event.payload, str(error)
            )
            return [undecodable], self.clock()

    def _topic(self, record: logic.ChangeRecord) -> str:
        topic = self.topics.get(record.entity)
        if topic is None:
            raise logic.UnroutedEntity(
                f"channel {self.channel} delivered a {record.entity} change, and no CDC topic "
                f"of the catalog carries {record.entity} (entities: {', '.join(self.topics)})"
            )
        return topic

    def _produce(self, topic: str, record: logic.ChangeRecord, on_delivery: Any) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, key=record.key.encode(), value=record.value, on_delivery=on_delivery
                )
                return
            except BufferError:  # the producer's queue is full: let it drain
                self.producer.poll(0.1)

    def _on_delivery(
        self, positions: logic.Positions, entry: Any, topic: str
    ) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                CDC_PRODUCED.labels(self.channel, topic).inc()
            else:
                log.warning(
                    "channel %s: record to %s not delivered: %s", self.channel, topic, error
                )
            positions.delivered(entry, error is None)

        return delivered

    def _write_gap(self, store: Checkpoints, since: datetime, reason: str) -> None:
        """Every entity's gap record, in Kafka before the stream's first event is taken."""
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        for entity in self.entities:
            record = logic.gap_record(entity, self.channel, since, reason)
            self._produce(self._topic(record), record, delivered)
        if self.producer.flush(DRAIN_S) or failures:
            raise DeliveryFailed(f"channel {self.channel}: the gap record was not delivered")
        store.gap_written()
        CDC_GAPS.labels(self.channel, reason).inc()
        level = logging.INFO if reason.startswith("first-start") else logging.ERROR
        log.log(
            level,
            "channel %s: events since %s cannot be replayed (%s); a gap record reconciles "
            "every record changed since then",
            self.channel,
            since.isoformat(),
            reason,
        )

    def _checkpoint(self, store: Checkpoints, acked: logic.Position | None, *, force: bool) -> None:
        now = time.monotonic()
        due = force or now - self._saved_at >= self.options.checkpoint_interval_s
        if acked is not None and acked != self._saved and due:
            store.save(acked)
            self._saved, self._saved_at = acked, now
        CDC_CHECKPOINT_AGE.labels(self.channel).set(now - self._saved_at)

    def _sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < until:
            self.last_beat = time.monotonic()
            time.sleep(min(0.2, max(until - time.monotonic(), 0)))


def _requests(
    first: pb.FetchRequest, more: queue.Queue[pb.FetchRequest | None]
) -> Iterator[pb.FetchRequest]:
    yield first
    while (request := more.get()) is not None:
        yield request


def _read(subscription: Any, responses: queue.Queue[Any]) -> None:
    try:
        for response in subscription:
            responses.put(response)
        responses.put(_END)
    except BaseException as error:  # handed to the subscriber's thread, which raises it
        responses.put(error)
