"""What the console's pages and API read: the business telemetry of the overview, one order's
journey, and how each consumer is doing. Reads only; every query is bounded and indexed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg.rows import dict_row

from revsync.contracts.catalog import Catalog
from revsync.contracts.topics import watermarks

log = logging.getLogger(__name__)

# --- overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    window_days: int
    orders: int
    accepted: int
    rejected: int
    success_rate: float | None
    """Accepted over decided (accepted or rejected and not accepted since) in the window."""
    daily: list[dict[str, Any]]
    """Per day: activated, accepted, rejected."""
    aging: dict[str, dict[str, int]]
    """Orders waiting now, per stage they wait for, per age bucket."""
    lag: dict[str, dict[str, float | None]]
    """Invoice and shipment sync lag (seconds), p50 and p95, in the window."""
    exceptions_by: dict[str, dict[str, int]]
    """Exceptions opened in the window by reason, region, product line, legal entity."""
    exceptions_daily: list[dict[str, Any]]
    """Per day and reason, exceptions opened."""


AGE_BUCKETS = (
    ("< 1 h", timedelta(hours=1)),
    ("1-24 h", timedelta(days=1)),
    ("1-3 d", timedelta(days=3)),
    ("> 3 d", None),
)


def overview(connection: psycopg.Connection[Any], window_days: int = 7) -> Overview:
    window = timedelta(days=window_days)
    with connection.cursor(row_factory=dict_row) as cursor:
        totals = cursor.execute(
            "SELECT count(*) AS orders, count(accepted_at) AS accepted, "
            "count(*) FILTER (WHERE rejected_at IS NOT NULL AND accepted_at IS NULL) AS rejected "
            "FROM revsync_orders WHERE activated_at >= now() - %s",
            (window,),
        ).fetchone()
        assert totals is not None
        daily = cursor.execute(
            "SELECT d::date AS day, "
            "(SELECT count(*) FROM revsync_orders WHERE activated_at >= d "
            " AND activated_at < d + interval '1 day') AS activated, "
            "(SELECT count(*) FROM revsync_orders WHERE accepted_at >= d "
            " AND accepted_at < d + interval '1 day') AS accepted, "
            "(SELECT count(*) FROM revsync_orders WHERE rejected_at >= d "
            " AND rejected_at < d + interval '1 day' AND accepted_at IS NULL) AS rejected "
            "FROM generate_series(date_trunc('day', now()) - %s, date_trunc('day', now()), "
            "interval '1 day') AS d ORDER BY d",
            (window - timedelta(days=1),),
        ).fetchall()
        aging = _aging(cursor)
        lag_row = cursor.execute(
            "SELECT "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
            " invoice_synced_at - invoiced_at)) AS invoice_p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM "
            " invoice_synced_at - invoiced_at)) AS invoice_p95 "
            "FROM revsync_orders WHERE invoice_synced_at >= now() - %s",
            (window,),
        ).fetchone()
        ship_row = cursor.execute(
            "SELECT "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
            " shipment_synced_at - shipped_at)) AS shipment_p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM "
            " shipment_synced_at - shipped_at)) AS shipment_p95 "
            "FROM revsync_orders WHERE shipment_synced_at >= now() - %s",
            (window,),
        ).fetchone()
        assert lag_row is not None
        assert ship_row is not None
        by: dict[str, dict[str, int]] = {}
        for facet, expression in (
            ("reason", "e.reason"),
            ("region", "coalesce(o.region, '-')"),
            ("product line", "coalesce(l.line, '-')"),
            ("legal entity", "coalesce(o.legal_entity, '-')"),
        ):
            lines = (
                "LEFT JOIN LATERAL unnest(o.product_lines) AS l(line) ON true"
                if facet == "product line"
                else "LEFT JOIN LATERAL (SELECT NULL::text AS line) AS l ON true"
            )
            rows = cursor.execute(
                f"SELECT {expression} AS name, count(*) AS n FROM revsync_exceptions e "  # noqa: S608
                f"LEFT JOIN revsync_orders o ON o.crm_order_id = e.order_key {lines} "
                "WHERE e.opened_at >= now() - %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 12",
                (window,),
            ).fetchall()
            by[facet] = {str(row["name"]): int(row["n"]) for row in rows}
        exceptions_daily = cursor.execute(
            "SELECT date_trunc('day', opened_at)::date AS day, reason, count(*) AS n "
            "FROM revsync_exceptions WHERE opened_at >= date_trunc('day', now()) - %s "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            (window - timedelta(days=1),),
        ).fetchall()
    decided = int(totals["accepted"]) + int(totals["rejected"])
    return Overview(
        window_days=window_days,
        orders=int(totals["orders"]),
        accepted=int(totals["accepted"]),
        rejected=int(totals["rejected"]),
        success_rate=int(totals["accepted"]) / decided if decided else None,
        daily=[dict(row) for row in daily],
        aging=aging,
        lag={
            "invoice": {"p50": lag_row["invoice_p50"], "p95": lag_row["invoice_p95"]},
            "shipment": {"p50": ship_row["shipment_p50"], "p95": ship_row["shipment_p95"]},
        },
        exceptions_by=by,
        exceptions_daily=[dict(row) for row in exceptions_daily],
    )


def _aging(cursor: psycopg.Cursor[Any]) -> dict[str, dict[str, int]]:
    """Orders waiting now, by the stage they wait for and how long they have waited."""
    stages = {
        "accepted": "accepted_at IS NULL AND (rejected_at IS NULL OR rejected_at < activated_at)",
        "invoiced": "accepted_at IS NOT NULL AND invoiced_at IS NULL",
        "shipped": "invoiced_at IS NOT NULL AND shipped_at IS NULL",
    }
    since = {
        "accepted": "activated_at",
        "invoiced": "accepted_at",
        "shipped": "invoiced_at",
    }
    cases = " ".join(
        f"WHEN now() - {{since}} < '{limit.total_seconds()} seconds'::interval THEN '{label}'"
        for label, limit in AGE_BUCKETS
        if limit is not None
    )
    aging: dict[str, dict[str, int]] = {}
    for stage, waiting in stages.items():
        bucket = f"CASE {cases.format(since=since[stage])} ELSE '{AGE_BUCKETS[-1][0]}' END"
        rows = cursor.execute(
            f"SELECT {bucket} AS bucket, count(*) AS n FROM revsync_orders "  # noqa: S608
            f"WHERE cancelled_at IS NULL AND activated_at IS NOT NULL AND {waiting} GROUP BY 1"
        ).fetchall()
        found = {str(row["bucket"]): int(row["n"]) for row in rows}
        aging[stage] = {label: found.get(label, 0) for label, _ in AGE_BUCKETS}
    return aging


# --- one order ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderView:
    order: dict[str, Any]
    journey: list[dict[str, Any]]
    exceptions: list[dict[str, Any]] = field(default_factory=list)


def find_order(connection: psycopg.Connection[Any], ref: str) -> str | None:
    """The CRM order id ``ref`` names: itself, a CRM or ERP order number, a correlation id."""
    row = connection.execute(
        "SELECT crm_order_id FROM revsync_orders WHERE crm_order_id = %(r)s "
        "UNION ALL SELECT crm_order_id FROM revsync_orders WHERE crm_order_number = %(r)s "
        "UNION ALL SELECT crm_order_id FROM revsync_orders WHERE erp_order_number = %(r)s "
        "UNION ALL SELECT crm_order_id FROM revsync_orders WHERE correlation_id = %(r)s "
        "UNION ALL (SELECT order_key FROM revsync_journey WHERE order_key = %(r)s LIMIT 1) "
        "UNION ALL (SELECT order_key FROM revsync_journey WHERE correlation_id = %(r)s "
        "AND order_key IS NOT NULL LIMIT 1) LIMIT 1",
        {"r": ref.strip()},
    ).fetchone()
    return None if row is None else str(row[0])


JOURNEY_LIMIT = 500


def order_view(connection: psycopg.Connection[Any], crm_order_id: str) -> OrderView | None:
    with connection.cursor(row_factory=dict_row) as cursor:
        order = cursor.execute(
            "SELECT * FROM revsync_orders WHERE crm_order_id = %s", (crm_order_id,)
        ).fetchone()
        journey = cursor.execute(
            "SELECT seq, at, consumer, outcome, tier, event_id::text, event_type, "
            'correlation_id, topic, partition, "offset", occurred_at, detail '
            "FROM revsync_journey WHERE order_key = %s ORDER BY at, seq LIMIT %s",
            (crm_order_id, JOURNEY_LIMIT),
        ).fetchall()
        exceptions = cursor.execute(
            "SELECT 'e' || id AS ref, kind, status, consumer, reason, summary, opened_at, "
            "resolved_at, resolved_by, resolution, assignee, tags, "
            "dlt_topic || ':' || dlt_partition || ':' || dlt_offset AS dead_letter "
            "FROM revsync_exceptions WHERE order_key = %s ORDER BY id",
            (crm_order_id,),
        ).fetchall()
    if order is None and not journey:
        return None
    return OrderView(
        order=dict(order) if order else {"crm_order_id": crm_order_id},
        journey=[dict(row) for row in journey],
        exceptions=[dict(row) for row in exceptions],
    )


# --- consumers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerView:
    name: str
    description: str
    lag: int | None
    """Records on its input topics not yet committed; None when Kafka did not say."""
    held_keys: int
    parked: int
    breaker: dict[str, Any] | None
    last_errors: list[dict[str, Any]]


def consumers(
    connection: psycopg.Connection[Any], catalog: Catalog, kafka_config: dict[str, Any]
) -> list[ConsumerView]:
    names = sorted(catalog.consumers)
    lags = _lags(catalog, kafka_config, names)
    views = []
    with connection.cursor(row_factory=dict_row) as cursor:
        for name in names:
            held = cursor.execute(
                "SELECT count(*) AS n, "
                "(SELECT count(*) FROM revsync_parked WHERE consumer = %(c)s) AS parked "
                "FROM revsync_key_holds WHERE consumer = %(c)s",
                {"c": name},
            ).fetchone()
            assert held is not None
            breaker = cursor.execute(
                "SELECT reason, opened_at, resume_requested_at, resumed_by "
                "FROM revsync_circuit_breakers WHERE consumer = %s",
                (name,),
            ).fetchone()
            errors = cursor.execute(
                "SELECT at, order_key, outcome, tier, event_type, detail "
                "FROM revsync_journey WHERE consumer = %s AND outcome IN ('retried', "
                "'dead-lettered') AND at >= now() - interval '7 days' "
                "ORDER BY at DESC LIMIT 5",
                (name,),
            ).fetchall()
            views.append(
                ConsumerView(
                    name=name,
                    description=catalog.consumers[name].description,
                    lag=lags.get(name),
                    held_keys=int(held["n"]),
                    parked=int(held["parked"]),
                    breaker=dict(breaker) if breaker else None,
                    last_errors=[dict(row) for row in errors],
                )
            )
    return views


def _lags(catalog: Catalog, kafka_config: dict[str, Any], names: Sequence[str]) -> dict[str, int]:
    """Each consumer group's lag on its input topics (end offset minus committed)."""
    admin = AdminClient(kafka_config)
    reader = Consumer({**kafka_config, "group.id": f"revsync-ops-console-{uuid.uuid4()}"})
    lags: dict[str, int] = {}
    try:
        metadata = reader.list_topics(timeout=5).topics
        for name in names:
            partitions = [
                TopicPartition(topic.name, partition)
                for topic in catalog.consumed_by(name)
                if topic.name in metadata
                for partition in metadata[topic.name].partitions
            ]
            if not partitions:
                continue
            try:
                request = [ConsumerGroupTopicPartitions(name, partitions)]
                committed = admin.list_consumer_group_offsets(request)[name].result(timeout=5)
            except Exception as error:  # no right to see it, or Kafka away
                log.info("no lag for %s: %s", name, type(error).__name__)
                continue
            total = 0
            for tp in committed.topic_partitions:
                _, high = watermarks(reader, TopicPartition(tp.topic, tp.partition), 5.0)
                total += max(high - max(tp.offset, 0), 0)
            lags[name] = total
    except Exception:
        return lags
    finally:
        reader.close()
    return lags


def since(moment: datetime | None) -> str:
    """How long ago, as people say it."""
    if moment is None:
        return "-"
    seconds = max((datetime.now(UTC) - moment).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"
