"""The exception worklist and the desk people work it with, against the real stack.

Rejections and dead letters are opened by a real consumer (the runtime's journal, in the
batch's transaction); held keys and stuck orders are read as they stand. Then each action's
preview and effect: a dead letter retried is replayed and closes once processed, a rejected or
stuck order retried is a change event on order-sync's replay topic, a discard purges and
releases, and every preview and action is in the audit trail under the person's name.

Each test has a catalog and consumer group of its own and reads the worklist by its consumer
or its orders, so it runs again on the shared database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.connectors.cdc import RETRY_PREFIX, ChangeType, decode_change
from revsync.contracts.events import (
    CustomerUpserted,
    DuplicateCustomerSuspected,
    OrderAccepted,
    OrderCreated,
    OrderRejected,
    RejectionReason,
)
from revsync.deployables import input_decoder
from revsync.ops import dead_letters as dl
from revsync.ops import exceptions as ex
from revsync.ops.ledger import Actor
from revsync.ops.operations import Operations
from revsync.runtime import headers as h
from revsync.runtime.handler import Decision, Emission, Handler, Inbound, caused_envelope
from revsync.runtime.journey import Journal, JourneyBatch
from revsync.runtime.records import Record
from revsync.settings import Settings
from runtime_support import (
    Fault,
    RecordingHandler,
    RuntimeWorld,
    prepare_database,
    read_topic,
    wait_for,
)
from samples import sample_envelope, sample_event, sample_order_line

AGES = ex.DEFAULT_STAGE_AGES
"""Accepted within 15 minutes, invoiced within 3 days, shipped within 7."""
FAILURE = "credit hold on the account"
"""What a failing order's handler says (the Fault's message)."""


# --- order-sync's part, scripted -----------------------------------------------------------------


@dataclass
class OrderSyncScript:
    """Answers each order created as order-sync would: accepted (the recording handler's answer,
    failing first as its faults say), rejected with a reason code, or not answered yet."""

    recording: RecordingHandler
    rejected_topic: str
    rejections: dict[str, RejectionReason] = field(default_factory=dict)
    unanswered: set[str] = field(default_factory=set)

    def __call__(self, inbound: Inbound) -> Decision:
        decision = self.recording(inbound)
        assert isinstance(inbound, OrderCreated)
        key = inbound.crm_order_id
        if key in self.unanswered:
            return replace(decision, emits=())
        reason = self.rejections.get(key)
        if reason is None:
            return decision
        return replace(decision, emits=[Emission(self.rejected_topic, rejection(inbound, reason))])


def rejection(order: OrderCreated, reason: RejectionReason) -> OrderRejected:
    return OrderRejected(
        envelope=caused_envelope(order.envelope, OrderRejected.event_type),
        crm_order_id=order.crm_order_id,
        reason_code=reason,
        message=f"the ERP refused the order: {reason.value}",
        legal_entity=order.legal_entity,
        region=order.region,
        rejected_at=datetime.now(UTC),
    )


def script(
    world: RuntimeWorld,
    *,
    rejected: Iterable[tuple[OrderCreated, RejectionReason]] = (),
    unanswered: Iterable[OrderCreated] = (),
    failing: Iterable[OrderCreated] = (),
) -> OrderSyncScript:
    rejected_topic = next(t.name for t in world.catalog.topics if ".rejected." in t.name)
    return OrderSyncScript(
        world.handler(faults={o.crm_order_id: Fault(permanent=True) for o in failing}),
        rejected_topic,
        {o.crm_order_id: reason for o, reason in rejected},
        {o.crm_order_id for o in unanswered},
    )


def new_order(
    *,
    ago: timedelta = timedelta(0),
    region: str = "NA",
    legal_entity: str = "US01",
    product_line: str = "SENSORS",
) -> OrderCreated:
    """An order activated (and ordered) ``ago``, with ids no other test run has."""
    key = f"8015g0000{uuid.uuid4().hex[:9].upper()}"
    moment = datetime.now(UTC) - ago
    return sample_event(
        OrderCreated,
        crm_order_id=key,
        crm_order_number=f"N-{uuid.uuid4().hex[:10]}",
        region=region,
        legal_entity=legal_entity,
        lines=[sample_order_line(n, product_line=product_line) for n in (1, 2)],
        ordered_at=moment,
        envelope=sample_envelope(
            OrderCreated.event_type, occurred_at=moment, correlation_id=f"corr-{uuid.uuid4()}"
        ),
    )


def next_event(order: OrderCreated) -> OrderCreated:
    """The same order's next event (changed in the CRM again, or read again)."""
    envelope = order.envelope.model_copy(
        update={"event_id": uuid.uuid4(), "occurred_at": datetime.now(UTC)}
    )
    return order.model_copy(update={"envelope": envelope})


