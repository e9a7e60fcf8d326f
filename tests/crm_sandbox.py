"""What the tests of the Salesforce adapter and of the CRM simulator build their calls from,
and a small Pub/Sub API client of their own to read the simulator's change events with."""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import fastavro
import grpc
import httpx
from pydantic import SecretStr
from sandbox.crm import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, CrmSimulator

from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb
from revsync.connectors.pubsub_api import pubsub_api_pb2_grpc as pb_grpc
from revsync.connectors.salesforce import SalesforceConfig

REST_ORIGIN = "com/salesforce/api/rest/62.0;client=revsync"
ORDERS = "/data/OrderChangeEvent"
ORDER_ITEMS = "/data/OrderItemChangeEvent"
ACCOUNTS = "/data/AccountChangeEvent"


def config(simulator: CrmSimulator, **changes: Any) -> SalesforceConfig:
    options: dict[str, Any] = {
        "instance_url": simulator.url,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": SecretStr(DEFAULT_CLIENT_SECRET),
        "timeout_s": 5.0,
        **changes,
    }
    return SalesforceConfig(**options)


def an_order(account: str, product: str, **fields: Any) -> dict[str, Any]:
    return {
        "AccountId": account,
        "EffectiveDate": "2025-12-01",
        "CurrencyIsoCode": "EUR",
        "PoNumber": "PO-1",
        **fields,
        "items": [
            {
                "Product2Id": product,
                "SKU__c": "W-1",
                "Quantity": 3,
                "UnitPrice": Decimal("19.99"),
                "Discount__c": Decimal("1.50"),
            }
        ],
    }


def an_invoice(order: str, number: int, **fields: Any) -> dict[str, Any]:
    return {
        "ERP_Invoice_Id__c": f"INV-{number}",
        "Name": f"INV-{number:06d}",
        "Order__c": order,
        "Total__c": Decimal("100.0000"),
        "Status__c": "Posted",
        **fields,
    }


def calls(simulator: CrmSimulator, route: str) -> int:
    return simulator.server.counters.get(route, 0)


