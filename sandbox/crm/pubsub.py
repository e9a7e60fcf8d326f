"""Salesforce's Pub/Sub API (gRPC, ``eventbus.v1``) over the simulated org's change events: an
event bus with one channel per entity, opaque replay ids, retention and schema versions, and
the service that serves it as Salesforce does, with its authentication metadata, flow control,
keepalives and error codes. Loopback only, without TLS: it is a sandbox."""

from __future__ import annotations

import bisect
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc

from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.pubsub_api import pubsub_api_pb2_grpc as pb_grpc
from sandbox.crm.cdc import CHANGE_EVENT_ENTITIES, CdcKnobs, ChangeEvent
from sandbox.crm.model import SOBJECTS
from sandbox.crm.schemas import ChangeEventSchema

HOST = "127.0.0.1"
"""Where the service listens: access tokens cross it in plain text."""
MAX_REQUESTED = 100
"""The most events a subscriber may have requested and not yet received."""
REPLAY_ID_BYTES = 8
ERROR_CODE = "error-code"
RPC_ID = "rpc-id"
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
TOPIC_NOT_FOUND = "sfdc.platform.eventbus.grpc.service.topic.not.found"
SCHEMA_NOT_FOUND = "sfdc.platform.eventbus.grpc.service.schema.not.found"
REPLAY_ID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
FLOW_CONTROL_ERROR = "sfdc.platform.eventbus.grpc.flow.control.error"
PUBLISH_DENIED = "sfdc.platform.eventbus.grpc.service.publish.denied"
SERVICE_UNAVAILABLE = "sfdc.platform.eventbus.grpc.service.unavailable"
T = TypeVar("T")


def channel_name(entity: str) -> str:
    return f"/data/{entity}ChangeEvent"