def run_until(world: RuntimeWorld, handler: Handler, done: Callable[[], bool]) -> None:
    """The consumer, running until ``done`` holds; stopped then, after its batch committed."""
    loop = world.loop(handler)
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        wait_for(done, timeout_s=60)
    finally:
        loop.stop()
        runner.join(timeout=60)


# --- reading what the tests check ----------------------------------------------------------------


def connect(settings: Settings) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True)


def taken(world: RuntimeWorld, *outcomes: str) -> int:
    """How many records the consumer took with any of ``outcomes`` (its journey says)."""
    with connect(world.settings) as db:
        row = db.execute(
            "SELECT count(*) FROM revsync_journey WHERE consumer = %s AND outcome = ANY(%s)",
            (world.consumer, list(outcomes)),
        ).fetchone()
    assert row is not None
    return int(row[0])


def worklist(
    world: RuntimeWorld,
    *,
    limit: int = 50,
    offset: int = 0,
    ages: Mapping[str, timedelta] = AGES,
    **filters: Any,
) -> ex.Page:
    with connect(world.settings) as db:
        return ex.worklist(db, ex.Filters(**filters), ages, limit=limit, offset=offset)


def mine(world: RuntimeWorld, **filters: Any) -> ex.Page:
    """The worklist of this test's consumer alone."""
    return worklist(world, consumers=frozenset({world.consumer}), **filters)


def refs(page: ex.Page) -> list[str]:
    return [item.ref for item in page.items]


def item(world: RuntimeWorld, ref: str) -> ex.Item:
    with connect(world.settings) as db:
        (found,) = ex.items(db, [ref], AGES)
    return found


def recorded(world: RuntimeWorld, order: OrderCreated, kind: str) -> ex.Item:
    """The one exception of ``kind`` the consumer opened for ``order``, open or not."""
    (found,) = mine(world, status="all", kinds=frozenset({kind}), order=order.crm_order_id).items
    return found


def audit_trail(world: RuntimeWorld, actor: Actor) -> list[tuple[str, int, str]]:
    with connect(world.settings) as db:
        rows = db.execute(
            "SELECT action, count, outcome FROM revsync_audit WHERE actor = %s ORDER BY id",
            (actor.name,),
        ).fetchall()
    return [(action, count, outcome) for action, count, outcome in rows]


def holds(world: RuntimeWorld) -> list[tuple[str, str]]:
    """(key, blocker) of every key the consumer holds."""
    with connect(world.settings) as db:
        rows = db.execute(
            "SELECT convert_from(record_key, 'UTF8'), blocker FROM revsync_key_holds "
            "WHERE consumer = %s ORDER BY 1",
            (world.consumer,),
        ).fetchall()
    return [(key, blocker) for key, blocker in rows]


def handled(world: RuntimeWorld, *events: OrderCreated) -> Callable[[], bool]:
    """Whether the consumer has done the work of every one of ``events``."""
    wanted = {str(event.envelope.event_id) for event in events}
    return lambda: wanted <= {event_id for _, event_id in world.effects()}


# --- the person at the desk ----------------------------------------------------------------------


@pytest.fixture
def operations(world: RuntimeWorld) -> Operations:
    return Operations(
        catalog=world.catalog,
        kafka_config=world.settings.kafka_config(),
        dsn=world.settings.postgres_dsn.get_secret_value(),
        decoder=input_decoder(world.catalog, world.serde()),
        registry=SchemaRegistryClient(world.settings.registry_config()),
        # The audit trail outlives the test: a name of this run's own.
        actor=Actor(f"dana-{uuid.uuid4().hex[:8]}", "User:ANONYMOUS"),
    )


@pytest.fixture
def desk(operations: Operations) -> ex.ExceptionDesk:
    """The desk as the console and ``revsync exceptions act`` get it for the person: dead
    letters retried by the replay job ``revsync dlt replay`` runs, under the same name."""
    return operations.exception_desk(AGES, max_replays=3)


# --- the worklist --------------------------------------------------------------------------------


