"""Operators' dead-letter tooling against the real stack: replay, filters, dry runs, the rate
limit, resuming, the loop guard, purge, and rewinding a consumer group."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.schema_registry import SchemaRegistryClient
from typer.testing import CliRunner

from revsync.cli import app
from revsync.contracts.events import OrderCreated
from revsync.contracts.topics import watermarks
from revsync.deployables import input_decoder
from revsync.errors import BusinessRuleViolation
from revsync.ops import dead_letters as dl
from revsync.ops.dead_letters import OperationRefused
from revsync.ops.ledger import Actor
from revsync.ops.operations import Operations
from revsync.ops.replay import ReplayReport
from revsync.runtime import headers as h
from runtime_support import Fault, RuntimeWorld, read_topic, wait_for
from samples import sample_envelope, sample_event, sample_order

RUN_REPLAY = """
import sys
from confluent_kafka.schema_registry import SchemaRegistryClient
from revsync.contracts.catalog import load_catalog
from revsync.contracts.schemas import SchemaRepository
from revsync.contracts.serde import EventSerde
from revsync.deployables import input_decoder
from revsync.ops.operations import Operations
from revsync.ops.dead_letters import Selection
from revsync.ops.ledger import Actor
from revsync.settings import Settings
from pathlib import Path

settings = Settings.load()
contracts = Path(sys.argv[1])
catalog = load_catalog(contracts)
registry = SchemaRegistryClient(settings.registry_config())
serde = EventSerde(registry, catalog, SchemaRepository(contracts))
operations = Operations(
    catalog=catalog, kafka_config=settings.kafka_config(),
    dsn=settings.postgres_dsn.get_secret_value(), decoder=input_decoder(catalog, serde),
    registry=registry, actor=Actor("killed", "User:ANONYMOUS"),
)
print("started", flush=True)
operations.replays.replay(
    Selection(), everything=True, rate_per_s=float(sys.argv[2]), max_replays=3
)
"""


def order(number: int, correlation_id: str | None = None) -> OrderCreated:
    return sample_order(f"8015g0000DLT{number:06d}", correlation_id or f"corr-{number}")


@pytest.fixture
def operations(world: RuntimeWorld) -> Operations:
    registry = SchemaRegistryClient(world.settings.registry_config())
    return Operations(
        catalog=world.catalog,
        kafka_config=world.settings.kafka_config(),
        dsn=world.settings.postgres_dsn.get_secret_value(),
        decoder=input_decoder(world.catalog, world.serde()),
        registry=registry,
        actor=Actor("on-call", "User:ANONYMOUS"),
    )


def dead_lettered(world: RuntimeWorld, events: list[OrderCreated]) -> list[OrderCreated]:
    """``events`` fail for good in the consumer and land in its dead letters."""
    handler = world.handler(faults={e.crm_order_id: Fault(permanent=True) for e in events})
    world.produce(events)
    world.loop(handler).run(max_idle_s=2)
    read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), len(events))
    return events


def replayed(world: RuntimeWorld) -> list[str]:
    """The source refs of every record on the consumer's replay topic now."""
    topic = world.catalog.replay_topic(world.consumer)
    reader = Consumer(world.settings.kafka_config(**{"group.id": f"counter-{uuid.uuid4()}"}))
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        count = sum(watermarks(reader, TopicPartition(topic, p))[1] for p in partitions)
    finally:
        reader.close()
    records = read_topic(world.settings, topic, count)
    return [h.get(r.headers(), h.REPLAY_SOURCE) or "" for r in records]


