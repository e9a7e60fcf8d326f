"""crm_cdc_bridge's wiring: one :class:`ChannelSubscriber` per configured channel, each with
an idempotent Kafka producer of its own (its delivery reports are handled on its own
thread), sharing the org's Pub/Sub API client and the process's health.

Ready while every channel is subscribed (this replica leads it) or standing by (another
replica does); alive while every channel's thread keeps beating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from confluent_kafka import Producer

from crm_cdc_bridge.checkpoints import TABLES
from crm_cdc_bridge.logic import channel_entity
from crm_cdc_bridge.options import Options, Preset
from crm_cdc_bridge.subscriber import ChannelSubscriber, State
from revsync.connectors.cdc import RecordChange
from revsync.connectors.pubsub import PubSubClient
from revsync.deployables import Context, SourceDeployable
from revsync.runtime.observability import Liveness
from revsync.settings import ServiceSettings, SettingsError

DELIVERY_TIMEOUT_MS = 30_000
"""A record Kafka has not acknowledged by then fails, and its channel resubscribes from the
position Kafka has everything up to."""


class CdcBridge:
    """Subscribes to every configured channel until stopped."""

    def __init__(
        self,
        *,
        channels: Sequence[str],
        pubsub: PubSubClient,
        dsn: str,
        kafka_config: Mapping[str, object],
        topics: Mapping[str, str],
        options: Options,
        liveness: Liveness,
    ) -> None:
        self.liveness = liveness
        self._stopping = threading.Event()
        producer_config = {
            **kafka_config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        }
        self.subscribers = [
            ChannelSubscriber(
                channel=channel,
                pubsub=pubsub,
                dsn=dsn,
                producer=Producer(producer_config),
                topics=topics,
                options=options,
                stopping=self._stopping,
            )
            for channel in channels
        ]

    def stop(self) -> None:
        self._stopping.set()

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Until stopped (``max_idle_s`` is for loops that drain; a bridge never does)."""
        del max_idle_s
        threads = [
            threading.Thread(target=subscriber.run, name=f"cdc {subscriber.channel}")
            for subscriber in self.subscribers
        ]
        for thread in threads:
            thread.start()
        try:
            while not self._stopping.wait(0.5):
                self.report_health()
        finally:
            self._stopping.set()
            for thread in threads:
                thread.join(timeout=60)

    def report_health(self) -> None:
        """Alive while every channel beats; ready while each is subscribed or standing by."""
        now = time.monotonic()
        if all(now - s.last_beat < self.liveness.timeout_s for s in self.subscribers):
            self.liveness.beat()
        self.liveness.ready = all(
            s.state in (State.SUBSCRIBED, State.STANDBY) for s in self.subscribers
        )


def options_from(service: ServiceSettings) -> Options:
    initial: Preset | datetime
    if service.cdc_initial.startswith("since="):
        text = service.cdc_initial.removeprefix("since=")
        try:
            initial = datetime.fromisoformat(text)
        except ValueError:
            raise SettingsError(f"REVSYNC_CDC_INITIAL: {text!r} is not an ISO 8601 time") from None
        if initial.tzinfo is None:
            raise SettingsError(f"REVSYNC_CDC_INITIAL: {text!r} names no time zone (add Z)")
    else:
        initial = Preset(service.cdc_initial)
    return Options(
        initial=initial,
        after_gap=Preset(service.cdc_after_gap),
        retention=timedelta(seconds=service.cdc_retention_s),
        max_in_flight=service.cdc_max_in_flight,
        stall_timeout_s=service.cdc_stall_timeout_s,
    )


def build(context: Context, liveness: Liveness) -> CdcBridge:
    service = context.service
    channels = [name.strip() for name in service.cdc_channels.split(",") if name.strip()]
    topics = context.catalog.change_topics
    for channel in channels:
        entity = channel_entity(channel)
        if entity is not None and entity not in topics:
            raise SettingsError(
                f"REVSYNC_CDC_CHANNELS: {channel} carries {entity} changes, and no CDC topic "
                f"of the catalog takes them (its topics take {', '.join(sorted(topics))})"
            )
    return CdcBridge(
        channels=channels,
        pubsub=context.pubsub(),
        dsn=context.settings.postgres_dsn.get_secret_value(),
        kafka_config=context.settings.kafka_config(),
        topics=topics,
        options=options_from(service),
        liveness=liveness,
    )


DEPLOYABLE = SourceDeployable(
    name="crm-cdc-bridge",
    service="crm_cdc_bridge",
    outputs=(RecordChange,),
    build=build,
    tables=TABLES,
)