def access_token(instance_url: str) -> str:
    """A new access token of the sandbox org at ``instance_url``."""
    answer = httpx.post(
        instance_url + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def field_names(bitmaps: list[str], schema: dict[str, Any]) -> list[str]:
    """The fields a bitmap list names, written independently of the code under test: bit i of
    ``0x..`` is top-level field i; ``p-0x..`` names fields of compound field p, as
    ``Parent.Child``."""
    fields = schema["fields"]
    names = []
    for element in bitmaps:
        parent, _, bits = element.rpartition("-")
        value = int(bits.removeprefix("0x"), 16)
        choices = (
            [field["name"] for field in fields]
            if not parent
            else [
                f"{fields[int(parent)]['name']}.{child['name']}"
                for child in _record(fields[int(parent)]["type"], fields)["fields"]
            ]
        )
        names += [name for index, name in enumerate(choices) if value >> index & 1]
    return names


def _record(avro_type: Any, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The record a ``["null", record]`` field holds; a name is looked up where it was
    defined."""
    branch = avro_type[1]
    if isinstance(branch, dict):
        return branch
    for field in fields:
        other = field["type"]
        if isinstance(other, list) and isinstance(other[1], dict) and other[1]["name"] == branch:
            return other[1]
    raise AssertionError(f"no record named {branch}")


@dataclass(frozen=True)
class Received:
    """A change event as read from the Pub/Sub API, decoded with its own schema."""

    replay_id: bytes
    schema_id: str
    event_id: str
    record: dict[str, Any]
    changed: list[str]
    """changedFields decoded to field names."""
    nulled: list[str]

    @property
    def header(self) -> dict[str, Any]:
        return dict(self.record["ChangeEventHeader"])

    @property
    def values(self) -> dict[str, Any]:
        """The fields the event carries a value for."""
        return {
            name: value
            for name, value in self.record.items()
            if name != "ChangeEventHeader" and value is not None
        }


class Stream:
    """An open Subscribe call: the test sends its requests one at a time and takes its
    responses with a timeout (a thread reads them into a queue)."""

    def __init__(self, call: Any, requests: queue.Queue[pb.FetchRequest | None]) -> None:
        self.call = call
        self._requests = requests
        self._responses: queue.Queue[pb.FetchResponse | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def request(self, num_requested: int) -> None:
        self._requests.put(pb.FetchRequest(num_requested=num_requested))

    def next(self, timeout_s: float = 10.0) -> pb.FetchResponse:
        """The next response; the stream's error when it ended with one."""
        response = self._responses.get(timeout=timeout_s)
        if isinstance(response, grpc.RpcError):
            raise response
        assert response is not None, "the stream ended"
        return response

    def next_events(self, timeout_s: float = 10.0) -> pb.FetchResponse:
        """The next response with events, past any keepalives."""
        while not (response := self.next(timeout_s)).events:
            pass
        return response

    def error(self, timeout_s: float = 10.0) -> grpc.RpcError:
        """The error the stream ends with, past the responses before it."""
        while True:
            response = self._responses.get(timeout=timeout_s)
            assert response is not None, "the stream ended without an error"
            if isinstance(response, grpc.RpcError):
                return response

    def silent_for(self, seconds: float) -> bool:
        """Whether nothing but keepalives (no events) arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.next(left).events:
                    return False
            except queue.Empty:
                return True
        return True

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
            self._responses.put(None)
        except grpc.RpcError as error:
            self._responses.put(error)


class PubSubReader:
    """The simulator's Pub/Sub API as the tests use it: signed in with a token of its own."""

    def __init__(self, simulator: CrmSimulator, token: str | None = None) -> None:
        self._channel = grpc.insecure_channel(simulator.pubsub_address)
        self.stub = pb_grpc.PubSubStub(self._channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            ("accesstoken", token or access_token(simulator.url)),
            ("instanceurl", simulator.url),
            ("tenantid", simulator.org_id),
        )
        self._schemas: dict[str, Any] = {}
        self._streams: list[Stream] = []

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        self._channel.close()

    def schema(self, schema_id: str) -> dict[str, Any]:
        if schema_id not in self._schemas:
            info = self.stub.GetSchema(
                pb.SchemaRequest(schema_id=schema_id), metadata=self.metadata
            )
            self._schemas[schema_id] = json.loads(info.schema_json)
        return dict(self._schemas[schema_id])

    def subscribe(
        self,
        topic: str,
        num_requested: int,
        preset: pb.ReplayPreset.ValueType = pb.EARLIEST,
        replay_id: bytes = b"",
    ) -> Stream:
        requests: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        requests.put(
            pb.FetchRequest(
                topic_name=topic,
                replay_preset=preset,
                replay_id=replay_id,
                num_requested=num_requested,
            )
        )
        stream = Stream(
            self.stub.Subscribe(_until_none(requests), metadata=self.metadata), requests
        )
        self._streams.append(stream)
        return stream

    def decode(self, consumer_event: pb.ConsumerEvent) -> Received:
        event = consumer_event.event
        schema = self.schema(event.schema_id)
        record = fastavro.schemaless_reader(
            io.BytesIO(event.payload), fastavro.parse_schema(schema), None
        )
        assert isinstance(record, dict)
        header = record["ChangeEventHeader"]
        return Received(
            consumer_event.replay_id,
            event.schema_id,
            event.id,
            record,
            field_names(header["changedFields"], schema),
            field_names(header["nulledFields"], schema),
        )

    def read(
        self,
        topic: str,
        count: int,
        preset: pb.ReplayPreset.ValueType = pb.EARLIEST,
        replay_id: bytes = b"",
    ) -> list[Received]:
        """``count`` events of ``topic`` from ``preset``, decoded, at most 100 asked at once."""
        if not count:
            return []
        stream = self.subscribe(topic, min(count, 100), preset, replay_id)
        received: list[Received] = []
        try:
            while len(received) < count:
                response = stream.next()
                received += [self.decode(event) for event in response.events]
                if response.events and len(received) < count and not response.pending_num_requested:
                    stream.request(min(count - len(received), 100))
        finally:
            stream.close()
        return received


def _until_none(requests: queue.Queue[pb.FetchRequest | None]) -> Iterator[pb.FetchRequest]:
    while (request := requests.get()) is not None:
        yield request


def retained_events(simulator: CrmSimulator, topic: str = ORDERS) -> list[Received]:
    """Every change event ``topic`` retains, oldest first."""
    retained = simulator.stats()["pubsub"]["channels"][topic]["retained"]
    reader = PubSubReader(simulator)
    try:
        return reader.read(topic, retained)
    finally:
        reader.close()


def change_events(simulator: CrmSimulator, keys: set[str], topic: str = ORDERS) -> list[Received]:
    """The retained change events of ``topic`` naming a record of ``keys``, oldest first."""
    return [
        event
        for event in retained_events(simulator, topic)
        if keys & set(event.header["recordIds"])
    ]
