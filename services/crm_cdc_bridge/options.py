"""How a channel's subscription is configured: where a first start and a start after a gap
begin, the retention a checkpoint is held to, and the limits of one stream."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from revsync.connectors.pubsub_api import pubsub_api_pb2 as pb

MAX_IN_FLIGHT = 100
"""The Pub/Sub API's limit on events requested and not yet received, per subscription."""


class Preset(StrEnum):
    """Where a subscription starts when there is no position to resume after."""

    LATEST = "latest"
    """Events committed from now on."""
    EARLIEST = "earliest"
    """Every event the channel still retains (72 hours of change events)."""

    @property
    def replay_preset(self) -> pb.ReplayPreset.ValueType:
        return pb.LATEST if self is Preset.LATEST else pb.EARLIEST


@dataclass(frozen=True)
class Options:
    initial: Preset | datetime
    """A first start: from the latest event, the earliest retained, or the latest event
    with a reconciliation of every record changed since a time."""
    after_gap: Preset
    """Where a subscription starts once a lost position has been written as a gap."""
    retention: timedelta = timedelta(hours=72)
    """A checkpoint older than this is a gap, whatever the server says of its replay id."""
    max_in_flight: int = MAX_IN_FLIGHT
    stall_timeout_s: float = 300.0
    """A stream that sends nothing, not even a keepalive (due every 270 s), for this long
    is ended and subscribed again: it only looks alive."""
    checkpoint_interval_s: float = 1.0
    poll_interval_s: float = 1.0
    """How often a standby tries for the leadership."""
