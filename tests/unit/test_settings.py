"""Settings: REVSYNC_* variables, typed and checked at start-up; each error names its cause."""

from __future__ import annotations

import os

import pytest

from revsync.settings import Settings, SettingsError
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import LocalStack


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REVSYNC_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.load()
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.schema_registry_url == "http://127.0.0.1:18081/apis/ccompat/v7"
    assert settings.postgres_dsn.get_secret_value().endswith("@127.0.0.1:15432/revsync")


def test_moving_a_stack_port_moves_the_stacks_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_STACK_KAFKA_PORT", "29092")
    monkeypatch.setenv("REVSYNC_STACK_REGISTRY_PORT", "28081")
    # The production settings know nothing of the development stack ...
    assert Settings.load().bootstrap_servers == "127.0.0.1:19092"
    # ... which hands its own endpoints to what it runs, unless the environment names others.
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", "postgresql://me@db:5432/revsync")
    settings = LocalStack(StackSettings.load()).client_settings()
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert settings.schema_registry_url == "http://127.0.0.1:28081/apis/ccompat/v7"
    assert settings.postgres_dsn.get_secret_value() == "postgresql://me@db:5432/revsync"


def test_endpoints_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("REVSYNC_SCHEMA_REGISTRY_URL", "https://registry.example/apis/ccompat/v7/")
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", "postgresql://svc:pw@db:5432/revsync")
    settings = Settings.load()
    assert settings.kafka_config() == {"bootstrap.servers": "kafka-1:9092,kafka-2:9092"}
    assert settings.registry_config()["url"] == "https://registry.example/apis/ccompat/v7"
    assert settings.postgres_dsn.get_secret_value() == "postgresql://svc:pw@db:5432/revsync"


def test_librdkafka_properties_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_USERNAME", "revsync")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("REVSYNC_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https")
    config = Settings.load().kafka_config(**{"group.id": "order_sync"})
    assert config == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "revsync",
        "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "https",
        "group.id": "order_sync",
    }


def test_registry_credentials_reach_the_client_but_not_the_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVSYNC_SCHEMA_REGISTRY_BASIC_AUTH", "svc:registry-secret")
    settings = Settings.load()
    assert settings.registry_config()["basic.auth.user.info"] == "svc:registry-secret"
    assert "registry-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"REVSYNC_BOOTSTRAP_SERVER": "x:9092"}, "unknown setting REVSYNC_BOOTSTRAP_SERVER"),
        ({"REVSYNC_KAFKA_NO_SUCH_PROPERTY": "1"}, "REVSYNC_KAFKA_NO_SUCH_PROPERTY"),
        ({"REVSYNC_KAFKA_LINGER_MS": "soon"}, "REVSYNC_KAFKA_LINGER_MS"),
        ({"REVSYNC_KAFKA_BOOTSTRAP_SERVERS": "x:9092"}, "set only REVSYNC_BOOTSTRAP_SERVERS"),
        ({"REVSYNC_KAFKA_SASL_MECHANISM": "PLAIN"}, "REVSYNC_KAFKA_SASL_MECHANISM is set but"),
        (
            {
                "REVSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "REVSYNC_KAFKA_SSL_CA_LOCATION": "/etc/ssl/ca.pem",
            },
            "REVSYNC_KAFKA_SSL_CA_LOCATION is set but",
        ),
        ({"REVSYNC_SCHEMA_REGISTRY_URL": "registry:8081"}, "REVSYNC_SCHEMA_REGISTRY_URL"),
        ({"REVSYNC_POSTGRES_DSN": "mysql://db/revsync"}, "REVSYNC_POSTGRES_DSN"),
        ({"REVSYNC_BOOTSTRAP_SERVERS": ""}, "REVSYNC_BOOTSTRAP_SERVERS"),
    ],
)
def test_a_bad_setting_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        Settings.load()


def test_an_error_never_echoes_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_PASSWORD", "hunter2")
    with pytest.raises(SettingsError) as raised:
        Settings.load()
    assert "REVSYNC_KAFKA_SASL_PASSWORD" in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"REVSYNC_STACK_POSTGRES_PORT": "19092"}, "REVSYNC_STACK_POSTGRES_PORT and"),
        ({"REVSYNC_STACK_KAFKA_PORT": "70000"}, "REVSYNC_STACK_KAFKA_PORT"),
        ({"REVSYNC_STACK_KAFKA_HEAP": "lots"}, "REVSYNC_STACK_KAFKA_HEAP"),
        ({"REVSYNC_STACK_DIRECTORY": "/tmp/x"}, "unknown setting REVSYNC_STACK_DIRECTORY"),
    ],
)
def test_a_bad_stack_setting_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        StackSettings.load()
