"""The exceptions worklist and what people do with it.

One list of business exceptions (orders rejected, with their reason codes) and technical ones
(dead letters by error class, held keys, orders stuck past a stage's age), open or dealt with.
Rejections and dead letters are rows the runtime writes with the batch that caused them
(:mod:`revsync.runtime.journey`); held keys and stuck orders are read as they stand.

Every action goes through :class:`ExceptionDesk`, which records it in the audit trail with
the person who asked, and acts only through what the CLI does too: a dead letter is retried by
a replay job and discarded by the ledger (releasing its key's hold); a rejected or stuck order
is retried by asking order-sync to read it from the CRM again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import KafkaException, Producer
from psycopg.rows import dict_row

from revsync.connectors.cdc import RETRY_PREFIX
from revsync.contracts.catalog import Catalog
from revsync.ops import dead_letters as dl
from revsync.ops import ledger
from revsync.runtime import headers as h
from revsync.runtime.holds import release
from revsync.runtime.journey import DUPLICATE_CUSTOMER, Kind, Status

HELD_KEY = "held key"
STUCK = "stuck order"
KINDS = (Kind.REJECTION.value, Kind.DEAD_LETTER.value, HELD_KEY, STUCK)
STATUSES = tuple(status.value for status in Status)

STAGES = ("accepted", "invoiced", "shipped")
"""The stages an order can be stuck before, each after the one before it (activated first)."""
DEFAULT_STAGE_AGES = {
    "accepted": timedelta(minutes=15),
    "invoiced": timedelta(days=3),
    "shipped": timedelta(days=7),
}


def parse_stage_ages(text: str) -> dict[str, timedelta]:
    """``accepted=15m,invoiced=3d,shipped=7d`` (units s, m, h, d); unnamed stages keep their
    defaults."""
    ages = dict(DEFAULT_STAGE_AGES)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    for part in filter(None, (p.strip() for p in text.split(","))):
        stage, _, age = part.partition("=")
        stage, age = stage.strip(), age.strip()
        if stage not in STAGES or len(age) < 2 or age[-1] not in units or not age[:-1].isdigit():
            raise ValueError(
                f"stage age {part!r}: write <stage>=<number><s|m|h|d>, stages {', '.join(STAGES)}"
            )
        ages[stage] = timedelta(seconds=int(age[:-1]) * units[age[-1]])
    return ages


@dataclass(frozen=True)
class Filters:
    """What the worklist shows; empty fields match everything."""

    status: str = Status.OPEN.value
    kinds: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    consumers: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    legal_entities: frozenset[str] = frozenset()
    product_lines: frozenset[str] = frozenset()
    assignee: str | None = None
    tag: str | None = None
    order: str | None = None
    """A CRM order id or number, an ERP order number or a correlation id."""

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"status": self.status}
        for name in ("kinds", "reasons", "consumers", "regions", "legal_entities", "product_lines"):
            values = getattr(self, name)
            if values:
                document[name] = sorted(values)
        for name in ("assignee", "tag", "order"):
            if getattr(self, name):
                document[name] = getattr(self, name)
        return document


@dataclass(frozen=True)
class Item:
    """One line of the worklist. ``ref``: ``e<id>`` for a recorded exception, ``held:…`` for a
    held key, ``stuck:<order id>`` for a stuck order."""

    ref: str
    kind: str
    status: str
    order_key: str | None
    consumer: str
    reason: str
    summary: str
    opened_at: datetime
    crm_order_number: str | None = None
    erp_order_number: str | None = None
    region: str | None = None
    legal_entity: str | None = None
    product_lines: tuple[str, ...] = ()
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    dead_letter: str | None = None
    """``topic:partition:offset`` of the dead letter."""
    event_type: str | None = None
    held: bool = False
    """Whether the exception's key is held (its later records wait)."""
    blocker: str | None = None
    """For a dead letter, the record's first place, which its key's hold names."""

    def as_json(self) -> dict[str, Any]:
        document = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("opened_at", "resolved_at"):
            moment = document[name]
            document[name] = moment.isoformat() if moment else None
        document["product_lines"] = list(self.product_lines)
        document["tags"] = list(self.tags)
        return document


