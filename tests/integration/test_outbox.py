"""The outbox relay against the real stack: every row published, in per-key order, by one
leader among replicas; late-committing rows not skipped; NOTIFY wake-ups; crash recovery."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY
from psycopg import sql

from revsync.runtime import headers as h
from revsync.runtime.relay import OutboxRelay, OutboxRow, OutboxTable
from revsync.settings import Settings
from revsync_devstack.stack_check import ensure_topic
from runtime_support import prepare_database, read_topic, wait_for


@pytest.fixture
def outbox(settings: Settings) -> Iterator[tuple[OutboxTable, str]]:
    """A private outbox table shaped like revsync's, with NOTIFY, and a topic for it."""
    prepare_database(settings)
    tag = uuid.uuid4().hex[:8]
    # Marks published rows (published_at) instead of deleting them, as an ERP may want.
    table = OutboxTable(
        table=f"test_outbox_{tag}",
        notify_channel=f"test_outbox_{tag}",
        published_column="published_at",
    )
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        db.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE revsync_outbox INCLUDING ALL, published_at timestamptz)"
            ).format(sql.Identifier(table.table))
        )
        db.execute(
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_notify({channel}, ''); RETURN NULL; END $$"
            ).format(
                function=sql.Identifier(f"notify_{tag}"), channel=sql.Literal(table.notify_channel)
            )
        )
        db.execute(
            sql.SQL(
                "CREATE TRIGGER notify AFTER INSERT ON {table} FOR EACH STATEMENT "
                "EXECUTE FUNCTION {function}()"
            ).format(table=sql.Identifier(table.table), function=sql.Identifier(f"notify_{tag}"))
        )
    topic = f"tests.outbox.{tag}"
    ensure_topic(settings, topic, partitions=3)
    yield table, topic
    admin = AdminClient(settings.kafka_config())
    admin.delete_topics([topic])[topic].result(timeout=30)


def insert_rows(
    connection: psycopg.Connection[Any],
    table: OutboxTable,
    topic: str,
    rows: list[tuple[str, int]],
    service: str = "order_sync",
) -> None:
    """Rows (key, n) of ``service`` whose payload says which they are."""
    connection.cursor().executemany(
        sql.SQL(
            "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, topic, headers, "
            "service) VALUES (%s, 'order', %s, 'io.revsync.order.created', %s, %s, %s, %s)"
        ).format(sql.Identifier(table.table)),
        [
            (
                uuid.uuid4(),
                key,
                json.dumps([key, n]).encode(),
                topic,
                json.dumps(h.to_json([("ce_id", f"{key}-{n}")])),
                service,
            )
            for key, n in rows
        ],
    )


def relay(settings: Settings, table: OutboxTable, **options: Any) -> OutboxRelay:
    return OutboxRelay(
        dsn=settings.postgres_dsn.get_secret_value(),
        kafka_config=settings.kafka_config(),
        table=table,
        **options,
    )


def running(relays: list[OutboxRelay]) -> list[threading.Thread]:
    threads = [threading.Thread(target=r.run) for r in relays]
    for thread in threads:
        thread.start()
    return threads


def stop(relays: list[OutboxRelay], threads: list[threading.Thread]) -> None:
    for r in relays:
        r.stop()
    for thread in threads:
        thread.join(timeout=30)


def test_two_replicas_publish_every_row_once_in_key_order_with_a_late_commit(
    settings: Settings, outbox: tuple[OutboxTable, str]
) -> None:
    table, topic = outbox
    dsn = settings.postgres_dsn.get_secret_value()
    keys = [f"order-{n}" for n in range(5)]
    with psycopg.connect(dsn) as early, psycopg.connect(dsn) as late:
        # The late transaction takes its sequence number first and commits last.
        insert_rows(late, table, topic, [("late-order", 0)])
        insert_rows(early, table, topic, [(key, n) for n in range(40) for key in keys])
        early.commit()
        relays = [
            relay(settings, table, poll_interval_s=0.2),
            relay(settings, table, poll_interval_s=0.2),
        ]
        threads = running(relays)
        try:
            # Every committed row goes out; the late one, lower in sequence, is still invisible.
            wait_for(lambda: unpublished(settings, table) == 0)
            assert len(read_topic(settings, topic, 200, timeout_s=30)) == 200
            late.commit()
            wait_for(lambda: unpublished(settings, table) == 0)
            messages = read_topic(settings, topic, 201, timeout_s=30)
        finally:
            stop(relays, threads)

    assert len(messages) == 201
    ce_ids = [h.get(m.headers(), "ce_id") for m in messages]
    assert len(set(ce_ids)) == 201, "each row published once"
    by_key: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        key, n = json.loads(message.value() or b"[]")
        by_key[key].append(n)
    assert by_key["late-order"] == [0]
    for key in keys:
        assert by_key[key] == list(range(40)), key
    published = REGISTRY.get_sample_value("revsync_outbox_published_total", {"outbox": table.table})
    assert published == 201