def test_the_worklist_lists_what_the_runtime_opened_with_filters_counts_and_pages(
    world: RuntimeWorld,
) -> None:
    pricing = new_order(region="EMEA", legal_entity="DE01", product_line="ROBOTICS")
    credit = new_order()
    poison = [new_order(), new_order()]
    accepted = new_order()
    world.produce([pricing, credit, *poison, accepted])

    run_until(
        world,
        script(
            world,
            rejected=[
                (pricing, RejectionReason.PRICING_MISMATCH),
                (credit, RejectionReason.CREDIT_HOLD),
            ],
            failing=poison,
        ),
        lambda: taken(world, "processed", "dead-lettered") == 5,
    )

    page = mine(world)
    by_order = {found.order_key: found for found in page.items}
    # The accepted order is no exception; the rejected and the dead-lettered ones are.
    assert set(by_order) == {pricing.crm_order_id, credit.crm_order_id} | {
        event.crm_order_id for event in poison
    }
    assert page.total == 4
    assert page.counts == {
        "kind": {"rejection": 2, "dead letter": 2},
        "reason": {"PRICING_MISMATCH": 1, "CREDIT_HOLD": 1, "business rule": 2},
        "region": {"EMEA": 1, "NA": 1, "-": 2},  # a dead-lettered order never got so far
        "legal entity": {"DE01": 1, "US01": 1, "-": 2},
    }

    rejected = by_order[pricing.crm_order_id]
    assert rejected.ref.startswith("e")
    assert (rejected.kind, rejected.status, rejected.consumer) == (
        "rejection",
        "open",
        world.consumer,
    )
    assert (rejected.reason, rejected.summary) == (
        "PRICING_MISMATCH",
        "the ERP refused the order: PRICING_MISMATCH",
    )
    assert (rejected.crm_order_number, rejected.region, rejected.legal_entity) == (
        pricing.crm_order_number,
        "EMEA",
        "DE01",
    )
    assert rejected.product_lines == ("ROBOTICS",)
    assert rejected.event_type == OrderRejected.event_type
    assert (rejected.dead_letter, rejected.held, rejected.assignee, rejected.tags) == (
        None,
        False,
        None,
        (),
    )

    letters = read_topic(world.settings, world.catalog.dead_letter_topic(world.consumer), 2)
    assert len(letters) == 2
    for letter in letters:
        dead = by_order[(letter.key() or b"").decode()]
        assert (dead.kind, dead.reason, dead.consumer) == (
            "dead letter",
            "business rule",
            world.consumer,
        )
        assert FAILURE in dead.summary
        assert dead.dead_letter == f"{letter.topic()}:{letter.partition()}:{letter.offset()}"
        origin = [
            h.get(letter.headers(), name)
            for name in (h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET)
        ]
        assert origin[0] == world.created_topic
        assert dead.blocker == ":".join(str(part) for part in origin)
        assert dead.event_type == OrderCreated.event_type
        assert dead.held  # its order's later records would wait behind it
    # A key held by an open dead letter is that dead letter's line, not a second one.
    assert mine(world, kinds=frozenset({ex.HELD_KEY})).items == []

    def chosen(**filters: Any) -> set[str]:
        return set(refs(mine(world, **filters)))

    rejections = {by_order[pricing.crm_order_id].ref, by_order[credit.crm_order_id].ref}
    dead_letters = {by_order[event.crm_order_id].ref for event in poison}
    assert chosen(kinds=frozenset({"rejection"})) == rejections
    assert chosen(kinds=frozenset({"dead letter"})) == dead_letters
    assert chosen(reasons=frozenset({"PRICING_MISMATCH"})) == {rejected.ref}
    assert chosen(reasons=frozenset({"business rule", "CREDIT_HOLD"})) == dead_letters | {
        by_order[credit.crm_order_id].ref
    }
    assert chosen(regions=frozenset({"EMEA"})) == {rejected.ref}
    assert chosen(legal_entities=frozenset({"US01"})) == {by_order[credit.crm_order_id].ref}
    assert chosen(product_lines=frozenset({"ROBOTICS", "PUMPS"})) == {rejected.ref}
    # An order by its CRM id or number or its correlation id.
    for ref in (pricing.crm_order_id, pricing.crm_order_number, pricing.envelope.correlation_id):
        assert chosen(order=ref) == {rejected.ref}
    assert chosen(order=poison[1].crm_order_id) == {by_order[poison[1].crm_order_id].ref}
    assert chosen(status="resolved") == set()
    assert chosen(status="all") == rejections | dead_letters
    # Counts are of the filtered list.
    assert mine(world, kinds=frozenset({"dead letter"})).counts["reason"] == {"business rule": 2}

    # Pages: newest first, each with the whole list's size and counts.
    first, second = mine(world, limit=3), mine(world, limit=3, offset=3)
    assert refs(first) + refs(second) == refs(page)
    assert (len(first.items), len(second.items), first.total, second.total) == (3, 1, 4, 4)
    assert second.counts == page.counts
    opened = [found.opened_at for found in page.items]
    assert opened == sorted(opened, reverse=True)