@dataclass(frozen=True)
class Page:
    items: list[Item]
    total: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Counts of the filtered worklist by kind, by reason, by region, by legal entity."""


# Recorded exceptions, held keys and stuck orders as one relation, each with its order's ids
# and facets. Held keys whose blocker is an open dead letter are that dead letter's (its
# ``held`` flag), not a second line. Each item's order is looked up by its key, one at a time
# (LATERAL ... LIMIT 1, which the planner does not turn into a join over every order revsync
# has recorded), so the worklist's cost grows with its items; stuck orders are read stage by
# stage from the partial index of the orders waiting there, oldest first, so only those past
# the stage's age are read however many orders are on their way.
_WITH = """
WITH items AS (
    SELECT 'e' || e.id AS ref, e.kind, e.status, e.order_key, e.consumer, e.reason, e.summary,
           e.opened_at, e.assignee, e.tags, e.resolved_at, e.resolved_by, e.resolution,
           e.dlt_topic || ':' || e.dlt_partition || ':' || e.dlt_offset AS dead_letter,
           e.event_type, e.blocker,
           e.status = 'open' AND EXISTS (SELECT 1 FROM revsync_key_holds k
               WHERE k.consumer = e.consumer AND k.record_key = convert_to(e.order_key, 'UTF8')
               AND k.blocker = e.blocker) AS held,
           o.crm_order_number, o.erp_order_number, o.correlation_id, o.region,
           o.legal_entity, coalesce(o.product_lines, '{}') AS product_lines
    FROM revsync_exceptions e LEFT JOIN LATERAL (
        SELECT * FROM revsync_orders o WHERE o.crm_order_id = e.order_key LIMIT 1) o ON true
    UNION ALL
    SELECT 'held:' || k.consumer || ':' || k.source_topic || ':' || encode(k.record_key, 'hex'),
           %(held_key)s, 'open', k.order_key, k.consumer,
           CASE WHEN k.blocker = 'released' THEN 'released' ELSE 'waiting on a retry' END,
           'later records of this order wait behind ' || k.blocker, k.held_since, NULL,
           '{}'::text[], NULL, NULL, NULL, NULL, NULL, k.blocker, true,
           o.crm_order_number, o.erp_order_number, o.correlation_id, o.region,
           o.legal_entity, coalesce(o.product_lines, '{}') AS product_lines
    FROM (SELECT *, convert_from(record_key, 'UTF8') COLLATE "default" AS order_key
          FROM revsync_key_holds) k
    LEFT JOIN LATERAL (
        SELECT * FROM revsync_orders o WHERE o.crm_order_id = k.order_key LIMIT 1) o ON true
    WHERE NOT EXISTS (SELECT 1 FROM revsync_exceptions e WHERE e.status = 'open'
                      AND e.consumer = k.consumer AND e.blocker = k.blocker)
    UNION ALL
    SELECT 'stuck:' || o.crm_order_id, %(stuck)s, 'open', o.crm_order_id, o.consumer,
           o.reason, o.stage || justify_interval(date_trunc('minute', now() - o.since))::text,
           o.since, NULL, '{}'::text[], NULL, NULL, NULL, NULL, NULL, NULL, false,
           o.crm_order_number, o.erp_order_number, o.correlation_id, o.region,
           o.legal_entity, coalesce(o.product_lines, '{}') AS product_lines
    FROM (SELECT *, 'order-sync' AS consumer, 'not accepted' AS reason,
                 'activated, not accepted by the ERP after ' AS stage, activated_at AS since
          FROM revsync_orders WHERE cancelled_at IS NULL AND shipped_at IS NULL
            AND accepted_at IS NULL AND (rejected_at IS NULL OR rejected_at < activated_at)
            AND activated_at < now() - %(accepted)s
          UNION ALL
          SELECT *, 'invoice-sync', 'not invoiced', 'accepted, not invoiced after ', accepted_at
          FROM revsync_orders WHERE cancelled_at IS NULL AND shipped_at IS NULL
            AND accepted_at IS NOT NULL AND invoiced_at IS NULL
            AND accepted_at < now() - %(invoiced)s
          UNION ALL
          SELECT *, 'fulfillment-sync', 'not shipped', 'invoiced, not shipped after ', invoiced_at
          FROM revsync_orders WHERE cancelled_at IS NULL AND shipped_at IS NULL
            AND accepted_at IS NOT NULL AND invoiced_at IS NOT NULL
            AND invoiced_at < now() - %(shipped)s) o
)
"""
_ITEMS = (
    _WITH
    + """
SELECT i.*
FROM items i
"""
)
_COUNTS = (
    _WITH
    + """
SELECT i.kind, i.reason, coalesce(i.region, '-') AS region,
       coalesce(i.legal_entity, '-') AS legal_entity, count(*) AS n