def test_a_notify_wakes_the_relay_long_before_its_poll(
    settings: Settings, outbox: tuple[OutboxTable, str]
) -> None:
    table, topic = outbox
    waiting = relay(settings, table, poll_interval_s=60)
    threads = running([waiting])
    try:
        time.sleep(1.0)  # the relay is now asleep on LISTEN, a minute from its next poll
        with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
            insert_rows(db, table, topic, [("order-x", 1)])
        wait_for(lambda: unpublished(settings, table) == 0, timeout_s=20)
        # Asleep again a minute from its next poll, it stops when asked (the join gives it
        # half that minute), not at that poll.
        time.sleep(0.5)
        stop([waiting], threads)
        assert not threads[0].is_alive()
    finally:
        stop([waiting], threads)


def test_a_crash_between_publish_and_mark_republishes_with_the_same_ids(
    settings: Settings, outbox: tuple[OutboxTable, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    table, topic = outbox
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
        insert_rows(db, table, topic, [("order-y", n) for n in range(10)])
    crashing = relay(settings, table)
    monkeypatch.setattr(crashing, "_mark", sql.SQL("SELECT 1/0 WHERE %s IS NOT NULL"))
    with (
        psycopg.connect(settings.postgres_dsn.get_secret_value()) as work,
        pytest.raises(psycopg.errors.DivisionByZero),
    ):
        crashing.publish_batch(work)

    recovered = relay(settings, table)
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as work:
        assert recovered.publish_batch(work) == 10
    messages = read_topic(settings, topic, 20)
    ce_ids = [h.get(m.headers(), "ce_id") or "" for m in messages]
    assert len(messages) == 20, "at least once: the crashed batch went out, then again"
    assert sorted(set(ce_ids)) == sorted(f"order-y-{n}" for n in range(10))
    assert unpublished(settings, table) == 0


def test_a_debezium_shaped_table_routes_by_aggregate_type_and_deletes(
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"debezium_outbox_{tag}"
    aggregate = f"invoice{tag}"
    topic = f"outbox.event.{aggregate}"
    ensure_topic(settings, topic)
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as db:
        db.execute(
            sql.SQL(
                "CREATE TABLE {} (seq bigserial, id uuid PRIMARY KEY, aggregatetype text, "
                "aggregateid text, type text, payload bytea)"
            ).format(sql.Identifier(name))
        )
        db.execute(
            sql.SQL(
                "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (%s, %s, 'INV-1', 'InvoicePosted', 'p')"
            ).format(sql.Identifier(name)),
            (uuid.uuid4(), aggregate),
        )
    table = OutboxTable(
        table=name,
        topic_column=None,
        headers_column=None,
        created_column=None,
        published_column=None,
        notify_channel=None,
    )
    with psycopg.connect(dsn) as work:
        assert relay(settings, table).publish_batch(work) == 1
        remaining = work.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
        ).fetchone()
    assert remaining == (0,)
    [message] = read_topic(settings, topic, 1)
    assert (message.key(), message.value()) == (b"INV-1", b"p")


def test_each_services_relay_publishes_its_own_rows_beside_the_others(
    settings: Settings, outbox: tuple[OutboxTable, str]
) -> None:
    """A relay runs as its service, whose principal may write only its own topics: it takes
    its service's rows alone, and leads beside the other services' relays."""
    shared, topic = outbox
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as db:
        insert_rows(db, shared, topic, [("order-1", n) for n in range(3)], "order_sync")
        insert_rows(db, shared, topic, [("account-1", n) for n in range(2)], "customer_sync")
    theirs = {
        service: replace(shared, owner_column="service", owner=service)
        for service in ("order_sync", "customer_sync")
    }
    relays = [relay(settings, table, poll_interval_s=0.2) for table in theirs.values()]
    only_orders = relays[:1]

    threads = running(only_orders)
    try:
        wait_for(lambda: unpublished(settings, shared) == 2)
    finally:
        stop(only_orders, threads)
    assert {json.loads(m.value() or b"[]")[0] for m in read_topic(settings, topic, 3)} == {
        "order-1"
    }
    threads = running(relays)  # both lead at once: a lock each
    try:
        wait_for(lambda: unpublished(settings, shared) == 0)
    finally:
        stop(relays, threads)
    keys = [json.loads(m.value() or b"[]")[0] for m in read_topic(settings, topic, 5)]
    assert sorted(keys) == ["account-1"] * 2 + ["order-1"] * 3


def unpublished(settings: Settings, table: OutboxTable) -> int:
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
        row = db.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE published_at IS NULL").format(
                sql.Identifier(table.table)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_undeliverable_rows_hold_back_their_key_only(
    settings: Settings, outbox: tuple[OutboxTable, str]
) -> None:
    table, topic = outbox
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
        insert_rows(db, table, f"{topic}.missing", [("stuck", 0), ("stuck", 1)])
        insert_rows(db, table, topic, [("free", 0), ("free", 1), ("free", 2)])
    blocked = relay(settings, table, delivery_timeout_ms=2000, blocked_retry_s=60)
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as work:
        first = blocked.publish_batch(work)
        second = blocked.publish_batch(work)

    assert first + second == 3
    messages = read_topic(settings, topic, 3)
    assert [json.loads(m.value() or b"[]") for m in messages] == [
        ["free", 0],
        ["free", 1],
        ["free", 2],
    ]
    assert unpublished(settings, table) == 2, "the stuck key's rows wait, in order"


def test_a_row_the_producer_refuses_holds_back_its_key_only(
    settings: Settings, outbox: tuple[OutboxTable, str]
) -> None:
    table, topic = outbox
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as db:
        db.execute(
            sql.SQL(
                "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, topic, service) "
                "VALUES (%s, 'order', 'huge', 'io.revsync.order.created', %s, %s, 'order_sync')"
            ).format(sql.Identifier(table.table)),
            (uuid.uuid4(), b"x" * 2_000_000, topic),
        )
        insert_rows(db, table, topic, [("free", 0)])
    with psycopg.connect(dsn) as work:
        assert relay(settings, table, blocked_retry_s=60).publish_batch(work) == 1
    [message] = read_topic(settings, topic, 1)
    assert json.loads(message.value() or b"[]") == ["free", 0]
    assert unpublished(settings, table) == 1


def test_an_encoder_refusing_a_row_holds_back_its_key_only_on_a_schema_qualified_table(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    schema = f"relay_test_{tag}"
    topic = f"tests.outbox.encoded.{tag}"
    ensure_topic(settings, topic, partitions=3)
    dsn = settings.postgres_dsn.get_secret_value()
    # The ERP's shape: Debezium's columns, JSON payloads, no topic or headers column.
    rows = [("good-1", 0), ("bad", 0), ("good-2", 0), ("bad", 1), ("good-1", 1)]
    with psycopg.connect(dsn) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        db.execute(
            sql.SQL(
                "CREATE TABLE {}.outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, "
                "aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL, "
                "seq bigserial, created_at timestamptz NOT NULL DEFAULT now(), "
                "published_at timestamptz)"
            ).format(sql.Identifier(schema))
        )
        db.cursor().executemany(
            sql.SQL(
                "INSERT INTO {}.outbox (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (%s, 'order', %s, 'InvoicePosted', %s)"
            ).format(sql.Identifier(schema)),
            [(uuid.uuid4(), key, json.dumps({"key": key, "n": n})) for key, n in rows],
        )
    seen: list[OutboxRow] = []

    def encode(row: OutboxRow) -> tuple[str, bytes, h.Headers]:
        seen.append(row)
        if row.aggregate_id == "bad" and row.payload["n"] == 0:
            # A library's refusal quoting the row's data, as the standard library's do.
            raise ValueError("'ap@acme.example' is not a valid amount")
        value = json.dumps([row.payload["key"], row.payload["n"]]).encode()
        return topic, value, [("ce_id", str(row.id).encode())]

    table = OutboxTable(
        table=f"{schema}.outbox",
        topic_column=None,
        headers_column=None,
        published_column="published_at",
        notify_channel=None,
    )
    try:
        relay_with_encoder = relay(settings, table, encoder=encode, blocked_retry_s=60)
        with psycopg.connect(dsn) as work:
            first = relay_with_encoder.publish_batch(work)
            second = relay_with_encoder.publish_batch(work)
        messages = read_topic(settings, topic, len(rows), timeout_s=5)
        with psycopg.connect(dsn) as db:
            states = db.execute(
                sql.SQL(
                    "SELECT aggregateid, (payload->>'n')::int, published_at IS NOT NULL "
                    "FROM {}.outbox ORDER BY seq"
                ).format(sql.Identifier(schema))
            ).fetchall()
    finally:
        with psycopg.connect(dsn) as db:
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin = AdminClient(settings.kafka_config())
        admin.delete_topics([topic])[topic].result(timeout=30)

    # The encoder saw each row as the table holds it: JSON payload, key, type, creation time.
    assert seen[0].payload == {"key": "good-1", "n": 0}
    assert (seen[0].aggregate_type, seen[0].aggregate_id, seen[0].type) == (
        "order",
        "good-1",
        "InvoicePosted",
    )
    assert seen[0].created_at is not None
    assert (seen[0].topic, seen[0].headers) == (None, [])
    assert (first, second) == (3, 0)
    published = [json.loads(m.value() or b"[]") for m in messages]
    leaked = [value for value in published if value[0] == "bad"]
    assert leaked == [], "a held key's later row must not overtake the refused one"
    assert sorted(published) == [["good-1", 0], ["good-1", 1], ["good-2", 0]]
    assert [n for key, n in published if key == "good-1"] == [0, 1]
    # No customer data in errors: the refusal is logged (at every try) by its kind alone.
    assert "not publishable: ValueError" in caplog.text
    assert "ap@acme.example" not in caplog.text
    assert states == [
        ("good-1", 0, True),
        ("bad", 0, False),
        ("good-2", 0, True),
        ("bad", 1, False),
        ("good-1", 1, True),
    ]
