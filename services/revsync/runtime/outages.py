"""Dependency outages: a lost PostgreSQL, broker or schema registry is waited out with
backoff, never the end of a service; while it lasts the service is alive but not ready."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException

from revsync.contracts.serde import RegistryUnavailable
from revsync.runtime.observability import Backoff, Liveness

log = logging.getLogger(__name__)
T = TypeVar("T")
DEPENDENCY_ERRORS = (psycopg.Error, KafkaException, RegistryUnavailable)
"""What a lost PostgreSQL, broker or registry raises."""
KAFKA = "kafka"
DEPENDENCIES = ("postgresql", KAFKA, "schema-registry")


def dependency_of(error: BaseException) -> str:
    """The dependency a :data:`DEPENDENCY_ERRORS` error came from."""
    if isinstance(error, psycopg.Error):
        return DEPENDENCIES[0]
    if isinstance(error, RegistryUnavailable):
        return DEPENDENCIES[2]
    return KAFKA


class Outages:
    """One service's dependency outages: reported to its liveness, waited out with backoff
    while ``keep_group`` keeps its consumer group membership, until ``stopping`` is set."""

    def __init__(
        self, liveness: Liveness, stopping: threading.Event, keep_group: Callable[[], None]
    ) -> None:
        self.liveness = liveness
        self.stopping = stopping
        self.keep_group = keep_group
        self._backoff = Backoff()

    def until_up(self, attempt: Callable[[], T]) -> T:
        """``attempt`` until it succeeds, waiting out the dependency it needs; a stop request
        during the wait ends it with the last error."""
        backoff = Backoff()
        while True:
            try:
                return attempt()
            except DEPENDENCY_ERRORS as error:
                self.liveness.outage(dependency_of(error), error)
                if self.stopping.is_set():
                    raise
                self.pause(backoff.next_wait())

    def wait_out(self, error: BaseException) -> None:
        """Work failed on a dependency: not ready, and one backoff step before trying again."""
        self.liveness.outage(dependency_of(error), error)
        self.pause(self._backoff.next_wait())

    def succeeded(self) -> None:
        """Work that needs every dependency went through: they are all back."""
        self._backoff.reset()
        self.liveness.recovered(*DEPENDENCIES)

    def pause(self, seconds: float) -> None:
        """Sleep while staying alive and in the group."""
        until = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < until:
            self.liveness.beat()
            self.keep_group()
            time.sleep(min(0.2, max(until - time.monotonic(), 0)))

    def on_kafka_error(self, error: KafkaError) -> None:
        """The Kafka client's own reports (its ``error_cb``): with every broker out, not ready
        until one answers again; librdkafka reconnects by itself."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.liveness.outage(KAFKA, error)
        elif error.fatal():
            log.error("kafka client: %s", error)

    def check_kafka(self, consumer: Consumer) -> None:
        """After the brokers were out, whether one answers again; raises while none does."""
        if self.liveness.is_out(KAFKA):
            consumer.list_topics(timeout=5)
            self.liveness.recovered(KAFKA)
