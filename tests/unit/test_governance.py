"""Governance of the contracts: the catalog, lint rules and compatibility with released versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from typer.testing import CliRunner

from contract_fixtures import (
    BREAKING,
    ORDER_CREATED,
    SCHEMAS_DIR,
    Schema,
    copy_contracts,
    edit_schema,
    field,
)
from revsync.cli import app
from revsync.contracts import topics
from revsync.contracts.asyncapi import build_document
from revsync.contracts.catalog import CatalogError, TopicKind, load_catalog
from revsync.contracts.lint import lint
from revsync.contracts.schemas import ReleaseRecord, SchemaRepository, check_compatibility


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    return copy_contracts(tmp_path / "avro")


def findings(folder: Path) -> list[str]:
    return [
        str(f) for f in lint(load_catalog(folder), SchemaRepository(folder), ReleaseRecord(folder))
    ]


def breaks(folder: Path) -> list[str]:
    return [
        str(b)
        for b in check_compatibility(
            load_catalog(folder), SchemaRepository(folder), ReleaseRecord(folder)
        )
    ]


def test_the_repository_contracts_are_clean_and_compatible() -> None:
    assert findings(SCHEMAS_DIR) == []
    assert breaks(SCHEMAS_DIR) == []


def test_every_subject_has_a_release() -> None:
    releases = ReleaseRecord(SCHEMAS_DIR)
    for topic in load_catalog(SCHEMAS_DIR).avro_topics:
        assert releases.versions(topic.value_subject), topic.value_subject


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: field(s, "crm_order_number").pop("doc"), "crm_order_number: needs a doc"),
        (
            lambda s: field(s, "grand_total").update(type="double"),
            "grand_total: money must be an Avro decimal",
        ),
        (
            lambda s: field(s, "ordered_at").update(type="long"),
            "ordered_at: an _at field is a UTC timestamp-millis",
        ),
        (
            lambda s: field(s, "requested_delivery_date").update(type=["null", "string"]),
            "requested_delivery_date: a _date field is an Avro date",
        ),
        (
            lambda s: field(s, "erp_customer_id").update(type=["string", "null"]),
            'erp_customer_id: an optional field is ["null", T] with "default": null',
        ),
        (
            lambda s: field(s, "crm_order_id").update(name="crmOrderId"),
            "crmOrderId: field name 'crmOrderId' must be snake_case",
        ),
        (lambda s: s.update(namespace="com.example"), "OrderCreated: namespace must be"),
        (lambda s: s.pop("doc"), "OrderCreated: needs a doc"),
        (
            lambda s: s["fields"].append(
                {"name": "sales_channel", "type": "string", "doc": "Where the order came from."}
            ),
            "sales_channel: added since revsync.order.created.v1-value v1; a new field needs a "
            "default",
        ),
    ],
)
def test_lint_names_file_and_field(
    contracts: Path, change: Callable[[Schema], None], expected: str
) -> None:
    edit_schema(contracts, ORDER_CREATED, change)
    assert any(
        finding.startswith(f"{ORDER_CREATED}:") and expected in finding
        for finding in findings(contracts)
    ), findings(contracts)


def test_lint_wants_enum_defaults(contracts: Path) -> None:
    def drop_default(schema: Schema) -> None:
        field(schema, "completeness")["type"].pop("default")

    edit_schema(contracts, "io.revsync.events.ShipmentConfirmed.avsc", drop_default)
    assert (
        "io.revsync.events.ShipmentConfirmed.avsc:completeness<ShipmentCompleteness>: enum needs "
        "a default symbol, so readers survive symbols added later"
    ) in findings(contracts)


ORDER_CANCELLED = "io.revsync.events.OrderCancelled.avsc"


def without_namespace(folder: Path, *, filed_as_bare_name: bool) -> None:
    """OrderCancelled loses its namespace; filed as ``OrderCancelled.avsc`` and named so by the
    catalog, as someone adding a schema without one would, or left where it was."""
    edit_schema(folder, ORDER_CANCELLED, lambda s: s.pop("namespace"))
    if filed_as_bare_name:
        (folder / ORDER_CANCELLED).rename(folder / "OrderCancelled.avsc")
        catalog = folder / "catalog.yaml"
        text = catalog.read_text().replace(
            "schema: io.revsync.events.OrderCancelled\n", "schema: OrderCancelled\n"
        )
        catalog.write_text(text)


def test_lint_reports_a_schema_without_a_namespace(contracts: Path) -> None:
    without_namespace(contracts, filed_as_bare_name=True)

    assert (
        "OrderCancelled.avsc:OrderCancelled: has no namespace; namespace must be io.revsync.events"
    ) in findings(contracts)
    result = CliRunner().invoke(app, ["schemas", "lint", "--dir", str(contracts)])
    assert result.exit_code == 1, result.output
    assert "has no namespace" in result.output


def test_check_reads_a_schema_without_a_namespace_rather_than_crash(contracts: Path) -> None:
    without_namespace(contracts, filed_as_bare_name=True)

    # Avro resolves records by their unqualified names: dropping the namespace breaks no
    # reader, so the finding is lint's alone.
    assert breaks(contracts) == []
    result = CliRunner().invoke(app, ["schemas", "check", "--dir", str(contracts)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    assert "compatible with every released version" in result.output


def test_check_names_a_catalog_schema_no_file_defines_rather_than_crash(contracts: Path) -> None:
    without_namespace(contracts, filed_as_bare_name=False)

    result = CliRunner().invoke(app, ["schemas", "check", "--dir", str(contracts)])
    assert result.exit_code == 2, result.output
    assert "error: no schema io.revsync.events.OrderCancelled" in result.output
    assert "namespace must be io.revsync.events" in "\n".join(findings(contracts))


def test_a_nested_type_without_a_namespace_takes_the_enclosing_one(contracts: Path) -> None:
    def drop_nested_namespace(schema: Schema) -> None:
        field(schema, "source_system")["type"].pop("namespace")

    edit_schema(contracts, "io.revsync.events.Envelope.avsc", drop_nested_namespace)
    assert findings(contracts) == []
    assert breaks(contracts) == []


@pytest.mark.parametrize("case", BREAKING, ids=list(BREAKING))
def test_check_catches_a_breaking_change(contracts: Path, case: str) -> None:
    file, change, expected = BREAKING[case]
    expected = expected.format(
        order_created="revsync.order.created.v1", order_rejected="revsync.order.rejected.v1"
    )
    edit_schema(contracts, file, change)
    assert any(found.startswith(expected) for found in breaks(contracts)), breaks(contracts)
    result = CliRunner().invoke(app, ["schemas", "check", "--dir", str(contracts)])
    assert result.exit_code == 1
    assert "break:" in result.output


def test_an_optional_field_with_a_default_is_compatible(contracts: Path) -> None:
    edit_schema(
        contracts,
        ORDER_CREATED,
        lambda s: s["fields"].append(
            {
                "name": "sales_channel",
                "type": ["null", "string"],
                "default": None,
                "doc": "Where the order came from.",
            }
        ),
    )
    assert breaks(contracts) == []
    assert findings(contracts) == []
    result = CliRunner().invoke(app, ["schemas", "release", "--dir", str(contracts)])
    assert result.exit_code == 0, result.output
    assert "released revsync.order.created.v1-value v2" in result.output
    assert len(ReleaseRecord(contracts).versions("revsync.order.created.v1-value")) == 2


def test_catalog_derives_each_consumers_retry_dead_letter_and_replay_topics() -> None:
    plan = {topic.name: topic for topic in load_catalog(SCHEMAS_DIR).topic_plan()}
    assert plan["revsync.invoice-sync.retry.10s"].kind is TopicKind.RETRY
    assert plan["revsync.invoice-sync.retry.1m"].consumer == "invoice-sync"
    dead_letters = plan["revsync.invoice-sync.dlt"]
    assert dead_letters.kind is TopicKind.DEAD_LETTER
    assert dead_letters.config == {"retention.ms": str(30 * 86_400_000), "cleanup.policy": "delete"}
    assert plan["revsync.order.rejected.v1"].config["retention.ms"] == str(30 * 86_400_000)
    assert plan["revsync.order.created.v1"].partitions == 6
    replays = plan["revsync.invoice-sync.replay"]
    assert (replays.kind, replays.consumer) == (TopicKind.REPLAY, "invoice-sync")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda c: c["topics"][0].update(name="orders"),
            "does not follow revsync.<entity>.<event>.v<major>",
        ),
        (
            lambda c: c["topics"][0].update(consumers=["nobody"]),
            "names consumers not declared under consumers: nobody",
        ),
        (lambda c: c["defaults"].update(retention="a week"), "defaults.retention"),
        (lambda c: c.update(compatibility="NONE"), "compatibility"),
        (lambda c: c["topics"].append(c["topics"][0]), "topics listed twice"),
        (lambda c: c["topics"][0].update(colour="blue"), "topics.0.colour"),
    ],
)
def test_a_bad_catalog_is_refused_naming_the_entry(
    contracts: Path, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    path = contracts / "catalog.yaml"
    catalog = yaml.safe_load(path.read_text())
    change(catalog)
    path.write_text(yaml.safe_dump(catalog))
    with pytest.raises(CatalogError, match=named):
        load_catalog(contracts)


def test_asyncapi_document_covers_every_topic_and_operation() -> None:
    catalog = load_catalog(SCHEMAS_DIR)
    schemas = SchemaRepository(SCHEMAS_DIR)
    document = build_document(catalog, schemas)
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {topic.name for topic in catalog.topic_plan()}
    created = document["components"]["messages"]["OrderCreated"]
    assert created["payload"]["schema"] == schemas.expanded("io.revsync.events.OrderCreated")
    operations = document["operations"]
    assert operations["order_sync.send.revsync_order_created_v1"]["action"] == "send"
    receive = operations["invoice-sync.receive.revsync_invoice_posted_v1"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/revsync_invoice_posted_v1"}


def test_a_topic_one_broker_does_not_know_yet_is_waited_for_not_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[list[topics.TopicChange] | KafkaException] = [
        KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)),
        [],
    ]

    def plan_changes(_admin: object, _catalog: object) -> list[topics.TopicChange]:
        answer = answers.pop(0)
        if isinstance(answer, KafkaException):
            raise answer
        return answer

    monkeypatch.setattr(topics, "plan_changes", plan_changes)
    topics._await_convergence(None, load_catalog(SCHEMAS_DIR))  # type: ignore[arg-type]
    assert answers == []

    answers.append(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    with pytest.raises(KafkaException):
        topics._await_convergence(None, load_catalog(SCHEMAS_DIR))  # type: ignore[arg-type]


class BetweenLeaders:
    """A consumer whose partition answers ``errors`` in turn, then its watermarks."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 42


def test_watermarks_are_asked_again_while_a_partition_is_between_leaders() -> None:
    consumer = BetweenLeaders(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)

    assert topics.watermarks(cast(Any, consumer), TopicPartition("t", 0)) == (3, 42)
    assert consumer.asked == 3


def test_watermarks_raise_any_other_failure_at_once_and_a_lasting_one_in_time() -> None:
    refused = BetweenLeaders(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        topics.watermarks(cast(Any, refused), TopicPartition("t", 0))
    assert refused.asked == 1

    leaderless = BetweenLeaders(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(KafkaException):
        topics.watermarks(cast(Any, leaderless), TopicPartition("t", 0), timeout_s=0.3)
    assert 1 < leaderless.asked < 100