def test_stuck_orders_are_those_past_their_stages_age(world: RuntimeWorld) -> None:
    waiting = new_order(ago=timedelta(hours=1))  # the ERP never answered
    fresh = new_order()  # nor here, but it is early days
    uninvoiced = new_order(ago=timedelta(days=4))  # accepted 4 days ago, never invoiced
    rejected = new_order(ago=timedelta(hours=1))
    world.produce([waiting, fresh, uninvoiced, rejected])

    run_until(
        world,
        script(
            world,
            unanswered=[waiting, fresh],
            rejected=[(rejected, RejectionReason.UNKNOWN_PRODUCT)],
        ),
        lambda: taken(world, "processed") == 4,
    )

    def stuck(order: OrderCreated, ages: Mapping[str, timedelta] = AGES) -> list[ex.Item]:
        return worklist(
            world, kinds=frozenset({ex.STUCK}), order=order.crm_order_id, ages=ages
        ).items

    (not_accepted,) = stuck(waiting)
    assert (not_accepted.ref, not_accepted.status, not_accepted.order_key) == (
        f"stuck:{waiting.crm_order_id}",
        "open",
        waiting.crm_order_id,
    )
    assert (not_accepted.consumer, not_accepted.reason) == ("order-sync", "not accepted")
    assert not_accepted.summary.startswith("activated, not accepted by the ERP after ")
    assert not_accepted.crm_order_number == waiting.crm_order_number
    (not_invoiced,) = stuck(uninvoiced)
    assert (not_invoiced.consumer, not_invoiced.reason) == ("invoice-sync", "not invoiced")
    assert not_invoiced.summary.startswith("accepted, not invoiced after ")
    assert stuck(fresh) == []  # not 15 minutes yet
    assert stuck(rejected) == []  # a rejection, listed as such
    assert [found.kind for found in worklist(world, order=rejected.crm_order_id).items] == [
        "rejection"
    ]
    # The ages are the reader's: longer ones and neither is stuck yet.
    patient = {**AGES, "accepted": timedelta(hours=2), "invoiced": timedelta(days=5)}
    assert stuck(waiting, patient) == stuck(uninvoiced, patient) == []
    # Found by its number too, and counted with the rest of the filtered list.
    page = worklist(world, order=uninvoiced.crm_order_number)
    assert refs(page) == [f"stuck:{uninvoiced.crm_order_id}"]
    assert page.counts["reason"] == {"not invoiced": 1}
    # A stuck order is read from the order's stages: it is the service's, not the consumer
    # group's, whose own list holds only the rejection it emitted.
    assert refs(
        worklist(world, consumers=frozenset({"order-sync"}), order=waiting.crm_order_id)
    ) == [not_accepted.ref]
    assert [found.kind for found in mine(world).items] == ["rejection"]


def test_a_held_key_is_listed_once_and_its_discard_lets_the_waiting_records_go_on(
    world: RuntimeWorld, desk: ex.ExceptionDesk
) -> None:
    failing = new_order()
    later = next_event(failing)  # waits behind it
    world.produce([failing, later])
    run_until(
        world,
        script(world, failing=[failing]),
        lambda: taken(world, "dead-lettered", "parked") == 2,
    )
    dead = recorded(world, failing, "dead letter")
    assert dead.held
    assert mine(world, kinds=frozenset({ex.HELD_KEY})).items == []

    # Resolved by hand, the dead letter no longer speaks for the key it holds: the key does.
    desk.act("resolve", [dead.ref], "fixed in the ERP by hand")
    held_ref = f"held:{world.consumer}:{world.created_topic}:{failing.crm_order_id.encode().hex()}"
    (held,) = mine(world, kinds=frozenset({ex.HELD_KEY})).items
    assert (held.ref, held.status, held.order_key, held.consumer) == (
        held_ref,
        "open",
        failing.crm_order_id,
        world.consumer,
    )
    assert (held.reason, held.summary, held.held, held.blocker) == (
        "waiting on a retry",
        f"later records of this order wait behind {dead.blocker}",
        True,
        dead.blocker,
    )
    assert refs(mine(world, order=failing.crm_order_id)) == [held_ref]  # the open one

    assert desk.plan("discard", [held_ref]) == [
        ex.Effect(
            held_ref, f"release order {failing.crm_order_id} at {world.consumer}: its records go on"
        )
    ]
    assert desk.plan("retry", [held_ref]) == [
        ex.Effect(held_ref, None, "a held key (waiting on a retry) has nothing to retry")
    ]
    for action in ("resolve", "assign", "tag"):
        assert desk.plan(action, [held_ref], "x") == [
            ex.Effect(held_ref, None, "a held key is dealt with by retry or discard")
        ]
    assert world.effects() == []

    desk.act("discard", [held_ref])

    # Released: the consumer takes the waiting record next (the line stays until it has).
    assert holds(world) == [(failing.crm_order_id, "released")]
    assert item(world, held_ref).reason == "released"
    run_until(world, script(world), handled(world, later))
    assert world.effects() == [(later.crm_order_id, str(later.envelope.event_id))]
    assert holds(world) == []
    assert mine(world, kinds=frozenset({ex.HELD_KEY})).items == []


