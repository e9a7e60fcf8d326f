"""No customer data in errors, with every service running: orders bearing addresses, emails and
phone numbers go through the pipeline, some to the dead letters (the ERP's error body and a CRM
trigger's message quoting them back, a malformed change event), and the ERP's outbox holds two
rows with them in the wrong fields. None of them shows in what revsync writes of those failures:
the dead letters' headers, the services' logs, a masked export."""

from __future__ import annotations

import copy
import random
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Message, Producer
from psycopg.types.json import Jsonb
from sandbox import scenario
from sandbox.harness import REVSYNC, Pipeline

from revsync.contracts.catalog import TopicFormat
from revsync.ports.erp import Customer, CustomerStatus
from revsync.runtime import headers as h
from revsync.settings import Settings
from runtime_support import read_topic, wait_for

ENTITY = "US01"


@dataclass(frozen=True)
class Contact:
    """One order's customer data, unique to the run so that finding it anywhere means a leak."""

    street: str
    postal_code: str
    email: str
    phone: str

    @classmethod
    def made_up(cls, tag: str, n: int) -> Contact:
        return cls(
            street=f"{n} Quill Lane {tag}",
            postal_code=f"QL{n}{tag[:5].upper()}",
            email=f"buyer.{n}.{tag}@example.test",
            phone=f"+1 312 555 {n}{int(tag[:3], 16):04d}",
        )

    @property
    def fields(self) -> dict[str, str]:
        """The CRM order's fields that carry it."""
        return {
            "BillingStreet": self.street,
            "ShippingStreet": self.street,
            "BillingPostalCode": self.postal_code,
            "ShippingPostalCode": self.postal_code,
            "BillingEmailAddress": self.email,
            "BillingPhoneNumber": self.phone,
        }


