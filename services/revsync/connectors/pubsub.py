"""A client of Salesforce's Pub/Sub API (gRPC, ``eventbus.v1``): topics, schemas by id, and
the bidirectional Subscribe stream, with the org's OAuth session on every call and the API's
failures translated into revsync's error taxonomy."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fastavro
import grpc

from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.pubsub_api import pubsub_api_pb2_grpc as pb_grpc
from revsync.connectors.salesforce_auth import SalesforceSession
from revsync.errors import ErrorClass, RevsyncError, TransientError
from revsync.runtime.observability import CDC_SCHEMA_CACHE_MISSES

SYSTEM = "salesforce pub/sub api"
ERROR_CODE = "error-code"
"""The trailer in which the Pub/Sub API names the cause of a failure."""
REPLAY_ID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest FetchResponse read: a change event is at most 1 MB, and at most 100 are
requested at once, but a full batch of wide events is rare."""
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
T = TypeVar("T")


class PubSubUnavailable(TransientError):
    """The Pub/Sub API could not be reached, or ended a call for a reason that passes."""


class PubSubAuthRefused(TransientError):
    """The access token was refused (UNAUTHENTICATED): expired or revoked. A fresh one is
    fetched and the call made again."""


class PubSubRefused(RevsyncError):
    """The Pub/Sub API refused a request for good (an unknown topic, no permission, a bad
    argument): the message names the status and the API's error code."""

    error_class = ErrorClass.UNKNOWN


class ReplayIdRefused(PubSubRefused):
    """The stored replay id is not one the channel still has (corrupted, or older than the
    retention): events since that position can no longer be replayed."""


def refusal(error: grpc.RpcError, what: str) -> RevsyncError:
    """``error`` (a failed call about ``what``) as revsync's typed error. Only the status, the
    API's error code and its rpc id are kept, never the text of the answer."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    trailers: dict[str, Any] = (
        dict(error.trailing_metadata() or ()) if isinstance(error, grpc.Call) else {}
    )
    api_code = str(trailers.get(ERROR_CODE, "")) or "no error code"
    message = f"{SYSTEM}: {what}: {code.name} ({api_code})"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return PubSubAuthRefused(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT and "replayid" in api_code:
        return ReplayIdRefused(message)
    if code in TRANSIENT_CODES:
        return PubSubUnavailable(message)
    return PubSubRefused(message)


@dataclass(frozen=True)
class EventSchema:
    """One schema of a channel, by its id: parsed for decoding, and the field names its
    bitmaps index (top level in order, and those of each compound field by its position)."""

    schema_id: str
    parsed: Any
    fields: tuple[str, ...]
    nested: dict[int, tuple[str, ...]]

    @classmethod
    def from_json(cls, schema_id: str, schema_json: str) -> EventSchema:
        document = json.loads(schema_json)
        named: dict[str, Any] = {}
        fields = tuple(field["name"] for field in document.get("fields", ()))
        nested: dict[int, tuple[str, ...]] = {}
        for index, field in enumerate(document.get("fields", ())):
            record = _record_of(field["type"], named)
            if record is not None and index > 0:  # field 0 is the ChangeEventHeader
                nested[index] = tuple(child["name"] for child in record.get("fields", ()))
        return cls(schema_id, fastavro.parse_schema(document), fields, nested)

    def decode(self, payload: bytes) -> dict[str, Any]:
        record = fastavro.schemaless_reader(io.BytesIO(payload), self.parsed, None)
        if not isinstance(record, dict):
            raise ValueError("the payload is not an Avro record")
        return record


def _record_of(schema: Any, named: dict[str, Any]) -> dict[str, Any] | None:
    """The record type a field holds (alone or in a union with null), if any; named types
    defined once are found again when referenced by name."""
    for branch in schema if isinstance(schema, list) else [schema]:
        if isinstance(branch, dict) and branch.get("type") == "record":
            named[branch["name"]] = branch
            if "namespace" in branch:
                named[f"{branch['namespace']}.{branch['name']}"] = branch
            return branch
        if isinstance(branch, str) and branch in named:
            return dict(named[branch])
    return None


@dataclass(frozen=True)
class PubSubConfig:
    endpoint: str
    """``host:port`` of the Pub/Sub API: ``api.pubsub.salesforce.com:7443``."""
    instance_url: str
    tls: bool = True
    """Plain gRPC only to this machine: the settings refuse it towards another host."""
    timeout_s: float = 10.0
    """Deadline of a unary call (GetTopic, GetSchema); a Subscribe stream has none."""


class PubSubClient:
    """One org's Pub/Sub API: every call carries the session's token, the instance URL and
    the org id; a refused token is refreshed and the call made once more. Schemas are cached
    by id for the life of the client (a schema id names one schema for good)."""

    def __init__(self, config: PubSubConfig, session: SalesforceSession) -> None:
        self.config = config
        self.session = session
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 60_000),
        ]
        self._channel = (
            grpc.secure_channel(config.endpoint, grpc.ssl_channel_credentials(), options)
            if config.tls
            else grpc.insecure_channel(config.endpoint, options)
        )
        self._stub = pb_grpc.PubSubStub(self._channel)
        self._schemas: dict[str, EventSchema] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (
            ("accesstoken", token or self.session.token()),
            ("instanceurl", self.config.instance_url),
            ("tenantid", self.session.org_id()),
        )

    def topic(self, topic_name: str) -> pb.TopicInfo:
        return self._unary(
            lambda metadata: self._stub.GetTopic(
                pb.TopicRequest(topic_name=topic_name),
                metadata=metadata,
                timeout=self.config.timeout_s,
            ),
            f"topic {topic_name}",
        )

    def schema(self, schema_id: str) -> EventSchema:
        """The schema ``schema_id`` names, fetched once."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        CDC_SCHEMA_CACHE_MISSES.inc()
        info = self._unary(
            lambda metadata: self._stub.GetSchema(
                pb.SchemaRequest(schema_id=schema_id),
                metadata=metadata,
                timeout=self.config.timeout_s,
            ),
            f"schema {schema_id}",
        )
        schema = EventSchema.from_json(schema_id, info.schema_json)
        with self._lock:
            self._schemas[schema_id] = schema
        return schema

    def subscribe(self, requests: Iterator[pb.FetchRequest]) -> Subscription:
        """A Subscribe stream fed by ``requests`` (the first names the topic and where to
        start); its failures surface, typed, as its responses are read."""
        token = self.session.token()
        call = self._stub.Subscribe(requests, metadata=self.metadata(token))
        return Subscription(call, lambda: self.session.refresh(token))

    def _unary(self, send: Callable[[Any], T], what: str) -> T:
        token = self.session.token()
        for attempt in range(2):
            try:
                return send(self.metadata(token))
            except grpc.RpcError as error:
                failure = refusal(error, what)
                if isinstance(failure, PubSubAuthRefused) and attempt == 0:
                    token = self.session.refresh(token)
                    continue
                raise failure from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class Subscription:
    """An open Subscribe stream: iterate it for FetchResponses, :meth:`cancel` to end it."""

    def __init__(self, call: Any, refresh_token: Callable[[], object]) -> None:
        self._call = call
        self._refresh_token = refresh_token
        self._cancelled = False

    def __iter__(self) -> Iterator[pb.FetchResponse]:
        """The stream's responses; a failure ends it, typed. When its token was refused, a
        fresh one is fetched first, so the next stream signs in anew."""
        try:
            yield from self._call
        except grpc.RpcError as error:
            if self._cancelled:
                return
            failure = refusal(error, "subscription")
            if isinstance(failure, PubSubAuthRefused):
                self._refresh_token()
            raise failure from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()