# --- what closes itself --------------------------------------------------------------------------


def test_a_rejection_is_superseded_by_a_later_one_and_closes_when_its_order_is_accepted(
    world: RuntimeWorld,
) -> None:
    first = new_order()
    second, third = next_event(first), next_event(first)

    world.produce([first])
    run_until(
        world,
        script(world, rejected=[(first, RejectionReason.PRICING_MISMATCH)]),
        lambda: taken(world, "processed") == 1,
    )
    world.produce([second])
    run_until(
        world,
        script(world, rejected=[(second, RejectionReason.CREDIT_HOLD)]),
        lambda: taken(world, "processed") == 2,
    )

    superseded, latest = mine(world, status="all", order=first.crm_order_id).items[::-1]
    assert (superseded.reason, superseded.status, superseded.resolved_by) == (
        "PRICING_MISMATCH",
        "resolved",
        "revsync",
    )
    assert superseded.resolution == "superseded by a later one"
    assert superseded.resolved_at is not None
    assert (latest.reason, latest.status) == ("CREDIT_HOLD", "open")
    assert refs(mine(world)) == [latest.ref]

    world.produce([third])  # the price fixed in the CRM: accepted now
    run_until(world, script(world), lambda: taken(world, "processed") == 3)

    closed = item(world, latest.ref)
    assert (closed.status, closed.resolved_by, closed.resolution) == (
        "resolved",
        "revsync",
        "accepted by the ERP",
    )
    assert mine(world).items == []
    assert set(refs(mine(world, status="resolved"))) == {superseded.ref, latest.ref}
    assert closed.erp_order_number == third.crm_order_number  # the order's row knows it now


def test_a_batch_leaves_open_only_the_rejections_still_standing_at_its_end(
    settings: Settings,
) -> None:
    """Through the journal's own write API, so that the events share one batch for certain
    (a consumer catching up on an order rejected, then fixed and accepted)."""
    prepare_database(settings)
    consumer = f"order-sync-{uuid.uuid4().hex[:8]}"
    journal = Journal(consumer, lambda: datetime.now(UTC))
    topic = "revsync.order.events"
    answered, twice, reopened = (new_order() for _ in range(3))

    def accepted(order: OrderCreated) -> OrderAccepted:
        return sample_event(
            OrderAccepted,
            crm_order_id=order.crm_order_id,
            envelope=sample_envelope(OrderAccepted.event_type),
        )

    def write(*events: OrderRejected | OrderAccepted) -> None:
        batch = JourneyBatch()
        for event in events:
            journal.emitted(batch, event, topic)
        with connect(settings) as db, db.transaction(), db.cursor() as cursor:
            journal.write(cursor, batch, [])

    def rejected(order: OrderCreated, reason: RejectionReason) -> OrderRejected:
        return rejection(next_event(order), reason)  # each rejection of a cause of its own

    write(rejected(answered, RejectionReason.PRICING_MISMATCH))  # from an earlier batch
    write(
        rejected(answered, RejectionReason.CREDIT_HOLD),
        accepted(answered),
        rejected(twice, RejectionReason.PRICING_MISMATCH),
        rejected(twice, RejectionReason.CREDIT_HOLD),
        accepted(reopened),
        rejected(reopened, RejectionReason.UNKNOWN_PRODUCT),
    )

    def exceptions(order: OrderCreated) -> list[tuple[str, str, str | None]]:
        filters = ex.Filters(
            status="all", consumers=frozenset({consumer}), order=order.crm_order_id
        )
        with connect(settings) as db:
            page = ex.worklist(db, filters, AGES)
        return [(found.reason, found.status, found.resolution) for found in page.items]

    assert exceptions(answered) == [("PRICING_MISMATCH", "resolved", "accepted by the ERP")]
    assert exceptions(twice) == [("CREDIT_HOLD", "open", None)]  # the later one
    assert exceptions(reopened) == [("UNKNOWN_PRODUCT", "open", None)]  # rejected after


# --- actions -------------------------------------------------------------------------------------