FROM items i
"""
)

_WHERE = """
WHERE (%(status)s = 'all' OR i.status = %(status)s)
  AND (cardinality(%(kinds)s::text[]) = 0 OR i.kind = ANY(%(kinds)s))
  AND (cardinality(%(reasons)s::text[]) = 0 OR i.reason = ANY(%(reasons)s))
  AND (cardinality(%(consumers)s::text[]) = 0 OR i.consumer = ANY(%(consumers)s))
  AND (cardinality(%(regions)s::text[]) = 0 OR i.region = ANY(%(regions)s))
  AND (cardinality(%(entities)s::text[]) = 0 OR i.legal_entity = ANY(%(entities)s))
  AND (cardinality(%(lines)s::text[]) = 0 OR i.product_lines && %(lines)s::text[])
  AND (%(assignee)s::text IS NULL OR i.assignee = %(assignee)s)
  AND (%(tag)s::text IS NULL OR %(tag)s = ANY(i.tags))
  AND (%(order)s::text IS NULL OR i.order_key = %(order)s OR i.crm_order_number = %(order)s
       OR i.erp_order_number = %(order)s OR i.correlation_id = %(order)s)
"""


def _parameters(filters: Filters, ages: Mapping[str, timedelta]) -> dict[str, Any]:
    return {
        "held_key": HELD_KEY,
        "stuck": STUCK,
        **{stage: ages[stage] for stage in STAGES},
        "status": filters.status,
        "kinds": sorted(filters.kinds),
        "reasons": sorted(filters.reasons),
        "consumers": sorted(filters.consumers),
        "regions": sorted(filters.regions),
        "entities": sorted(filters.legal_entities),
        "lines": sorted(filters.product_lines),
        # As the desk writes them: an assignee stripped, tags stripped and lower-case.
        "assignee": (filters.assignee or "").strip() or None,
        "tag": (filters.tag or "").strip().lower() or None,
        "order": filters.order or None,
    }


def worklist(
    connection: psycopg.Connection[Any],
    filters: Filters,
    ages: Mapping[str, timedelta],
    *,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """One page of the worklist, newest first, with the filtered list's size and counts."""
    parameters = _parameters(filters, ages)
    with connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"{_ITEMS}{_WHERE} ORDER BY i.opened_at DESC, i.ref LIMIT %(limit)s OFFSET %(offset)s",
            {**parameters, "limit": limit, "offset": offset},
        ).fetchall()
        grouped = cursor.execute(f"{_COUNTS}{_WHERE} GROUP BY 1, 2, 3, 4", parameters).fetchall()
    counts: dict[str, dict[str, int]] = {
        "kind": {},
        "reason": {},
        "region": {},
        "legal entity": {},
    }
    total = 0
    for row in grouped:
        n = int(row["n"])
        total += n
        for facet, column in (
            ("kind", "kind"),
            ("reason", "reason"),
            ("region", "region"),
            ("legal entity", "legal_entity"),
        ):
            counts[facet][row[column]] = counts[facet].get(row[column], 0) + n
    return Page([_item(row) for row in rows], total, counts)


def items(
    connection: psycopg.Connection[Any], refs: Iterable[str], ages: Mapping[str, timedelta]
) -> list[Item]:
    """The worklist items ``refs`` name, whatever their status."""
    wanted = sorted(set(refs))
    if not wanted:
        return []
    parameters = _parameters(Filters(status="all"), ages)
    with connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"{_ITEMS}{_WHERE} AND i.ref = ANY(%(refs)s) ORDER BY i.ref",
            {**parameters, "refs": wanted},
        ).fetchall()
    return [_item(row) for row in rows]


def _item(row: Mapping[str, Any]) -> Item:
    return Item(
        ref=row["ref"],
        kind=row["kind"],
        status=row["status"],
        order_key=row["order_key"],
        consumer=row["consumer"],
        reason=row["reason"],
        summary=row["summary"],
        opened_at=row["opened_at"],
        crm_order_number=row["crm_order_number"],
        erp_order_number=row["erp_order_number"],
        region=row["region"],
        legal_entity=row["legal_entity"],
        product_lines=tuple(row["product_lines"] or ()),
        assignee=row["assignee"],
        tags=tuple(row["tags"] or ()),
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        resolution=row["resolution"],
        dead_letter=row["dead_letter"],
        event_type=row["event_type"],
        held=bool(row["held"]),
        blocker=row["blocker"],
    )


# --- actions ---------------------------------------------------------------------------------

ACTIONS = ("retry", "discard", "resolve", "assign", "tag")


@dataclass(frozen=True)
class Effect:
    """What an action will do (or did) to one item; ``change`` None: nothing (said why)."""

    ref: str
    change: str | None
    why_not: str | None = None