def letters_of_sizes(world: RuntimeWorld, sizes: list[int]) -> list[str]:
    """Dead letters with values of ``sizes`` bytes, as the consumer loop writes them, in this
    order on one partition; their refs. Nothing decodes them: a replay needs only bytes."""
    topic = world.catalog.dead_letter_topic(world.consumer)
    producer = Producer(
        world.settings.kafka_config(**{"enable.idempotence": True, "message.max.bytes": 2_000_000})
    )
    refs: list[str] = []

    def written(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        refs.append(f"{message.topic()}:{message.partition()}:{message.offset()}")

    for number, size in enumerate(sizes):
        headers = h.failure_headers(
            [],
            error=BusinessRuleViolation("credit hold on the account"),
            source=(world.created_topic, 0, number, 0),
            consumer=world.consumer,
            service="order_sync",
            correlation_id=f"sized-{number}",
            now=datetime.now(UTC),
        )
        producer.produce(
            topic,
            key=f"8015g0000SIZ{number:06d}".encode(),
            value=b"x" * size,
            headers=headers,
            partition=0,
            on_delivery=written,
        )
    assert producer.flush(30) == 0
    assert len(refs) == len(sizes)
    return refs


def limit_record_bytes(world: RuntimeWorld, topic: str, limit: int) -> None:
    """The largest record batch the broker takes on ``topic``."""
    admin = AdminClient(world.settings.kafka_config())
    entry = ConfigEntry(
        "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

    def applied() -> bool:
        described = ConfigResource(ConfigResource.Type.TOPIC, topic)
        config = admin.describe_configs([described])[described].result(timeout=10)
        return bool(config["max.message.bytes"].value == str(limit))

    wait_for(applied)


def written_down(world: RuntimeWorld, job_id: uuid.UUID) -> set[str]:
    """The dead letters the ledger says job ``job_id`` replayed."""
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        rows = db.execute(
            'SELECT dlt_topic, partition, "offset" FROM revsync_dlt_ledger '
            "WHERE job_id = %s AND state = 'replayed'",
            (job_id,),
        ).fetchall()
    return {f"{topic}:{partition}:{offset}" for topic, partition, offset in rows}


def audit(world: RuntimeWorld, action: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        rows = db.execute(
            "SELECT actor, count, outcome FROM revsync_audit WHERE action = %s ORDER BY id",
            (action,),
        ).fetchall()
    return [(a, c, o) for a, c, o in rows]


def test_fixed_poison_records_are_replayed_and_processed_exactly_once(
    world: RuntimeWorld, operations: Operations
) -> None:
    failing = dead_lettered(world, [order(1), order(2), order(3)])
    behind = order(1, correlation_id="corr-1-later")  # waits behind the key's failure
    world.produce([behind])
    world.loop(world.handler(faults={failing[0].crm_order_id: Fault(permanent=True)})).run(
        max_idle_s=2
    )
    assert world.effects() == []

    report = operations.replays.replay(
        dl.Selection(), everything=True, rate_per_s=None, max_replays=3
    )
    assert (report.selected, report.moved, report.status) == (3, 3, "completed")
    # The cause is fixed: the same consumer, with a handler that no longer fails.
    world.loop(world.handler()).run(max_idle_s=3)

    handled = [event_id for _, event_id in world.effects()]
    assert Counter(handled) == Counter(str(e.envelope.event_id) for e in [*failing, behind])
    # The key's later event came after its replayed one, and the hold is gone.
    assert handled.index(str(behind.envelope.event_id)) > handled.index(
        str(failing[0].envelope.event_id)
    )
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        holds = db.execute(
            "SELECT count(*) FROM revsync_key_holds WHERE consumer = %s", (world.consumer,)
        ).fetchone()
    assert holds == (0,)
    # Nothing is replayed twice: the ledger knows, and a second replay finds nothing.
    assert (
        operations.replays.replay(
            dl.Selection(), everything=True, rate_per_s=None, max_replays=3
        ).selected
        == 0
    )
    assert operations.select(dl.Selection(states=frozenset({"replayed"}))) != []


def test_a_filtered_replay_moves_only_what_matches(
    world: RuntimeWorld, operations: Operations
) -> None:
    events = dead_lettered(world, [order(11), order(12), order(13)])
    wanted = events[1].crm_order_id

    report = operations.replays.replay(
        dl.Selection(keys=frozenset({wanted})), rate_per_s=None, max_replays=3
    )

    assert report.moved == 1
    records = read_topic(world.settings, world.catalog.replay_topic(world.consumer), 1)
    assert [r.key() for r in records] == [wanted.encode()]
    assert h.get(records[0].headers(), h.REPLAY_ID) == str(report.job_id)
    assert h.get(records[0].headers(), h.REPLAY_COUNT) == "1"
    still_open = {letter.key_text for letter in operations.select(dl.Selection())}
    assert still_open == {events[0].crm_order_id, events[2].crm_order_id}


def test_a_dry_run_changes_nothing(world: RuntimeWorld, operations: Operations) -> None:
    dead_lettered(world, [order(21), order(22)])
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "REVSYNC_SCHEMAS_DIR": str(world.contracts),
    }

    result = CliRunner().invoke(app, ["dlt", "replay"], env=environment)

    assert result.exit_code == 0, result.output
    assert "dry run: would replay 2 dead letters" in result.output
    assert len(operations.select(dl.Selection())) == 2
    assert read_topic(world.settings, world.catalog.replay_topic(world.consumer), 1, 3) == []
    listed = CliRunner().invoke(
        app, ["dlt", "ls", "--error-class", "business rule"], env=environment
    )
    assert listed.exit_code == 0, listed.output
    assert "2 dead letters" in listed.output


def test_the_rate_limit_holds(world: RuntimeWorld, operations: Operations) -> None:
    dead_lettered(world, [order(100 + n) for n in range(15)])

    started = time.monotonic()
    report = operations.replays.replay(
        dl.Selection(), everything=True, rate_per_s=10, max_replays=3
    )
    elapsed = time.monotonic() - started

    assert report.moved == 15
    # 15 records at 10/s: the first at once, the last 1.4 s later at the earliest.
    assert elapsed >= 1.4


def test_an_interrupted_replay_resumed_replays_nothing_twice(
    world: RuntimeWorld, operations: Operations
) -> None:
    dead_lettered(world, [order(200 + n) for n in range(40)])
    environment = {
        **os.environ,
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
    }
    replaying = subprocess.Popen(
        [sys.executable, "-c", RUN_REPLAY, str(world.contracts), "20"],
        env=environment,
        stdout=subprocess.PIPE,
    )
    assert replaying.stdout is not None
    assert replaying.stdout.readline().strip() == b"started"
    wait_for(lambda: len(replayed(world)) >= 10, timeout_s=30)
    replaying.send_signal(signal.SIGKILL)  # no chance to write down what it sent last
    replaying.wait()
    replaying.stdout.close()
    job = next(job for job in operations.replays.jobs() if job.actor == "killed")  # the latest
    assert job.status == "running"
    with pytest.raises(OperationRefused, match="not interrupted"):
        operations.replays.resume(job.id, max_replays=3)  # it might still be running
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        db.execute(
            "UPDATE revsync_replay_jobs SET updated_at = now() - interval '1 minute' WHERE id = %s",
            (job.id,),
        )

    report = operations.replays.resume(job.id, max_replays=3)

    assert report.status == "completed"
    assert report.moved == 40
    sources = replayed(world)
    assert len(sources) == 40
    assert Counter(sources).most_common(1)[0][1] == 1, "a dead letter was replayed twice"
    assert operations.replays.job(job.id).remaining == 0


def test_what_kafka_refuses_half_way_is_not_written_down_and_goes_with_the_next_replay(
    world: RuntimeWorld, operations: Operations
) -> None:
    """Kafka takes some records of a job and refuses others: the ledger names exactly those
    it took, the job fails, and a later replay sends the rest, nothing twice."""
    refs = letters_of_sizes(world, [100] * 9 + [8000] + [100] * 4)
    replay_topic = world.catalog.replay_topic(world.consumer)
    limit_record_bytes(world, replay_topic, 4096)  # the large letter's record is refused
    actor = operations.replays.actor = Actor(f"on-call-{uuid.uuid4().hex[:6]}", "User:ANONYMOUS")

    # Slowly, so that Kafka has taken the first letters before the large one goes.
    with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
        operations.replays.replay(dl.Selection(), everything=True, rate_per_s=20, max_replays=3)

    [job] = [job for job in operations.replays.jobs() if job.actor == actor.name]
    taken = replayed(world)
    assert job.status == "failed"
    assert refs[9] not in taken
    assert 0 < len(taken) < len(refs)
    assert written_down(world, job.id) == set(taken)
    assert job.moved == len(taken)

    limit_record_bytes(world, replay_topic, 1_048_588)  # the broker's default
    report = operations.replays.replay(
        dl.Selection(), everything=True, rate_per_s=None, max_replays=3
    )

    assert report.moved == len(refs) - len(taken)
    assert Counter(replayed(world)) == Counter(refs)
    assert operations.select(dl.Selection()) == []


def test_a_cancelled_replay_stops_and_what_it_sent_stays_written_down(
    world: RuntimeWorld, operations: Operations
) -> None:
    refs = letters_of_sizes(world, [100] * 30)
    actor = operations.replays.actor = Actor(f"on-call-{uuid.uuid4().hex[:6]}", "User:ANONYMOUS")
    reports: list[ReplayReport] = []
    replaying = threading.Thread(
        target=lambda: reports.append(
            operations.replays.replay(dl.Selection(), everything=True, rate_per_s=10, max_replays=3)
        )
    )
    replaying.start()
    wait_for(lambda: len(replayed(world)) >= 5)
    [job] = [job for job in operations.replays.jobs() if job.actor == actor.name]

    operations.replays.cancel(job.id)
    replaying.join(timeout=30)

    [report] = reports
    sent = replayed(world)
    assert report.status == operations.replays.job(job.id).status == "cancelled"
    assert 5 <= report.moved == len(sent) < len(refs)
    assert written_down(world, job.id) == set(sent)
    rest = operations.replays.replay(
        dl.Selection(), everything=True, rate_per_s=None, max_replays=3
    )
    assert rest.moved == len(refs) - len(sent)
    assert Counter(replayed(world)) == Counter(refs)


def test_a_replay_failing_mid_send_writes_down_what_kafka_took_before(
    world: RuntimeWorld, operations: Operations
) -> None:
    """A record the producer refuses outright (larger than it may send) stops the job: the
    letters sent before it, still in flight then, are waited for and written down, so that
    the next replay does not send them again."""
    dead_letters = world.catalog.dead_letter_topic(world.consumer)
    limit_record_bytes(world, dead_letters, 2_000_000)
    refs = letters_of_sizes(world, [100] * 10 + [1_500_000] + [100] * 3)
    actor = operations.replays.actor = Actor(f"on-call-{uuid.uuid4().hex[:6]}", "User:ANONYMOUS")

    with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
        operations.replays.replay(dl.Selection(), everything=True, rate_per_s=None, max_replays=3)

    [job] = [job for job in operations.replays.jobs() if job.actor == actor.name]
    assert (job.status, job.moved) == ("failed", 10)
    assert written_down(world, job.id) == set(refs[:10])
    assert sorted(replayed(world)) == sorted(refs[:10])

    rest = frozenset(refs[11:])
    report = operations.replays.replay(dl.Selection(refs=rest), rate_per_s=None, max_replays=3)

    assert report.moved == 3
    assert Counter(replayed(world)) == Counter(refs[:10] + refs[11:])
    assert [letter.ref for letter in operations.select(dl.Selection())] == [refs[10]]


def test_the_loop_guard_quarantines_a_record_that_keeps_failing(
    world: RuntimeWorld, operations: Operations
) -> None:
    [poison] = dead_lettered(world, [order(300)])
    still_failing = world.handler(faults={poison.crm_order_id: Fault(permanent=True)})
    for replays in (1, 2):
        assert (
            operations.replays.replay(
                dl.Selection(), everything=True, rate_per_s=None, max_replays=2
            ).moved
            == 1
        )
        world.loop(still_failing).run(max_idle_s=2)

        def failed_again(times: int = replays) -> bool:
            letters = operations.select(dl.Selection())
            return any(letter.replay_count == times for letter in letters)

        wait_for(failed_again)

    key = poison.crm_order_id.encode()
    assert [held.key for held in operations.holds([world.consumer], [key])] == [key]
    report = operations.replays.replay(
        dl.Selection(), everything=True, rate_per_s=None, max_replays=2
    )

    assert (report.moved, report.quarantined) == (0, 1)
    assert operations.holds([world.consumer], [key]) == []  # released with the quarantine
    [quarantined] = operations.select(dl.Selection(states=frozenset({"quarantined"})))
    assert quarantined.replay_count == 2
    assert operations.select(dl.Selection()) == []
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        kept = db.execute(
            'SELECT value FROM revsync_dlt_archive WHERE dlt_topic = %s AND "offset" = %s',
            (quarantined.dlt_topic, quarantined.offset),
        ).fetchone()
    assert kept is not None
    assert bytes(kept[0]) == quarantined.value


def test_a_purge_takes_records_out_of_reach_and_leaves_an_audit_row(
    world: RuntimeWorld, operations: Operations
) -> None:
    events = dead_lettered(world, [order(400), order(401)])
    tag = f"on-call-{uuid.uuid4().hex[:6]}"
    operations.actor = Actor(tag, "User:ANONYMOUS")

    purged = operations.purge(dl.Selection(keys=frozenset({events[0].crm_order_id})))

    assert purged == 1
    assert [letter.key_text for letter in operations.select(dl.Selection())] == [
        events[1].crm_order_id
    ]
    assert (
        operations.replays.replay(
            dl.Selection(keys=frozenset({events[0].crm_order_id})), rate_per_s=None, max_replays=3
        ).selected
        == 0
    )
    assert (tag, 1, "purged") in audit(world, "purge")


def test_a_purge_or_an_archive_releases_the_key_its_letter_held(
    world: RuntimeWorld, operations: Operations
) -> None:
    purged, archived, kept = dead_lettered(world, [order(410), order(411), order(412)])
    later = [order(n, correlation_id=f"corr-{n}-later") for n in (410, 411, 412)]
    world.produce(later)
    world.loop(world.handler()).run(max_idle_s=2)
    assert world.effects() == []  # each waits behind its key's dead letter

    operations.purge(dl.Selection(keys=frozenset({purged.crm_order_id})))
    operations.archive(dl.Selection(keys=frozenset({archived.crm_order_id})))
    world.loop(world.handler()).run(max_idle_s=3)

    assert sorted(world.effects()) == sorted(
        (e.crm_order_id, str(e.envelope.event_id)) for e in later[:2]
    )
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        held = db.execute(
            "SELECT convert_from(record_key, 'UTF8') FROM revsync_key_holds WHERE consumer = %s",
            (world.consumer,),
        ).fetchall()
    assert held == [(kept.crm_order_id,)]


def test_an_export_masks_what_it_must(
    world: RuntimeWorld, operations: Operations, tmp_path: Path
) -> None:
    dead_lettered(world, [order(500)])
    target = tmp_path / "letters.jsonl"

    assert operations.export(dl.Selection(), target, frozenset({"street"}), raw=False) == 1

    text = target.read_text()
    assert '"street": "***"' in text
    assert "1 Market St" not in text
    assert '"error_class": "business rule"' in text
    assert target.stat().st_mode & 0o777 == 0o600  # whatever the umask


def test_the_tools_mask_headers_by_name_and_an_error_quoting_what_the_payload_masks(
    world: RuntimeWorld, operations: Operations, tmp_path: Path
) -> None:
    """No customer data in errors: a dead letter written before revsync stopped quoting data
    (or by another system) shows neither the header nor the error's copy of the address."""
    event = order(530)
    street = event.shipping_address.street
    world.produce([event], headers=[("crm.Email", b"ap@acme.example")])
    fault = Fault(permanent=True, message=f"ERP refused the ship-to {street}")
    world.loop(world.handler(faults={event.crm_order_id: fault})).run(max_idle_s=2)
    topic = world.catalog.dead_letter_topic(world.consumer)
    (letter,) = read_topic(world.settings, topic, 1)
    assert street.encode() in (letter.value() or b"")  # the record itself, as replay needs it
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "REVSYNC_SCHEMAS_DIR": str(world.contracts),
        "COLUMNS": "250",
    }
    target = tmp_path / "letters.jsonl"

    operations.export(dl.Selection(), target, frozenset({"street", "email"}), raw=False)
    shown = CliRunner().invoke(
        app, ["dlt", "show", f"{topic}:{letter.partition()}:{letter.offset()}"], env=environment
    )
    listed = CliRunner().invoke(app, ["dlt", "ls"], env=environment)

    exported = target.read_text()
    assert '"error": "ERP refused the ship-to ***"' in exported
    assert '"crm.Email": "***"' in exported
    for output in (exported, shown.output, listed.output):
        assert street not in output
        assert "ap@acme.example" not in output
    assert shown.exit_code == listed.exit_code == 0, shown.output + listed.output
    assert "ERP refused the ship-to ***" in shown.output
    assert "ERP refused the ship-to ***" in listed.output


def test_a_raw_export_is_recorded_as_such_and_replaces_a_file_readable_by_others(
    world: RuntimeWorld, operations: Operations, tmp_path: Path
) -> None:
    dead_lettered(world, [order(510)])
    target = tmp_path / "letters.jsonl"
    target.write_text("old")
    target.chmod(0o644)

    assert operations.export(dl.Selection(), target, frozenset(), raw=True) == 1

    assert target.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        (outcome,) = db.execute(
            "SELECT outcome FROM revsync_audit WHERE action = 'export' ORDER BY id DESC LIMIT 1"
        ).fetchone() or ("",)
    assert outcome == f"to {target}, raw: key and value bytes unmasked"


def test_a_purge_archive_or_replay_without_a_filter_needs_all(
    world: RuntimeWorld, operations: Operations
) -> None:
    dead_lettered(world, [order(520), order(521)])

    for act in (operations.purge, operations.archive):
        with pytest.raises(dl.OperationRefused, match="say --all"):
            act(dl.Selection())
    with pytest.raises(dl.OperationRefused, match="say --all"):
        operations.replays.replay(dl.Selection(), rate_per_s=None, max_replays=3)
    assert len(operations.select(dl.Selection())) == 2  # nothing was purged, archived, sent

    assert operations.purge(dl.Selection(), everything=True) == 2
    assert operations.select(dl.Selection()) == []


def test_show_prints_what_another_system_wrote_as_text_and_masks_by_path(
    world: RuntimeWorld,
) -> None:
    event = order(600)
    hostile = "ERP said [/x] [bold]no[/] \x1b[2J\x1b]0;owned\x07 done"
    world.produce([event])
    world.loop(
        world.handler(faults={event.crm_order_id: Fault(permanent=True, message=hostile)})
    ).run(max_idle_s=2)
    topic = world.catalog.dead_letter_topic(world.consumer)
    (letter,) = read_topic(world.settings, topic, 1)
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "REVSYNC_SCHEMAS_DIR": str(world.contracts),
        # A path into one address, a compound field whole, in cases of their own.
        "REVSYNC_DLT_MASK_FIELDS": "SHIPPING_ADDRESS.Street,Billing_Address",
        "COLUMNS": "250",
    }

    shown = CliRunner().invoke(
        app, ["dlt", "show", f"{topic}:{letter.partition()}:{letter.offset()}"], env=environment
    )

    assert shown.exit_code == 0, shown.output
    assert "ERP said [/x] [bold]no[/] \\x1b[2J\\x1b]0;owned\\x07 done" in shown.output
    assert "\x1b" not in shown.output
    assert '"billing_address": "***"' in shown.output
    assert '"street": "***"' in shown.output
    assert "1 Market St" not in shown.output
    assert '"city": "San Francisco"' in shown.output  # the shipping address's, not masked