def test_a_retried_dead_letter_is_replayed_and_closes_once_processed_a_discarded_one_is_purged(
    world: RuntimeWorld, operations: Operations, desk: ex.ExceptionDesk
) -> None:
    retried, discarded = new_order(), new_order()
    behind = next_event(discarded)
    world.produce([retried, discarded, behind])
    run_until(
        world,
        script(world, failing=[retried, discarded]),
        lambda: taken(world, "dead-lettered", "parked") == 3,
    )
    to_retry = recorded(world, retried, "dead letter")
    to_discard = recorded(world, discarded, "dead letter")
    both = [to_retry.ref, to_discard.ref]

    assert desk.plan("retry", both) == [
        ex.Effect(to_retry.ref, f"replay dead letter {to_retry.dead_letter} to {world.consumer}"),
        ex.Effect(
            to_discard.ref, f"replay dead letter {to_discard.dead_letter} to {world.consumer}"
        ),
    ]
    assert desk.plan("discard", [to_discard.ref]) == [
        ex.Effect(
            to_discard.ref,
            f"mark dead letter {to_discard.dead_letter} purged, "
            "releasing its order's later records",
        )
    ]
    # A preview changes nothing (and the audit trail below shows no replay job ran for it).
    assert [found.status for found in mine(world).items] == ["open", "open"]

    assert desk.act("retry", [to_retry.ref]) == [
        ex.Effect(to_retry.ref, f"replay dead letter {to_retry.dead_letter} to {world.consumer}")
    ]
    (replay,) = read_topic(world.settings, world.catalog.replay_topic(world.consumer), 1)
    assert replay.key() == retried.crm_order_id.encode()
    assert h.get(replay.headers(), h.REPLAY_SOURCE) == to_retry.dead_letter
    assert item(world, to_retry.ref).status == "open"  # until the consumer has processed it

    desk.act("discard", [to_discard.ref])

    gone = item(world, to_discard.ref)
    assert (gone.status, gone.resolved_by, gone.resolution) == (
        "discarded",
        desk.actor.name,
        f"discarded by {desk.actor.name}",
    )
    assert gone.resolved_at is not None
    purged = operations.select(dl.Selection(states=frozenset({"purged"})))
    assert [letter.ref for letter in purged] == [to_discard.dead_letter]
    assert (discarded.crm_order_id, "released") in holds(world)

    # The cause fixed: the consumer takes the replayed record and the released key's next one.
    run_until(world, script(world), handled(world, retried, behind))

    done = item(world, to_retry.ref)
    assert (done.status, done.resolved_by, done.resolution) == (
        "resolved",
        "revsync",
        "processed on a later attempt",
    )
    assert str(discarded.envelope.event_id) not in {e for _, e in world.effects()}
    assert holds(world) == []
    assert mine(world).items == []
    assert desk.plan("retry", both) == [
        ex.Effect(to_retry.ref, None, "already resolved"),
        ex.Effect(to_discard.ref, None, "already discarded"),
    ]
    assert audit_trail(world, desk.actor) == [
        ("retry exceptions dry run", 2, "read"),
        ("discard exceptions dry run", 1, "read"),
        ("replay", 1, "started"),
        ("replay", 1, "completed: 1 replayed, 0 quarantined"),
        ("retry exceptions", 1, "retry done"),
        ("discard exceptions", 1, "discard done"),
        ("retry exceptions dry run", 0, "read"),
    ]


def test_a_retried_rejection_or_stuck_order_goes_to_order_syncs_replay_topic_as_a_change(
    world: RuntimeWorld, desk: ex.ExceptionDesk
) -> None:
    rejected = new_order()
    waiting = new_order(ago=timedelta(hours=1))
    uninvoiced = new_order(ago=timedelta(days=4))
    world.produce([rejected, waiting, uninvoiced])
    run_until(
        world,
        script(
            world, rejected=[(rejected, RejectionReason.PRICING_MISMATCH)], unanswered=[waiting]
        ),
        lambda: taken(world, "processed") == 3,
    )
    refused = recorded(world, rejected, "rejection").ref
    stuck, not_invoiced = f"stuck:{waiting.crm_order_id}", f"stuck:{uninvoiced.crm_order_id}"
    unknown = ["e0", f"stuck:{new_order().crm_order_id}", f"held:{world.consumer}:t:00"]

    def again(order: OrderCreated) -> str:
        return f"read order {order.crm_order_number} from the CRM again and run it as a new attempt"

    assert desk.plan("retry", [refused, stuck, not_invoiced, *unknown]) == [
        ex.Effect(refused, again(rejected)),
        ex.Effect(stuck, again(waiting)),
        ex.Effect(not_invoiced, None, "a stuck order (not invoiced) has nothing to retry"),
        *(ex.Effect(ref, None, "no such exception") for ref in unknown),
    ]
    assert desk.plan("discard", [refused, stuck]) == [
        ex.Effect(
            refused, f"close the rejection of order {rejected.crm_order_number} without a retry"
        ),
        ex.Effect(stuck, None, "a stuck order is not discarded; retry it or look at it"),
    ]

    desk.act("retry", [refused, stuck, not_invoiced])

    # order-sync's replay topic as this catalog names it, one change event per order, each
    # ordered behind the order's own change events (its key, the CRM change topic).
    topic = world.catalog.replay_topic(world.catalog.consumer_of("order_sync"))
    assert topic == world.catalog.replay_topic(world.consumer)
    changes = world.catalog.change_topics["Order"]
    records = read_topic(world.settings, topic, 2)
    assert sorted(r.key() or b"" for r in records) == sorted(
        o.crm_order_id.encode() for o in (rejected, waiting)
    )
    for message in records:
        key = (message.key() or b"").decode()
        record = Record.of(message, trusted=True)
        assert record.problem is None
        assert record.hold == (key.encode(), changes)
        replay_id = h.get(message.headers(), h.REPLAY_ID)
        assert replay_id is not None
        assert str(uuid.UUID(replay_id)) == replay_id
        change = decode_change(topic, message.value())
        assert change.entity == "Order"
        assert change.header.recordIds == [key]
        assert change.header.changeType is ChangeType.GAP_UPDATE  # no fields: read the order
        assert change.header.retry == f"{RETRY_PREFIX}{replay_id}"
        assert change.header.changeOrigin == f"revsync;retried by {desk.actor.name}"
    # A rejection closes when its order is accepted, not when it is retried.
    assert item(world, refused).status == "open"
    assert audit_trail(world, desk.actor) == [
        ("retry exceptions dry run", 2, "read"),
        ("discard exceptions dry run", 1, "read"),
        ("retry exceptions", 2, "retry done"),
    ]


