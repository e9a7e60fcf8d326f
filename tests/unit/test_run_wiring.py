"""How `revsync run` wires a deployable: the decoder per topic format, the consumer policy and
the adapters from its settings, the process API's identity provider, which fail naming what is
missing."""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from typing import Any, cast

import pytest

from contract_fixtures import SCHEMAS_DIR
from process_api.service import configured
from revsync.connectors.cdc import RecordChange
from revsync.contracts.catalog import Catalog, TopicFormat, load_catalog
from revsync.contracts.events import Event, OrderCreated
from revsync.contracts.serde import EventSerde
from revsync.deployables import Context, input_decoder
from revsync.errors import CorruptPayload
from revsync.run import policy_from
from revsync.runtime.loop import Policy
from revsync.runtime.observability import Liveness
from revsync.settings import (
    ProcessApiSettings,
    ServiceSettings,
    Settings,
    SettingsError,
    known_variables,
    reject_unknown_variables,
)
from samples import sample_event

CRM_VARIABLES = (
    "REVSYNC_CRM_INSTANCE_URL",
    "REVSYNC_CRM_CLIENT_ID",
    "REVSYNC_CRM_CLIENT_SECRET",
    "REVSYNC_CRM_API_VERSION",
    "REVSYNC_CRM_CLIENT_NAME",
    "REVSYNC_CRM_INTEGRATION_USER_ID",
)
ERP_VARIABLES = (
    "REVSYNC_ERP_BASE_URL",
    "REVSYNC_ERP_API_TOKEN",
    "REVSYNC_ERP_OUTBOX_DSN",
    "REVSYNC_ERP_OUTBOX_TABLE",
    "REVSYNC_ERP_OUTBOX_PUBLISHED_COLUMN",
    "REVSYNC_ERP_OUTBOX_CHANNEL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REVSYNC_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SCHEMAS_DIR)


class RecordingSerde:
    """Stands in for the Avro serde: answers every topic with one event, noting each call."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.calls: list[tuple[str, bytes | None]] = []

    def deserialize(self, topic: str, data: bytes | None) -> Event:
        self.calls.append((topic, data))
        return self.event


def cdc_topic(catalog: Catalog) -> str:
    return next(t.name for t in catalog.topics if t.format is TopicFormat.SALESFORCE_CDC)


CHANGE = {
    "replayId": 7,
    "payload": {
        "ChangeEventHeader": {
            "entityName": "Order",
            "recordIds": ["801AB00000Ord01AAA"],
            "changeType": "UPDATE",
            "transactionKey": "tx-1",
            "sequenceNumber": 1,
            "commitTimestamp": 1_764_583_200_000,
        },
        "Status": "Activated",
    },
}


def test_the_crm_change_topic_is_read_by_the_cdc_decoder(catalog: Catalog) -> None:
    serde = RecordingSerde(sample_event(OrderCreated))
    decode = input_decoder(catalog, cast(EventSerde, serde))

    change = decode(cdc_topic(catalog), json.dumps(CHANGE).encode())

    assert isinstance(change, RecordChange)
    assert change.replay_id == 7
    assert change.fields == {"Status": "Activated"}
    assert serde.calls == []


def test_bad_bytes_on_the_crm_change_topic_fail_as_the_cdc_decoder_says(catalog: Catalog) -> None:
    serde = RecordingSerde(sample_event(OrderCreated))
    decode = input_decoder(catalog, cast(EventSerde, serde))

    with pytest.raises(CorruptPayload):
        decode(cdc_topic(catalog), b"\x00\x00\x00\x00\x01avro")
    assert serde.calls == []


def test_every_other_topic_is_read_by_the_serde(catalog: Catalog) -> None:
    event = sample_event(OrderCreated)
    serde = RecordingSerde(event)
    decode = input_decoder(catalog, cast(EventSerde, serde))
    avro_topics = [t.name for t in catalog.topics if t.format is TopicFormat.AVRO]

    decoded = [decode(topic, b"\x00framed") for topic in avro_topics]
    unlisted = decode("some.topic.not.in.the.catalog", None)

    assert decoded == [event] * len(avro_topics)
    assert unlisted is event
    assert serde.calls == [(topic, b"\x00framed") for topic in avro_topics] + [
        ("some.topic.not.in.the.catalog", None)
    ]
    assert "revsync.order.created.v1" in avro_topics


def test_the_consumer_policy_comes_from_the_service_settings() -> None:
    service = ServiceSettings(
        batch_size=42,
        session_timeout_ms=7_000,
        max_poll_interval_ms=20_000,
        in_process_attempts=5,
    )

    policy = policy_from(service)

    assert policy == Policy(
        batch_size=42,
        session_timeout_ms=7_000,
        max_poll_interval_ms=20_000,
        in_process_attempts=5,
    )


def test_the_consumer_policy_defaults_come_through_unchanged() -> None:
    policy = policy_from(ServiceSettings())

    assert (policy.batch_size, policy.in_process_attempts) == (500, 3)
    assert (policy.session_timeout_ms, policy.max_poll_interval_ms) == (45_000, 300_000)


def test_the_policy_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_BATCH_SIZE", "64")
    monkeypatch.setenv("REVSYNC_IN_PROCESS_ATTEMPTS", "7")

    policy = policy_from(ServiceSettings.load())

    assert (policy.batch_size, policy.in_process_attempts) == (64, 7)


def test_required_settings_name_every_missing_variable() -> None:
    service = ServiceSettings(crm_client_id="revsync-app")

    with pytest.raises(SettingsError) as raised:
        service.required("crm_instance_url", "crm_client_id", "crm_client_secret")

    assert str(raised.value) == (
        "this service needs REVSYNC_CRM_INSTANCE_URL, REVSYNC_CRM_CLIENT_SECRET"
    )


def test_required_settings_pass_when_all_are_set() -> None:
    service = ServiceSettings(erp_base_url="https://erp.example", erp_api_token="t0ken")

    service.required("erp_base_url", "erp_api_token")


@pytest.mark.parametrize(
    ("adapter", "missing"),
    [
        (
            "crm",
            "REVSYNC_CRM_INSTANCE_URL, REVSYNC_CRM_CLIENT_ID, REVSYNC_CRM_CLIENT_SECRET",
        ),
        ("erp", "REVSYNC_ERP_BASE_URL, REVSYNC_ERP_API_TOKEN"),
    ],
)
def test_a_service_without_its_endpoints_fails_naming_them(
    catalog: Catalog, adapter: str, missing: str
) -> None:
    with ExitStack() as resources:
        context = Context(
            Settings(),
            ServiceSettings(),
            catalog,
            cast(EventSerde, RecordingSerde(sample_event(OrderCreated))),
            resources,
        )
        with pytest.raises(SettingsError) as raised:
            context.crm() if adapter == "crm" else context.erp()

    assert str(raised.value) == f"this service needs {missing}"


def test_the_crm_and_erp_variables_are_known_settings() -> None:
    known = known_variables()

    for name in (*CRM_VARIABLES, *ERP_VARIABLES):
        assert name in known, name
    for name in ("REVSYNC_ORDER_RULES", "REVSYNC_MASTER_DATA_TTL_S", "REVSYNC_HEALTH_PORT"):
        assert name in known, name


def test_a_services_environment_is_not_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {name: "x" for name in (*CRM_VARIABLES, *ERP_VARIABLES)}
    reject_unknown_variables(environment)
    monkeypatch.setenv("REVSYNC_CRM_INSTANCE_URL", "https://acme.my.salesforce.com")
    monkeypatch.setenv("REVSYNC_CRM_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("REVSYNC_ERP_BASE_URL", "https://erp.example")
    monkeypatch.setenv("REVSYNC_ERP_OUTBOX_DSN", "postgresql://erp@db/erp?sslmode=verify-full")

    service = ServiceSettings.load()
    shared = Settings.load()

    assert service.crm_instance_url == "https://acme.my.salesforce.com"
    assert service.crm_client_secret is not None
    assert service.crm_client_secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(service)
    assert service.erp_base_url == "https://erp.example"
    assert shared.bootstrap_servers == "127.0.0.1:19092"


def test_a_misspelt_crm_variable_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_CRM_INSTANCE_ULR", "https://acme.my.salesforce.com")

    with pytest.raises(SettingsError, match="unknown setting REVSYNC_CRM_INSTANCE_ULR"):
        ServiceSettings.load()


@pytest.mark.parametrize(
    "given",
    [{}, {"process_api_oidc_issuer": "https://idp.example"}, {"process_api_oidc_audience": "a"}],
    ids=["neither", "no audience", "no issuer"],
)
def test_the_process_api_takes_no_tokens_but_its_identity_providers(
    catalog: Catalog, given: dict[str, Any]
) -> None:
    with ExitStack() as resources:
        context = Context(
            Settings(),
            ServiceSettings(),
            catalog,
            cast(EventSerde, RecordingSerde(sample_event(OrderCreated))),
            resources,
        )
        with pytest.raises(SettingsError) as raised:
            configured(context, ProcessApiSettings(**given), Liveness(60), threading.Event())

    assert "REVSYNC_PROCESS_API_OIDC_ISSUER and REVSYNC_PROCESS_API_OIDC_AUDIENCE" in str(
        raised.value
    )


def test_the_process_apis_settings_are_read_and_its_issuer_is_https_off_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVSYNC_PROCESS_API_OIDC_ISSUER", "https://idp.example/realms/acme")
    monkeypatch.setenv("REVSYNC_PROCESS_API_RATE_PER_S", "12.5")

    own = ProcessApiSettings.load()

    assert (own.process_api_oidc_issuer, own.process_api_rate_per_s) == (
        "https://idp.example/realms/acme",
        12.5,
    )
    monkeypatch.setenv("REVSYNC_PROCESS_API_OIDC_ISSUER", "http://idp.example/realms/acme")
    with pytest.raises(SettingsError, match="REVSYNC_PROCESS_API_OIDC_ISSUER"):
        ProcessApiSettings.load()
    monkeypatch.setenv("REVSYNC_PROCESS_API_RATE_PER_S", "0")
    monkeypatch.setenv("REVSYNC_PROCESS_API_OIDC_ISSUER", "http://127.0.0.1:8099")
    with pytest.raises(SettingsError, match="REVSYNC_PROCESS_API_RATE_PER_S"):
        ProcessApiSettings.load()