def test_every_read_an_operator_makes_is_audited(world: RuntimeWorld) -> None:
    event = order(610)
    dead_lettered(world, [event])
    topic = world.catalog.dead_letter_topic(world.consumer)
    (letter,) = read_topic(world.settings, topic, 1)
    ref = f"{topic}:{letter.partition()}:{letter.offset()}"
    actor = f"auditor-{uuid.uuid4().hex[:8]}"  # the audit trail outlives the test
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "REVSYNC_SCHEMAS_DIR": str(world.contracts),
    }
    for arguments in (
        ["dlt", "ls", "--key", event.crm_order_id],
        ["dlt", "show", ref],
        ["dlt", "status"],
        ["holds", "ls", "--key", event.crm_order_id],
    ):
        result = CliRunner().invoke(app, [*arguments, "--actor", actor], env=environment)
        assert result.exit_code == 0, result.output

    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        rows = db.execute(
            "SELECT action, count, outcome, filter FROM revsync_audit WHERE actor = %s ORDER BY id",
            (actor,),
        ).fetchall()
    assert [(action, outcome) for action, _, outcome, _ in rows] == [
        ("list", "read"),
        ("show", "read"),
        ("status", "read"),
        ("list holds", "read"),
    ]
    assert rows[0][1] == rows[1][1] == 1
    assert rows[1][3] == {"refs": [ref]}


