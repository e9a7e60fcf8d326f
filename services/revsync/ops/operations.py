"""What an operator does with dead letters — select, replay (see :mod:`revsync.ops.replay`),
purge, archive, export — and the rewind of a consumer group; every action recorded in the
audit trail.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.contracts.catalog import Catalog, load_catalog
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.contracts.topics import watermarks
from revsync.migrations import ensure
from revsync.ops import dead_letters as dl
from revsync.ops import exceptions, ledger, masking
from revsync.ops.replay import Job, ReplayJobs
from revsync.ops.storage import TABLES
from revsync.runtime import headers as h
from revsync.runtime.breaker import request_resume
from revsync.runtime.holds import RELEASED, HeldKey, held_keys, release
from revsync.runtime.records import Decoder
from revsync.security import kafka_identity
from revsync.settings import Settings


class Operations:
    """The operators' tooling over one catalog, its Kafka cluster and its database."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        kafka_config: dict[str, Any],
        dsn: str,
        decoder: Decoder,
        registry: SchemaRegistryClient,
        actor: ledger.Actor,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.kafka_config = kafka_config
        self.dsn = dsn
        self.decoder = decoder
        self.actor = actor
        with psycopg.connect(dsn, autocommit=True) as connection:
            ensure(connection, TABLES)
        self.replays = ReplayJobs(
            catalog=catalog,
            kafka_config=kafka_config,
            dsn=dsn,
            actor=actor,
            select=lambda selection: self.select(selection, payloads=False),
        )

    @classmethod
    def from_settings(cls, settings: Settings, name: str) -> Operations:
        """The tooling with ``settings``' endpoints and credentials, acting for ``name``."""
        from revsync.deployables import input_decoder

        catalog = load_catalog(settings.schemas_dir)
        registry = SchemaRegistryClient(settings.registry_config())
        serde = EventSerde(registry, catalog, SchemaRepository(settings.schemas_dir))
        return cls(
            catalog=catalog,
            kafka_config=settings.kafka_config(),
            dsn=settings.postgres_dsn.get_secret_value(),
            decoder=input_decoder(catalog, serde),
            registry=registry,
            actor=ledger.Actor(name, kafka_identity(settings.kafka)),
        )

    # --- reading -----------------------------------------------------------------------------

    def select(self, selection: dl.Selection, *, payloads: bool = True) -> list[dl.DeadLetter]:
        """The dead letters ``selection`` matches, oldest first per topic and partition, with
        their payloads decoded; without ``payloads`` (to act on them, which takes their bytes
        alone), decoded only if the selection names event types."""
        topics = dl.dead_letter_topics(self.catalog, selection.services)
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            letters = dl.with_state(connection, dl.scan(self.kafka_config, topics))
            if payloads or selection.event_types:
                letters = dl.decoded(letters, self.decoder)
            chosen = [letter for letter in letters if selection.matches(letter)]
        return sorted(
            chosen, key=lambda letter: (letter.dlt_topic, letter.partition, letter.offset)
        )

    def list_letters(self, selection: dl.Selection) -> list[dl.DeadLetter]:
        """What ``selection`` matches, as an operator reads it (``dlt ls``): audited, since
        dead letters carry customer data."""
        letters = self.select(selection)
        self._audit_read("list", selection.as_json(), len(letters))
        return letters

    def show_letter(self, ref: str) -> dl.DeadLetter:
        """One dead letter, as an operator reads it (``dlt show``): audited."""
        letter = self.find(ref)
        self._audit_read("show", {"refs": [ref]}, 1)
        return letter

    def preview(self, action: str, selection: dl.Selection) -> list[dl.DeadLetter]:
        """What ``action`` would take (a dry run): read, and audited as a read."""
        letters = self.select(selection)
        self._audit_read(f"{action} dry run", selection.as_json(), len(letters))
        return letters

    def _audit_read(self, action: str, selection: dict[str, Any], count: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            ledger.audit(connection, self.actor, action, selection, count, "read")

    def find(self, ref: str) -> dl.DeadLetter:
        found = self.select(dl.Selection(refs=frozenset({ref}), states=frozenset(dl.STATES)))
        if not found:
            raise dl.OperationRefused(f"no dead letter {ref} (topic:partition:offset)")
        return found[0]

    # --- purge, archive, export ----------------------------------------------------------------

    def purge(self, selection: dl.Selection, *, everything: bool = False) -> int:
        """Mark the selection dealt with; a selection without a filter only with
        ``everything`` (``--all``), so that a forgotten filter purges nothing."""
        dl.refuse_unfiltered("purge", selection, everything)
        letters = self.select(selection, payloads=False)
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            ledger.record(connection, None, [letter.ref for letter in letters], "purged")
            ledger.release_holds(connection, letters)
            ledger.audit(
                connection, self.actor, "purge", selection.as_json(), len(letters), "purged"
            )
        return len(letters)

    def archive(self, selection: dl.Selection, *, everything: bool = False) -> int:
        dl.refuse_unfiltered("archive", selection, everything)
        letters = self.select(selection, payloads=False)
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            ledger.archive(connection, letters)
            ledger.record(connection, None, [letter.ref for letter in letters], "archived")
            ledger.release_holds(connection, letters)
            ledger.audit(
                connection, self.actor, "archive", selection.as_json(), len(letters), "archived"
            )
        return len(letters)

    def export(
        self, selection: dl.Selection, path: Path, mask_fields: frozenset[str], raw: bool
    ) -> int:
        """The selection as JSON Lines: error, headers and payload (masked), and with ``raw``
        the key and value bytes (base64), which may carry what masking hides."""
        letters = self.select(selection)
        outcome = f"to {path}" + (", raw: key and value bytes unmasked" if raw else "")
        # The audit row first, committed only once the file is written: no export without
        # its row, and no row for an export that failed.
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            ledger.audit(
                connection, self.actor, "export", selection.as_json(), len(letters), outcome
            )
            # Readable by its owner alone, whatever the umask: it holds customer data.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w") as out:
                for letter in letters:
                    kind, payload = dl.payload(letter, self.registry)
                    line = export_line(letter, kind, payload, mask_fields, raw)
                    out.write(json.dumps(line) + "\n")
        return len(letters)

    # --- held keys -------------------------------------------------------------------------------

    def holds(self, consumers: Collection[str], keys: Collection[bytes]) -> list[HeldKey]:
        """The held keys (``holds ls``): audited with the read, since keys name orders."""
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            held = held_keys(connection, consumers, keys)
            chosen = {
                "consumers": sorted(consumers),
                "keys": sorted(key.decode(errors="replace") for key in keys),
            }
            ledger.audit(connection, self.actor, "list holds", chosen, len(held), "read")
        return held

    def replay_jobs(self, job_id: uuid.UUID | None) -> list[Job]:
        """Replay jobs, one or the latest (``dlt status``): audited like every command."""
        jobs = self.replays.jobs(job_id)
        self._audit_read("status", {"job": str(job_id) if job_id else None}, len(jobs))
        return jobs

    def release_holds(
        self, consumers: Collection[str], keys: Collection[bytes], *, dry_run: bool
    ) -> list[HeldKey]:
        """Release the matching held keys, whatever blocks them: their parked records are
        handled next, in order. Refused without a filter; audited with what it released."""
        if not consumers and not keys:
            raise dl.OperationRefused("name the keys or services whose holds to release")
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            found = [
                held for held in held_keys(connection, consumers, keys) if held.blocker != RELEASED
            ]
            if not dry_run:
                for held in found:
                    release(connection, held.consumer, held.key, held.source_topic, held.blocker)
            ledger.audit(
                connection,
                self.actor,
                "release holds",
                {
                    "consumers": sorted(consumers),
                    "keys": sorted(key.decode(errors="replace") for key in keys),
                    "released": [f"{k.consumer}/{k.key.decode(errors='replace')}" for k in found],
                },
                len(found),
                "dry run" if dry_run else "released",
            )
        return found

    # --- the exception worklist ---------------------------------------------------------------

    def worklist(
        self, filters: exceptions.Filters, ages: Mapping[str, timedelta], limit: int
    ) -> exceptions.Page:
        """The first ``limit`` items of the worklist ``filters`` select."""
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            return exceptions.worklist(connection, filters, ages, limit=limit)

    def exception_desk(
        self, ages: Mapping[str, timedelta], max_replays: int
    ) -> exceptions.ExceptionDesk:
        """The worklist's actions for this operator; a dead letter's retry is this tooling's
        replay job, the one ``revsync dlt replay`` runs (no rate limit)."""
        return exceptions.ExceptionDesk(
            catalog=self.catalog,
            kafka_config=self.kafka_config,
            dsn=self.dsn,
            actor=self.actor,
            ages=ages,
            replay=lambda selection: self.replays.replay(
                selection, rate_per_s=None, max_replays=max_replays
            ),
        )

    # --- circuit breakers -----------------------------------------------------------------------

    def resume_consumer(self, consumer: str) -> None:
        """Close ``consumer``'s open circuit breaker: its running members take records again
        within a second. Refused if it is not open; audited."""
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            if not request_resume(connection, consumer, self.actor.name):
                raise dl.OperationRefused(f"{consumer}'s circuit breaker is not open")
            ledger.audit(
                connection, self.actor, "resume consumer", {"consumer": consumer}, 1, "resumed"
            )

    # --- rewinding a consumer group --------------------------------------------------------------

    def rewind(
        self, consumer: str, *, when: datetime | None, offset: int | None, dry_run: bool
    ) -> dict[tuple[str, int], int]:
        """Move ``consumer``'s committed offsets on its input topics back to ``when`` (or to
        ``offset`` on every partition). Refused while the group has live members: they would
        overwrite it with their own commits."""
        admin = AdminClient(self.kafka_config)
        described = admin.describe_consumer_groups([consumer])[consumer].result()
        if described.members:
            raise dl.OperationRefused(
                f"consumer group {consumer} has {len(described.members)} live member(s); "
                "stop the service first"
            )
        inputs = [topic.name for topic in self.catalog.consumed_by(consumer)]
        positions = self._positions(inputs, when, offset)
        # The audit row commits only once the offsets moved: none without the other.
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            ledger.audit(
                connection,
                self.actor,
                "rewind",
                {
                    "consumer": consumer,
                    "from": when.isoformat() if when else offset,
                    "topics": inputs,
                },
                len(positions),
                "dry run" if dry_run else "offsets moved",
            )
            if not dry_run:
                partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
                future = admin.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(consumer, partitions)]
                )[consumer]
                future.result()
        return positions

    def _positions(
        self, topics: Sequence[str], when: datetime | None, offset: int | None
    ) -> dict[tuple[str, int], int]:
        consumer = Consumer({**self.kafka_config, "group.id": f"revsync-ops-{uuid.uuid4()}"})
        try:
            metadata = consumer.list_topics(timeout=10).topics
            wanted = [
                TopicPartition(
                    topic, partition, int(when.timestamp() * 1000) if when else (offset or 0)
                )
                for topic in topics
                for partition in metadata[topic].partitions
            ]
            if when is None:
                return {(tp.topic, tp.partition): tp.offset for tp in wanted}
            found = consumer.offsets_for_times(wanted, timeout=10)
            positions = {}
            for tp in found:
                if tp.offset < 0:  # nothing at or after the time: the end
                    tp.offset = watermarks(consumer, tp)[1]
                positions[(tp.topic, tp.partition)] = tp.offset
            return positions
        finally:
            consumer.close()