def test_a_duplicate_customer_is_retried_by_its_account_and_closes_once_mastered(
    world: RuntimeWorld, desk: ex.ExceptionDesk
) -> None:
    """customer-sync's business exception: keyed by the account, retried by customer-sync
    reading the account again, closed when the account's customer is mastered."""
    account = f"001{uuid.uuid4().hex[:15].upper()}"
    consumer = world.catalog.consumer_of("customer_sync")
    journal = Journal(consumer, lambda: datetime.now(UTC))

    def emit(event: DuplicateCustomerSuspected | CustomerUpserted) -> None:
        batch = JourneyBatch()
        journal.emitted(batch, event, world.catalog.topic_for(event.schema_name).name)
        with connect(world.settings) as db, db.transaction(), db.cursor() as cursor:
            journal.write(cursor, batch, [])

    suspected = sample_event(
        DuplicateCustomerSuspected,
        crm_account_id=account,
        envelope=sample_envelope(DuplicateCustomerSuspected.event_type),
    )
    emit(suspected)
    [found] = worklist(world, status="all", consumers=frozenset({consumer}), order=account).items
    assert (found.kind, found.reason, found.summary, found.status) == (
        "rejection",
        "DUPLICATE_CUSTOMER",
        suspected.message,
        "open",
    )

    assert desk.plan("retry", [found.ref]) == [
        ex.Effect(
            found.ref, f"read account {account} from the CRM again and run it as a new attempt"
        )
    ]
    desk.act("retry", [found.ref])

    topic = world.catalog.replay_topic(consumer)
    [message] = read_topic(world.settings, topic, 1)
    assert message.key() == account.encode()
    assert h.get(message.headers(), h.ORIGINAL_TOPIC) == world.catalog.change_topics["Account"]
    change = decode_change(topic, message.value())
    assert (change.entity, change.header.recordIds) == ("Account", [account])
    assert change.header.changeType is ChangeType.GAP_UPDATE
    assert change.header.retry is not None

    emit(
        sample_event(
            CustomerUpserted,
            crm_account_id=account,
            envelope=sample_envelope(CustomerUpserted.event_type),
        )
    )
    closed = item(world, found.ref)
    assert (closed.status, closed.resolved_by, closed.resolution) == (
        "resolved",
        "revsync",
        "mastered in the ERP",
    )