def test_a_rewind_refuses_a_live_group_and_reconsumes_an_idle_one(
    world: RuntimeWorld, operations: Operations
) -> None:
    events = [order(600), order(601)]
    world.produce(events)
    loop = world.loop(world.handler())
    runner = threading.Thread(target=loop.run, kwargs={"max_idle_s": 30})
    runner.start()
    try:
        wait_for(lambda: len(world.effects()) == 2)
        with pytest.raises(OperationRefused, match="live member"):
            operations.rewind(world.consumer, when=None, offset=0, dry_run=False)
    finally:
        loop.stop()
        runner.join(timeout=60)

    positions = operations.rewind(world.consumer, when=None, offset=0, dry_run=False)

    assert set(positions.values()) == {0}
    world.loop(world.handler()).run(max_idle_s=2)
    # Every input consumed again; the inbox makes the work already done a no-op.
    assert len(world.effects()) == 2


def test_an_operator_lists_and_releases_a_held_key_through_the_cli(world: RuntimeWorld) -> None:
    key = f"8015g0000{uuid.uuid4().hex[:9].upper()}"
    first, second = (
        sample_event(
            OrderCreated,
            crm_order_id=key,
            envelope=sample_envelope(OrderCreated.event_type, correlation_id=f"held-{n}"),
        )
        for n in range(2)
    )
    world.produce([first, second])
    world.loop(world.handler(faults={key: Fault(permanent=True)})).run(max_idle_s=2)
    environment = {
        "REVSYNC_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers,
        "REVSYNC_SCHEMA_REGISTRY_URL": world.settings.schema_registry_url,
        "REVSYNC_POSTGRES_DSN": world.settings.postgres_dsn.get_secret_value(),
        "REVSYNC_SCHEMAS_DIR": str(world.contracts),
        "COLUMNS": "250",  # one table row a line
    }

    def revsync(*arguments: str) -> str:
        result = CliRunner().invoke(app, list(arguments), env=environment)
        assert result.exit_code == 0, result.output
        return result.output

    listed = revsync("holds", "ls", "--key", key)
    assert "1 held keys" in listed
    row = next(line for line in listed.splitlines() if key in line)
    assert world.consumer in row
    assert world.created_topic in row
    assert f"{world.created_topic}:" in row  # the blocker, topic:partition:offset
    assert " 1 " in row  # one record parked behind it

    refused = CliRunner().invoke(app, ["holds", "release", "--yes"], env=environment)
    assert refused.exit_code == 2
    assert "name the keys or services" in refused.output

    assert "would release 1 held keys" in revsync("holds", "release", "--key", key)
    world.loop(world.handler()).run(max_idle_s=2)
    assert world.effects() == []  # a dry run: still held

    released = revsync("holds", "release", "--key", key, "--yes", "--actor", "on-call")
    assert "released 1 held keys (audited)" in released
    world.loop(world.handler()).run(max_idle_s=3)
    assert world.effects() == [(key, str(second.envelope.event_id))]
    assert "0 held keys" in revsync("holds", "ls", "--key", key)
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        audited = db.execute(
            "SELECT actor, count, outcome FROM revsync_audit WHERE action = 'release holds' "
            "AND filter -> 'keys' ? %s ORDER BY id",
            (key,),
        ).fetchall()
    assert audited == [(getpass.getuser(), 1, "dry run"), ("on-call", 1, "released")]


def test_a_dry_run_is_an_audited_read_and_a_replay_is_on_record_before_it_sends(
    world: RuntimeWorld, operations: Operations
) -> None:
    event = order(530)
    dead_lettered(world, [event])
    operations.actor = operations.replays.actor = Actor(
        f"on-call-{uuid.uuid4().hex[:6]}", "User:ANONYMOUS"
    )
    selection = dl.Selection(keys=frozenset({event.crm_order_id}))

    previewed = operations.preview("purge", selection)
    report = operations.replays.replay(selection, rate_per_s=None, max_replays=3)

    assert len(previewed) == 1
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as db:
        rows = db.execute(
            "SELECT action, count, outcome, job_id FROM revsync_audit WHERE actor = %s ORDER BY id",
            (operations.actor.name,),
        ).fetchall()
    assert rows == [
        ("purge dry run", 1, "read", None),
        ("replay", 1, "started", report.job_id),
        ("replay", 1, "completed: 1 replayed, 0 quarantined", report.job_id),
    ]