def grouped(letters: Iterable[dl.DeadLetter]) -> dict[str, Counter[str]]:
    """Counts by error class, source topic, region and product line."""
    groups: dict[str, Counter[str]] = {
        "error class": Counter(),
        "source topic": Counter(),
        "region": Counter(),
        "product line": Counter(),
    }
    for letter in letters:
        groups["error class"][letter.error_class] += 1
        groups["source topic"][letter.source_topic] += 1
        groups["region"][letter.region or "-"] += 1
        for line in letter.product_lines or ("-",):
            groups["product line"][line] += 1
    return groups


def export_line(
    letter: dl.DeadLetter, kind: str, payload: Any, mask_fields: frozenset[str], raw: bool
) -> dict[str, Any]:
    shown, headers = masking.masked_letter(letter, payload, mask_fields)
    told = dict(headers)
    line: dict[str, Any] = {
        "ref": letter.ref,
        "consumer": letter.consumer,
        "state": letter.state,
        "key": letter.key_text,
        "error_class": letter.error_class,
        "error": told.get(h.ERROR_MESSAGE),
        "headers": told,
        "payload_kind": kind,
        "payload": shown,
    }
    if raw:
        line["raw_key"] = base64.b64encode(letter.key or b"").decode()
        line["raw_value"] = base64.b64encode(letter.value or b"").decode()
    return line