def test_resolve_discard_assign_and_tag_are_done_under_the_persons_name_and_audited(
    world: RuntimeWorld, desk: ex.ExceptionDesk
) -> None:
    pricing, credit = new_order(), new_order()
    world.produce([pricing, credit])
    run_until(
        world,
        script(
            world,
            rejected=[
                (pricing, RejectionReason.PRICING_MISMATCH),
                (credit, RejectionReason.CREDIT_HOLD),
            ],
        ),
        lambda: taken(world, "processed") == 2,
    )
    first, second = (recorded(world, o, "rejection").ref for o in (pricing, credit))
    both = [first, second]
    who = desk.actor.name

    assert desk.plan("assign", both, "  sam ") == [
        ex.Effect(first, "assign to sam"),
        ex.Effect(second, "assign to sam"),
    ]
    desk.act("assign", both, "  sam ")
    assert {found.assignee for found in mine(world).items} == {"sam"}
    assert set(refs(mine(world, assignee="sam"))) == set(both)
    assert refs(mine(world, assignee="alex")) == []

    assert desk.plan("tag", [first], " Pricing , URGENT,pricing") == [
        ex.Effect(first, "tag pricing, urgent")
    ]
    desk.act("tag", [first], " Pricing , URGENT,pricing")
    desk.act("tag", [first], "emea, urgent")
    assert item(world, first).tags == ("emea", "pricing", "urgent")
    assert item(world, second).tags == ()
    assert refs(mine(world, tag="urgent")) == refs(mine(world, tag=" Urgent")) == [first]

    assert desk.plan("resolve", [first], "price book corrected") == [
        ex.Effect(first, "resolve: price book corrected")
    ]
    desk.act("resolve", [first], "price book corrected")
    desk.act("discard", [second])

    resolved, discarded = item(world, first), item(world, second)
    assert (resolved.status, resolved.resolved_by, resolved.resolution) == (
        "resolved",
        who,
        "price book corrected",
    )
    assert (discarded.status, discarded.resolved_by, discarded.resolution) == (
        "discarded",
        who,
        f"discarded by {who}",
    )
    assert mine(world).items == []
    assert refs(mine(world, status="resolved")) == [first]
    assert refs(mine(world, status="discarded")) == [second]
    assert refs(mine(world, status="all", tag="pricing")) == [first]
    # Closed is closed: nothing more is done to it, and nothing of it changes.
    assert desk.act("resolve", both, "again") == [
        ex.Effect(first, None, "already resolved"),
        ex.Effect(second, None, "already discarded"),
    ]
    assert item(world, first).resolution == "price book corrected"

    assert audit_trail(world, desk.actor) == [
        ("assign exceptions dry run", 2, "read"),
        ("assign exceptions", 2, "assign done"),
        ("tag exceptions dry run", 1, "read"),
        ("tag exceptions", 1, "tag done"),
        ("tag exceptions", 1, "tag done"),
        ("resolve exceptions dry run", 1, "read"),
        ("resolve exceptions", 1, "resolve done"),
        ("discard exceptions", 1, "discard done"),
        ("resolve exceptions", 0, "nothing to do"),
    ]


def test_what_cannot_be_done_is_refused_or_said_and_changes_nothing(
    world: RuntimeWorld, desk: ex.ExceptionDesk
) -> None:
    order = new_order()
    world.produce([order])
    run_until(
        world,
        script(world, rejected=[(order, RejectionReason.INVALID_ORDER)]),
        lambda: taken(world, "processed") == 1,
    )
    ref = recorded(world, order, "rejection").ref
    before = item(world, ref)

    refusals = [
        ("explode", "", "no action 'explode'; actions are retry, discard, resolve, assign, tag"),
        ("assign", "  ", "name who the exceptions are assigned to"),
        ("tag", " , ", "name at least one tag"),
    ]
    for action, value, why in refusals:
        with pytest.raises(dl.OperationRefused) as refused:
            desk.act(action, [ref], value)
        assert str(refused.value) == why
        # The preview says the same, for each exception, and promises nothing.
        assert desk.plan(action, [ref], value) == [ex.Effect(ref, None, why)]

    unknown = [
        "e0",
        "e-1",
        "nonsense",
        f"stuck:{new_order().crm_order_id}",
        f"held:{world.consumer}:{world.created_topic}:{order.crm_order_id.encode().hex()}",
    ]
    for action in ex.ACTIONS:
        assert desk.act(action, unknown, "x") == [
            ex.Effect(ref, None, "no such exception") for ref in unknown
        ]
    assert item(world, ref) == before
    assert audit_trail(world, desk.actor) == [
        ("explode exceptions dry run", 0, "read"),
        ("assign exceptions dry run", 0, "read"),
        ("tag exceptions dry run", 0, "read"),
        *((f"{action} exceptions", 0, "nothing to do") for action in ex.ACTIONS),
    ]


def test_an_orders_facts_keep_its_product_lines_as_written(settings: Settings) -> None:
    prepare_database(settings)
    key = f"8015g0000LINES{uuid.uuid4().hex[:6]}"
    lines = ['SENSORS "PRO"', "A\\B", "C,D", "{E}"]
    batch = JourneyBatch()
    batch.facts[key] = {"product_lines": lines, "region": "EMEA"}
    later = JourneyBatch()
    later.facts[key] = {"product_lines": [], "currency": "EUR"}  # says nothing of the lines
    journal = Journal("order-sync-lines", lambda: datetime.now(UTC))
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as db:
        with db.cursor() as cursor:
            journal.write(cursor, batch, [])
            journal.write(cursor, later, [])
        row = db.execute(
            "SELECT product_lines, region, currency FROM revsync_orders WHERE crm_order_id = %s",
            (key,),
        ).fetchone()
    assert row == (lines, "EMEA", "EUR")