def orders_for(
    data: scenario.MasterData, account: str, contacts: list[Contact], rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Valid orders of ``account``, each with one of ``contacts``."""
    planned = scenario.orders(data, 4 * len(contacts), rng, invalid_share=0.0)
    ours = (order for order in planned if order.record["Legal_Entity__c"] == ENTITY)
    for order, contact in zip(ours, contacts, strict=False):
        yield {**order.record, "AccountId": account, **contact.fields}


def customer_with_a_phone(pipeline: Pipeline, tag: str, phone: str) -> str:
    """A CRM account with a phone number, mastered as an active ERP customer."""
    erp_id, name = f"C-PII-{tag}", "Quill & Ledger Supplies"
    (account,) = pipeline.crm.insert(
        "Account", [{"Name": name, "ERP_Customer_Id__c": erp_id, "Phone": phone}]
    )
    pipeline.erp.seed_customers(
        [
            Customer(
                erp_id,
                name,
                account,
                ENTITY,
                CustomerStatus.ACTIVE,
                Decimal(5_000_000),
                "USD",
            )
        ]
    )
    return account


def misfiled_outbox_rows(settings: Settings, tag: str, contact: Contact) -> list[uuid.UUID]:
    """Two ERP outbox rows, copies of a real invoice with the customer's phone in its amount
    due and email in its posting time, as a shifted export of the ERP would write them."""
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as db:
        found = db.execute(
            "SELECT payload FROM erp.outbox WHERE type = 'InvoicePosted' LIMIT 1"
        ).fetchone()
        assert found is not None, "no invoice was posted"
        rows = []
        misfiled = [("amount_due", contact.phone), ("posted_at", contact.email)]
        for n, (field, value) in enumerate(misfiled):
            row_id, key = uuid.uuid4(), f"801OUTBOX{tag}{n}"
            payload = copy.deepcopy(found[0])
            payload["sales_order"]["external_id"] = key
            payload["invoice"][field] = value
            db.execute(
                "INSERT INTO erp.outbox (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (%s, 'invoice', %s, 'InvoicePosted', %s)",
                (row_id, key, Jsonb(payload)),
            )
            rows.append(row_id)
    return rows


def text(letter: Message) -> tuple[str, str]:
    """A dead letter's headers (names and values) and its value, as text."""
    headers = "\n".join(
        f"{name}: {h.get(letter.headers(), name)}" for name, _ in h.as_list(letter.headers())
    )
    return headers, (letter.value() or b"").decode(errors="replace")


def test_no_customer_data_reaches_dead_letter_headers_logs_or_a_masked_export(
    settings: Settings,
    start_pipeline: Callable[..., Pipeline],
    rng: random.Random,
    tmp_path: Path,
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    tag = uuid.uuid4().hex[:8]
    contacts = [Contact.made_up(tag, n) for n in range(1, 7)]
    account_phone = f"+1 312 555 9{int(tag[3:6], 16):04d}"
    account = customer_with_a_phone(pipeline, tag, account_phone)
    orders = orders_for(data, account, contacts, rng)

    # Two orders go all the way: invoiced, shipped, written back to the CRM by every service.
    pipeline.push([scenario.PlannedOrder(next(orders), scenario.SHIPPED) for _ in range(2)])
    outcome = pipeline.wait_settled(180)
    assert (outcome.settled, outcome.wrong) == (2, []), outcome

    # The ERP refuses creates, its error body quoting the ship-to back; the CRM refuses to take
    # back the rejection of orders it holds in no currency revsync knows, a trigger's message
    # quoting their contact and address; a change event is malformed.
    locked = f"PO-LOCKED-{tag}"
    pipeline.crm.set_triggers(
        [
            {
                "sobject": "Order",
                "field": "PoNumber",
                "equals": locked,
                "message": "Order {OrderNumber} for {BillingEmailAddress} ({BillingPhoneNumber}),"
                " shipping to {ShippingStreet} {ShippingPostalCode}, is under review",
            }
        ]
    )
    pipeline.erp.set_faults(echo_rate=1)
    pipeline.crm.create_orders([next(orders), next(orders)])
    refused = pipeline.crm.create_orders(
        [{**next(orders), "CurrencyIsoCode": "ZZZ", "PoNumber": locked} for _ in range(2)]
    )
    cdc_topic = next(
        t.name for t in pipeline.catalog.topics if t.format is TopicFormat.SALESFORCE_CDC
    )
    producer = Producer(settings.kafka_config())
    producer.produce(cdc_topic, key=f"801POISON{tag}", value=b'{"payload": {}} trailing bytes')
    assert producer.flush(10) == 0
    dead_letters = pipeline.catalog.dead_letter_topic(pipeline.catalog.consumer_of("order_sync"))
    letters = read_topic(settings, dead_letters, expect=5, timeout_s=120)
    assert len(letters) == 5
    unpublishable = misfiled_outbox_rows(settings, tag, contacts[0])
    publisher_log = pipeline.processes["erp-outbox-publisher"].log
    wait_for(lambda: all(str(row) in publisher_log.read_text() for row in unpublishable))

    streets = [c.street for c in contacts] + [c.postal_code for c in contacts]
    reachable = [c.email for c in contacts] + [c.phone for c in contacts] + [account_phone]
    everything = streets + reachable

    # The dead letters: revsync's headers say what failed by code and field, and carry none of
    # it. A value is the record itself, byte for byte, kept for its replay: an OrderCreated
    # carries the addresses by contract; nothing else that failed carried any.
    created_topic = pipeline.catalog.topic_for("io.revsync.events.OrderCreated").name
    for letter in letters:
        headers, value = text(letter)
        assert not [found for found in everything if found in headers], headers
        assert not [found for found in reachable if found in value]
        if h.get(letter.headers(), h.ORIGINAL_TOPIC) != created_topic:
            assert not [found for found in streets if found in value]
    assert any(contact.street in text(letter)[1] for letter in letters for contact in contacts), (
        "the dead-lettered OrderCreated events carry their addresses"
    )
    told = [h.get(letter.headers(), h.ERROR_MESSAGE) or "" for letter in letters]
    assert told.count("erp: HTTP 400 on POST /api/v1/sales-orders (invalid_request)") == 2
    assert sorted(message for message in told if message.startswith("Salesforce")) == sorted(
        f"Salesforce refused Order {order}: FIELD_CUSTOM_VALIDATION_EXCEPTION" for order in refused
    )
    assert [message for message in told if message.startswith(f"{cdc_topic}: not JSON")]

    # The services' logs: the refused rows named by their field, again every 30 s, without it.
    for name in pipeline.deployables:
        log = (pipeline.workdir / f"{name}.log").read_text(errors="replace")
        assert not [found for found in everything if found in log], name
    published = publisher_log.read_text()
    assert "invoice.amount_due: expected a decimal string, got other text" in published
    assert "invoice.posted_at: expected an ISO timestamp" in published

    # An export, masked as dlt export masks by default (not --raw, which adds the bytes).
    export = tmp_path / "dead-letters.jsonl"
    command = ["dlt", "export", "--service", "order-sync", "--to", str(export)]
    exported = subprocess.run(
        [str(REVSYNC), *command, "--actor", f"e2e-{tag}"],
        env=pipeline.service_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    lines = export.read_text()
    assert lines.count("\n") == 5
    assert not [found for found in everything if found in lines]
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in lines
    assert '"street": "***"' in lines