class ExceptionDesk:
    """People's actions on the worklist, each audited with who asked."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        kafka_config: dict[str, Any],
        dsn: str,
        actor: ledger.Actor,
        ages: Mapping[str, timedelta],
        replay: Callable[[dl.Selection], object],
    ) -> None:
        """``replay``: replays dead letters by ref (the replay jobs' ``replay``), so a retry
        from here is the same job ``revsync dlt replay`` runs."""
        self.catalog = catalog
        self.kafka_config = kafka_config
        self.dsn = dsn
        self.actor = actor
        self.ages = ages
        self._replay = replay

    def plan(self, action: str, refs: Sequence[str], value: str = "") -> list[Effect]:
        """What ``action`` would do to each of ``refs``: a bulk action's preview. Audited as
        a read."""
        refused = _refusal(action, value)
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            found = {item.ref: item for item in items(connection, refs, self.ages)}
            effects = [
                Effect(ref, None, refused)
                if refused
                else _effect(action, found.get(ref), ref, value)
                for ref in refs
            ]
            ledger.audit(
                connection,
                self.actor,
                f"{action} exceptions dry run",
                {"refs": sorted(refs), "value": value} if value else {"refs": sorted(refs)},
                sum(e.change is not None for e in effects),
                "read",
            )
        return effects

    def act(self, action: str, refs: Sequence[str], value: str = "") -> list[Effect]:
        """Do ``action`` to ``refs`` (``value``: the note, assignee or tags); what was done to
        each, audited with the person and the count."""
        refused = _refusal(action, value)
        if refused:
            raise dl.OperationRefused(refused)
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            found = {item.ref: item for item in items(connection, refs, self.ages)}
        effects = [_effect(action, found.get(ref), ref, value) for ref in refs]
        doing = [found[e.ref] for e in effects if e.change is not None]
        letters = [i.dead_letter for i in doing if i.kind == Kind.DEAD_LETTER and i.dead_letter]
        if action == "retry" and letters:
            # The replay job audits itself (started, then its end) with the same person.
            self._replay(dl.Selection(refs=frozenset(letters)))
        records = [
            (_entity(i), i.order_key)
            for i in doing
            if i.kind in (Kind.REJECTION, STUCK) and i.order_key is not None
        ]
        if action == "retry" and records:
            self.retry_records(records)
        with psycopg.connect(self.dsn, autocommit=True) as connection, connection.transaction():
            for item in doing:
                self._apply(connection, action, item, value)
            ledger.audit(
                connection,
                self.actor,
                f"{action} exceptions",
                {"refs": sorted(refs), "value": value} if value else {"refs": sorted(refs)},
                len(doing),
                f"{action} done" if doing else "nothing to do",
            )
        return effects

    def _apply(
        self, connection: psycopg.Connection[Any], action: str, item: Item, value: str
    ) -> None:
        recorded = item.ref.startswith("e")
        who = self.actor.name
        if action in ("resolve", "discard") and recorded:
            status = Status.RESOLVED if action == "resolve" else Status.DISCARDED
            connection.execute(
                "UPDATE revsync_exceptions SET status = %s, resolved_at = now(), "
                "resolved_by = %s, resolution = %s WHERE id = %s AND status = 'open'",
                (status.value, who, value or f"{status.value} by {who}", int(item.ref[1:])),
            )
        if action == "discard":
            self._discard(connection, item)
        elif action == "assign":
            connection.execute(
                "UPDATE revsync_exceptions SET assignee = %s WHERE id = %s",
                (value.strip(), int(item.ref[1:])),
            )
        elif action == "tag":
            connection.execute(
                "UPDATE revsync_exceptions SET tags = ARRAY(SELECT DISTINCT unnest(tags || %s) "
                "ORDER BY 1) WHERE id = %s",
                (_tags(value), int(item.ref[1:])),
            )

    def _discard(self, connection: psycopg.Connection[Any], item: Item) -> None:
        """A dead letter dealt with for good (the ledger's ``purged``, as ``dlt purge``); its
        key, or a held key, released: what it held back goes on."""
        if item.kind == Kind.DEAD_LETTER and item.dead_letter:
            ledger.record(connection, None, [item.dead_letter], "purged")
        if item.kind == HELD_KEY:
            _, consumer, rest = item.ref.split(":", 2)
            topic, key = rest.rsplit(":", 1)
            blocker = connection.execute(
                "SELECT blocker FROM revsync_key_holds WHERE consumer = %s AND record_key = %s "
                "AND source_topic = %s",
                (consumer, bytes.fromhex(key), topic),
            ).fetchone()
            if blocker is not None:
                release(connection, consumer, bytes.fromhex(key), topic, blocker[0])
        elif item.held and item.order_key is not None and item.blocker:
            source = item.blocker.rsplit(":", 2)[0]
            release(connection, item.consumer, item.order_key.encode(), source, item.blocker)

    def retry_records(self, records: Sequence[tuple[str, str]]) -> None:
        """Ask the consumer of each record's change events (order-sync for an Order,
        customer-sync for an Account) to read it from the CRM again and run it as a new
        attempt: a change event of revsync's own on that consumer's replay topic, ordered
        behind the record's other change events (same key, same source topic). ``records``:
        (CRM object, record id); all sent by one producer, acknowledged before this returns."""
        producer = Producer({**self.kafka_config, "enable.idempotence": True, "acks": "all"})
        errors: list[Any] = []
        for entity, record_id in records:
            source = self.catalog.change_topics[entity]
            attempt_id = uuid.uuid4()
            change = {
                "schema": "revsync-retry",
                "payload": {
                    "ChangeEventHeader": {
                        "entityName": entity,
                        "recordIds": [record_id],
                        "changeType": "GAP_UPDATE",
                        "changeOrigin": f"revsync;retried by {self.actor.name}",
                        "transactionKey": f"{RETRY_PREFIX}{attempt_id}",
                        "sequenceNumber": 0,
                        "commitTimestamp": int(time.time() * 1000),
                        "commitUser": "",
                    }
                },
            }
            headers: list[tuple[str, str | bytes | None]] = [
                (h.ORIGINAL_TOPIC, source.encode()),
                (h.REPLAY_ID, str(attempt_id).encode()),
            ]
            producer.produce(
                self.catalog.replay_topic(self.catalog.topic(source).consumers[0]),
                key=record_id.encode(),
                value=json.dumps(change).encode(),
                headers=headers,
                on_delivery=lambda error, _: errors.append(error) if error else None,
            )
        if producer.flush(30) or errors:
            raise KafkaException(errors[0] if errors else "retries not acknowledged in 30 s")


def _refusal(action: str, value: str) -> str | None:
    """Why ``action`` with ``value`` is refused whatever it is done to, or None."""
    if action not in ACTIONS:
        return f"no action {action!r}; actions are {', '.join(ACTIONS)}"
    if action == "assign" and not value.strip():
        return "name who the exceptions are assigned to"
    if action == "tag" and not _tags(value):
        return "name at least one tag"
    return None


def _entity(item: Item) -> str:
    """The CRM object a business exception is about: an account for a duplicate customer,
    else an order."""
    return "Account" if item.reason == DUPLICATE_CUSTOMER else "Order"


def _tags(value: str) -> list[str]:
    return sorted({tag.strip().lower() for tag in value.split(",") if tag.strip()})


def _effect(action: str, item: Item | None, ref: str, value: str) -> Effect:
    """What ``action`` would do to ``item``, or why it would do nothing."""
    if item is None:
        return Effect(ref, None, "no such exception")
    recorded = item.ref.startswith("e")
    if item.status != Status.OPEN:
        return Effect(ref, None, f"already {item.status}")
    order = item.crm_order_number or item.order_key or "?"
    record = "account" if _entity(item) == "Account" else "order"
    if action == "retry":
        if item.kind == Kind.DEAD_LETTER:
            if not item.dead_letter:
                return Effect(ref, None, "the dead letter's place is unknown")
            return Effect(ref, f"replay dead letter {item.dead_letter} to {item.consumer}")
        if item.kind == Kind.REJECTION or (item.kind == STUCK and item.reason == "not accepted"):
            return Effect(
                ref, f"read {record} {order} from the CRM again and run it as a new attempt"
            )
        return Effect(ref, None, f"a {item.kind} ({item.reason}) has nothing to retry")
    if action == "discard":
        if item.kind == Kind.DEAD_LETTER:
            held = ", releasing its order's later records" if item.held else ""
            return Effect(ref, f"mark dead letter {item.dead_letter} purged{held}")
        if item.kind == HELD_KEY:
            return Effect(ref, f"release order {order} at {item.consumer}: its records go on")
        if item.kind == Kind.REJECTION:
            return Effect(ref, f"close the rejection of {record} {order} without a retry")
        return Effect(ref, None, "a stuck order is not discarded; retry it or look at it")
    if not recorded:
        return Effect(ref, None, f"a {item.kind} is dealt with by retry or discard")
    if action == "resolve":
        return Effect(ref, f"resolve{': ' + value if value else ''}")
    if action == "assign":
        return Effect(ref, f"assign to {value.strip()}")
    if action == "tag":
        return Effect(ref, f"tag {', '.join(_tags(value))}")
    return Effect(ref, None, f"no action {action!r}")