class PubSubError(Exception):
    """A refusal: the status a call ends with, and the API's error code for it."""

    def __init__(self, code: grpc.StatusCode, error_code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.error_code = error_code
        self.details = details


@dataclass(frozen=True)
class StoredEvent:
    replay_id: int
    event: pb.ProducerEvent
    stored_at: float
    """On the bus's clock, for retention."""


@dataclass(eq=False)
class Channel:
    """One entity's retained change events, oldest first."""

    entity: str
    schema: ChangeEventSchema
    """The schema events are written with now; those already retained keep theirs."""
    first_replay_id: int
    next_replay_id: int = field(init=False)
    events: list[StoredEvent] = field(default_factory=list)
    latest: int | None = None
    """The last replay id handed out, retained or not."""
    expired_through: int | None = None
    """The newest replay id retention has dropped."""
    published: int = 0
    subscribers: int = 0
    max_pending_requested: int = 0

    def __post_init__(self) -> None:
        self.next_replay_id = self.first_replay_id

    @property
    def name(self) -> str:
        return channel_name(self.entity)

    def retains(self, replay_id: int) -> bool:
        index = bisect.bisect_left(self.events, replay_id, key=_replay_id)
        return index < len(self.events) and self.events[index].replay_id == replay_id

    def expired(self, replay_id: int) -> bool:
        """Whether ``replay_id`` is within the range retention has dropped."""
        return self.expired_through is not None and (
            self.first_replay_id <= replay_id <= self.expired_through
        )

    def after(self, replay_id: int, limit: int) -> list[StoredEvent]:
        start = bisect.bisect_right(self.events, replay_id, key=_replay_id)
        return self.events[start : start + limit]


def _replay_id(event: StoredEvent) -> int:
    return event.replay_id


def _stored_at(event: StoredEvent) -> float:
    return event.stored_at


def replay_bytes(replay_id: int) -> bytes:
    """A replay id as the API carries it: opaque bytes (here 8, big-endian)."""
    return replay_id.to_bytes(REPLAY_ID_BYTES, "big")


@dataclass(eq=False)
class Subscription:
    """One Subscribe stream's place in its channel and its flow control."""

    channel: Channel
    position: int
    """The replay id after which events are still to be sent (-1: from the oldest)."""
    generation: int
    """The bus's disconnect generation it was opened in."""
    last_sent: float
    pending: int = 0
    """Events requested and not yet sent."""
    max_pending_requested: int = 0
    violation: str | None = None
    """Why a request broke flow control; the stream ends with it."""
    ended: bool = False


class EventBus:
    """The org's change event channels. One condition guards them all: publishing and every
    control change wake the subscribers waiting on it."""

    def __init__(
        self,
        knobs: CdcKnobs,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.knobs = knobs
        self.condition = threading.Condition()
        self._clock = clock
        self._random = random.Random(seed)  # noqa: S311 - replay id steps, not secrets
        self.channels: dict[str, Channel] = {}
        self._schemas: dict[str, ChangeEventSchema] = {}
        for entity in CHANGE_EVENT_ENTITIES:
            schema = ChangeEventSchema.of(SOBJECTS[entity])
            # Far from 0 and advancing by uneven steps: a client must store the replay ids it
            # is given, it cannot compute them.
            start = self._random.randrange(1 << 40, 1 << 48)
            self.channels[channel_name(entity)] = Channel(entity, schema, start)
            self._schemas[schema.schema_id] = schema
        self._subscriptions: list[Subscription] = []
        self._generation = 0
        self._closed = False
        self.disconnected = 0
        self.max_pending_requested = 0

    # --- publishing and control ----------------------------------------------------------

    def append(self, events: Sequence[ChangeEvent]) -> None:
        """Publish ``events`` in order, each encoded with its channel's current schema."""
        if not events:
            return
        with self.condition:
            now = self._clock()
            for event in events:
                channel = self.channels[channel_name(event.entity)]
                producer_event = pb.ProducerEvent(
                    id=event.event_id,
                    schema_id=channel.schema.schema_id,
                    payload=channel.schema.encode(event),
                )
                replay_id = channel.next_replay_id
                channel.next_replay_id += self._random.randint(1, 7)
                channel.events.append(StoredEvent(replay_id, producer_event, now))
                channel.latest = replay_id
                channel.published += 1
            self.condition.notify_all()

    def evolve(self, entity: str, field_name: str) -> ChangeEventSchema:
        """Add text field ``field_name`` to ``entity``'s schema, first after the header; events
        from now on are written with the new schema. ValueError for an unknown entity or a
        field it has."""
        with self.condition:
            channel = self.channels.get(channel_name(entity))
            if channel is None:
                raise ValueError(f"{entity} publishes no change events")
            channel.schema = channel.schema.with_field(field_name)
            self._schemas[channel.schema.schema_id] = channel.schema
            return channel.schema

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change knobs (:meth:`CdcKnobs.update`); the knobs after it."""
        with self.condition:
            # Retention is applied lazily: what the old setting dropped by now stays dropped.
            for channel in self.channels.values():
                self._expire(channel)
            try:
                self.knobs.update(changes)
            finally:
                # A subscriber waiting for its keepalive under the old period looks again.
                self.condition.notify_all()
            return self.knobs.as_dict()

    def disconnect(self) -> int:
        """End every open Subscribe stream (UNAVAILABLE, as a server restart would); how many."""
        with self.condition:
            self._generation += 1
            ended = len(self._subscriptions)
            self.disconnected += ended
            self.condition.notify_all()
            return ended

    def close(self) -> None:
        """End every open stream, for good."""
        with self.condition:
            self._closed = True
            self.condition.notify_all()

    # --- reading -------------------------------------------------------------------------

    def topic(self, name: str) -> Channel:
        with self.condition:
            channel = self.channels.get(name)
        if channel is None:
            raise PubSubError(
                grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND, f"The topic {name} does not exist"
            )
        return channel

    def schema(self, schema_id: str) -> ChangeEventSchema:
        with self.condition:
            schema = self._schemas.get(schema_id)
        if schema is None:
            raise PubSubError(
                grpc.StatusCode.NOT_FOUND, SCHEMA_NOT_FOUND, f"No schema has id {schema_id}"
            )
        return schema

    def subscribe(
        self, topic: str, preset: pb.ReplayPreset.ValueType, replay_id: bytes
    ) -> Subscription:
        """A subscription to channel ``topic`` from ``preset``; PubSubError for an unknown
        channel or a CUSTOM replay id the channel does not retain."""
        channel = self.topic(topic)
        with self.condition:
            self._expire(channel)
            subscription = Subscription(
                channel, self._start(channel, preset, replay_id), self._generation, self._clock()
            )
            self._subscriptions.append(subscription)
            channel.subscribers += 1
            return subscription

    def request(self, subscription: Subscription, num_requested: int) -> None:
        """A FetchRequest's ``num_requested`` more events; a request that would leave more
        than 100 pending breaks flow control and ends the stream."""
        with self.condition:
            wanted = subscription.pending + num_requested
            if not 1 <= num_requested <= MAX_REQUESTED or wanted > MAX_REQUESTED:
                subscription.violation = (
                    f"num_requested {num_requested} with {subscription.pending} pending: at "
                    f"most {MAX_REQUESTED} events may be requested and not yet received"
                )
            else:
                subscription.pending = wanted
                subscription.max_pending_requested = max(subscription.max_pending_requested, wanted)
                channel = subscription.channel
                channel.max_pending_requested = max(channel.max_pending_requested, wanted)
                self.max_pending_requested = max(self.max_pending_requested, wanted)
            self.condition.notify_all()

    def next_response(self, subscription: Subscription) -> pb.FetchResponse | None:
        """Wait for the stream's next response: requested events, or a keepalive once it was
        quiet for ``keepalive_s``. None once the stream has ended; PubSubError when the server
        ends it."""
        channel = subscription.channel
        with self.condition:
            while True:
                if subscription.ended:
                    return None
                if self._closed or subscription.generation != self._generation:
                    raise PubSubError(
                        grpc.StatusCode.UNAVAILABLE,
                        SERVICE_UNAVAILABLE,
                        "The server ended the subscription; subscribe again",
                    )
                if subscription.violation is not None:
                    raise PubSubError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        FLOW_CONTROL_ERROR,
                        subscription.violation,
                    )
                self._expire(channel)
                now = self._clock()
                if subscription.pending:
                    batch = channel.after(
                        subscription.position, min(subscription.pending, self.knobs.batch)
                    )
                    if batch:
                        subscription.position = batch[-1].replay_id
                        subscription.pending -= len(batch)
                        subscription.last_sent = now
                        return pb.FetchResponse(
                            events=[
                                pb.ConsumerEvent(event=e.event, replay_id=replay_bytes(e.replay_id))
                                for e in batch
                            ],
                            latest_replay_id=replay_bytes(subscription.position),
                            pending_num_requested=subscription.pending,
                        )
                due = subscription.last_sent + self.knobs.keepalive_s
                if now >= due:
                    subscription.last_sent = now
                    latest = b"" if channel.latest is None else replay_bytes(channel.latest)
                    return pb.FetchResponse(
                        latest_replay_id=latest, pending_num_requested=subscription.pending
                    )
                self.condition.wait(due - now)

    def end(self, subscription: Subscription) -> None:
        """The stream is over (ended by either side); forget it. Idempotent."""
        with self.condition:
            if subscription.ended:
                return
            subscription.ended = True
            self._subscriptions.remove(subscription)
            subscription.channel.subscribers -= 1
            self.condition.notify_all()

    def stats(self) -> dict[str, Any]:
        """Per channel: events published and retained, the latest replay id (hex), its current
        schema, open subscriptions and the most events ever pending for one of them; each open
        subscription's pending and most pending; the most pending overall; and how many
        streams :meth:`disconnect` ended."""
        with self.condition:
            channels: dict[str, Any] = {}
            for name, channel in self.channels.items():
                self._expire(channel)
                channels[name] = {
                    "published": channel.published,
                    "retained": len(channel.events),
                    "latest_replay_id": (
                        None if channel.latest is None else replay_bytes(channel.latest).hex()
                    ),
                    "schema_id": channel.schema.schema_id,
                    "subscribers": channel.subscribers,
                    "max_pending_requested": channel.max_pending_requested,
                }
            return {
                "channels": channels,
                "subscriptions": [
                    {
                        "channel": subscription.channel.name,
                        "pending": subscription.pending,
                        "max_pending_requested": subscription.max_pending_requested,
                    }
                    for subscription in self._subscriptions
                ],
                "max_pending_requested": self.max_pending_requested,
                "disconnected": self.disconnected,
            }

    def _start(self, channel: Channel, preset: pb.ReplayPreset.ValueType, replay_id: bytes) -> int:
        latest = -1 if channel.latest is None else channel.latest
        if preset == pb.EARLIEST:
            return -1
        if preset != pb.CUSTOM:
            return latest
        if len(replay_id) == REPLAY_ID_BYTES:
            wanted = int.from_bytes(replay_id, "big")
            if channel.retains(wanted):
                return wanted
            if channel.expired(wanted) and self.knobs.expired_replay == "silent":
                return latest
        raise PubSubError(
            grpc.StatusCode.INVALID_ARGUMENT,
            REPLAY_ID_CORRUPTED,
            f"The Replay ID validation failed: {replay_id.hex() or 'an empty replay id'} is no "
            f"event {channel.name} retains. Ensure that the Replay ID is valid.",
        )

    def _expire(self, channel: Channel) -> None:
        """Drop the events older than the retention (called with the condition held)."""
        cutoff = self._clock() - self.knobs.retention_s
        dropped = bisect.bisect_left(channel.events, cutoff, key=_stored_at)
        if dropped:
            channel.expired_through = channel.events[dropped - 1].replay_id
            del channel.events[:dropped]


class PubSubService(pb_grpc.PubSubServicer):
    """The ``eventbus.v1.PubSub`` service. Every call must carry a live access token of the
    org, its instance URL and its org id as ``tenantid``, as Salesforce requires."""

    def __init__(self, bus: EventBus, org_id: str, authorized: Callable[[str], bool]) -> None:
        """``authorized(token)``: whether the org still honours the access token."""
        self._bus = bus
        self._org_id = org_id
        self._authorized = authorized

    def GetTopic(  # noqa: N802 - the generated servicer's name
        self, request: pb.TopicRequest, context: grpc.ServicerContext
    ) -> pb.TopicInfo:
        def topic(rpc_id: str) -> pb.TopicInfo:
            channel = self._bus.topic(request.topic_name)
            return pb.TopicInfo(
                topic_name=channel.name,
                tenant_guid=self._org_id,
                can_publish=False,
                can_subscribe=True,
                schema_id=channel.schema.schema_id,
                rpc_id=rpc_id,
            )

        return self._unary(context, topic)

    def GetSchema(  # noqa: N802 - the generated servicer's name
        self, request: pb.SchemaRequest, context: grpc.ServicerContext
    ) -> pb.SchemaInfo:
        def schema(rpc_id: str) -> pb.SchemaInfo:
            found = self._bus.schema(request.schema_id)
            return pb.SchemaInfo(
                schema_json=found.schema_json, schema_id=found.schema_id, rpc_id=rpc_id
            )

        return self._unary(context, schema)

    def Publish(  # noqa: N802 - the generated servicer's name
        self, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> pb.PublishResponse:
        self._refuse_publishing(context)

    def PublishStream(  # noqa: N802 - the generated servicer's name
        self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishResponse]:
        self._refuse_publishing(context)

    def Subscribe(  # noqa: N802 - the generated servicer's name
        self, request_iterator: Iterator[pb.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.FetchResponse]:
        rpc_id = str(uuid.uuid4())
        token = self._signed_in(context, rpc_id)
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:
            return  # cancelled before it asked for anything
        if first is None:
            return
        try:
            subscription = self._bus.subscribe(
                first.topic_name, first.replay_preset, first.replay_id
            )
        except PubSubError as refusal:
            _abort(context, rpc_id, refusal)
        try:
            if not context.add_callback(lambda: self._bus.end(subscription)):
                return  # the call ended already
            self._bus.request(subscription, first.num_requested)
            # The client's requests arrive while this generator waits for events to send.
            threading.Thread(
                target=self._read_requests,
                args=(request_iterator, subscription),
                name=f"pubsub-requests-{rpc_id[:8]}",
                daemon=True,
            ).start()
            while (response := self._bus.next_response(subscription)) is not None:
                if not self._authorized(token):
                    _abort(context, rpc_id, _unauthenticated())
                response.rpc_id = rpc_id
                yield response
        except PubSubError as refusal:
            _abort(context, rpc_id, refusal)
        finally:
            self._bus.end(subscription)

    def _read_requests(
        self, requests: Iterator[pb.FetchRequest], subscription: Subscription
    ) -> None:
        """Later FetchRequests only ask for more events: their topic and preset are ignored."""
        try:
            for request in requests:
                self._bus.request(subscription, request.num_requested)
        except grpc.RpcError:
            pass  # the call is over: the stream generator ends on its own

    def _refuse_publishing(self, context: grpc.ServicerContext) -> NoReturn:
        rpc_id = str(uuid.uuid4())
        self._signed_in(context, rpc_id)
        _abort(
            context,
            rpc_id,
            PubSubError(
                grpc.StatusCode.PERMISSION_DENIED,
                PUBLISH_DENIED,
                "Change event channels are published by the org only",
            ),
        )

    def _unary(self, context: grpc.ServicerContext, answer: Callable[[str], T]) -> T:
        rpc_id = str(uuid.uuid4())
        self._signed_in(context, rpc_id)
        try:
            return answer(rpc_id)
        except PubSubError as refusal:
            _abort(context, rpc_id, refusal)

    def _signed_in(self, context: grpc.ServicerContext, rpc_id: str) -> str:
        """The call's access token, once its metadata names a live token, an instance and
        this org; otherwise the call ends UNAUTHENTICATED."""
        metadata = dict(context.invocation_metadata())
        token = metadata.get("accesstoken")
        if not (
            isinstance(token, str)
            and self._authorized(token)
            and metadata.get("instanceurl")
            and metadata.get("tenantid") == self._org_id
        ):
            _abort(context, rpc_id, _unauthenticated())
        return token


def _unauthenticated() -> PubSubError:
    return PubSubError(
        grpc.StatusCode.UNAUTHENTICATED,
        AUTH_ERROR,
        "The access token, instance URL or tenant id is missing, invalid or expired",
    )


def _abort(context: grpc.ServicerContext, rpc_id: str, refusal: PubSubError) -> NoReturn:
    context.set_trailing_metadata(((ERROR_CODE, refusal.error_code), (RPC_ID, rpc_id)))
    context.abort(refusal.code, refusal.details)


class PubSubServer:
    """The service on its own port of the loopback interface, each call on a worker thread
    (a Subscribe stream holds one for its life)."""

    def __init__(
        self,
        bus: EventBus,
        *,
        org_id: str,
        authorized: Callable[[str], bool],
        port: int = 0,
        workers: int = 64,
    ) -> None:
        self._bus = bus
        # Past ``workers`` calls a new one is refused (RESOURCE_EXHAUSTED) rather than queued
        # behind streams that may never end.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pubsub"),
            maximum_concurrent_rpcs=workers,
        )
        pb_grpc.add_PubSubServicer_to_server(PubSubService(bus, org_id, authorized), self._server)
        self.port = self._server.add_insecure_port(f"{HOST}:{port}")

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_s: float = 2.0) -> None:
        """End every stream (UNAVAILABLE, so clients subscribe again elsewhere), then stop."""
        self._bus.close()
        self._server.stop(grace_s).wait()
