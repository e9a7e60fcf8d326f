"""Settings: REVSYNC_* variables, typed and checked at start-up; each error names its cause."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from revsync.settings import OpsSettings, ServiceSettings, Settings, SettingsError
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import LocalStack

VERIFIED = "sslmode=verify-full&sslrootcert=/etc/revsync/db-ca.pem"


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
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", f"postgresql://me@db:5432/revsync?{VERIFIED}")
    settings = LocalStack(StackSettings.load()).client_settings()
    assert settings.bootstrap_servers == "127.0.0.1:29092"
    assert settings.schema_registry_url == "http://127.0.0.1:28081/apis/ccompat/v7"
    assert settings.postgres_dsn.get_secret_value() == f"postgresql://me@db:5432/revsync?{VERIFIED}"


def test_endpoints_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("REVSYNC_SCHEMA_REGISTRY_URL", "https://registry.example/apis/ccompat/v7/")
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", f"postgresql://svc:pw@db:5432/revsync?{VERIFIED}")
    settings = Settings.load()
    assert settings.kafka_config() == {"bootstrap.servers": "kafka-1:9092,kafka-2:9092"}
    assert settings.registry_config()["url"] == "https://registry.example/apis/ccompat/v7"
    assert settings.postgres_dsn.get_secret_value().startswith("postgresql://svc:pw@db:5432/")


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


def test_kafka_secrets_are_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_USERNAME", "order-sync")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_PASSWORD", "kafka-secret")
    settings = Settings.load()
    assert settings.kafka_config()["sasl.password"] == "kafka-secret"
    assert "kafka-secret" not in repr(settings)
    assert "kafka-secret" not in str(settings)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        # Credentials in clear to another machine.
        (
            {"REVSYNC_SCHEMA_REGISTRY_URL": "http://registry.example/apis/ccompat/v7"},
            "REVSYNC_SCHEMA_REGISTRY_URL: http://registry.example is not on this machine",
        ),
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@db.example:5432/revsync"},
            "REVSYNC_POSTGRES_DSN: host db.example is not on this machine",
        ),
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@db.example/revsync?sslmode=prefer"},
            "REVSYNC_POSTGRES_DSN: host db.example",
        ),
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@db.example/revsync?sslmode=require"},
            "sslmode=verify-full",
        ),
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@127.0.0.1,db.example/revsync"},
            "host db.example",
        ),
        # libpq connects to hostaddr, not to the host named beside it.
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@localhost/revsync?hostaddr=10.1.2.3"},
            "host 10.1.2.3 is not on this machine",
        ),
        # What the DSN leaves out, libpq takes from the environment.
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@/revsync", "PGHOST": "db.example"},
            "host db.example is not on this machine",
        ),
        (
            {"REVSYNC_POSTGRES_DSN": "postgresql://svc:pw@/revsync?service=prod"},
            "connection service file",
        ),
        # SASL credentials in clear to another machine.
        (
            {
                "REVSYNC_BOOTSTRAP_SERVERS": "broker-1.prod:9092",
                "REVSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "REVSYNC_KAFKA_SASL_MECHANISM": "PLAIN",
            },
            "SASL_PLAINTEXT but broker broker-1.prod is not on this machine",
        ),
        # Certificates not checked.
        (
            {
                "REVSYNC_KAFKA_SECURITY_PROTOCOL": "SSL",
                "REVSYNC_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION": "false",
            },
            "REVSYNC_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION=false would accept any",
        ),
        # librdkafka reads f as false too.
        (
            {
                "REVSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "REVSYNC_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION": "f",
            },
            "REVSYNC_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION=f would accept any",
        ),
        (
            {
                "REVSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "REVSYNC_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none",
            },
            "REVSYNC_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none",
        ),
    ],
)
def test_an_unprotected_connection_off_this_machine_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named) as raised:
        Settings.load()
    assert "pw@" not in str(raised.value)  # the DSN's password is never echoed


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        (
            {"REVSYNC_CRM_INSTANCE_URL": "http://acme.my.salesforce.com"},
            "REVSYNC_CRM_INSTANCE_URL: http://acme.my.salesforce.com is not on this machine",
        ),
        (
            {"REVSYNC_ERP_BASE_URL": "http://erp.example/api"},
            "REVSYNC_ERP_BASE_URL: http://erp.example is not on this machine",
        ),
        (
            {"REVSYNC_ERP_OUTBOX_DSN": "postgresql://erp:pw@erp-db/erp"},
            "REVSYNC_ERP_OUTBOX_DSN: host erp-db is not on this machine",
        ),
        (
            {
                "REVSYNC_CRM_PUBSUB_ENDPOINT": "api.pubsub.salesforce.com:7443",
                "REVSYNC_CRM_PUBSUB_TLS": "false",
            },
            "REVSYNC_CRM_PUBSUB_TLS is false but api.pubsub.salesforce.com:7443",
        ),
    ],
)
def test_a_service_reaching_another_machine_in_clear_is_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        ServiceSettings.load()


def test_this_machine_and_verified_tls_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_CRM_INSTANCE_URL", "http://127.0.0.1:8443")
    monkeypatch.setenv("REVSYNC_ERP_BASE_URL", "https://erp.example/api")
    monkeypatch.setenv("REVSYNC_ERP_OUTBOX_DSN", f"postgresql://erp:pw@erp-db/erp?{VERIFIED}")
    monkeypatch.setenv("REVSYNC_CRM_PUBSUB_ENDPOINT", "localhost:7011")
    monkeypatch.setenv("REVSYNC_CRM_PUBSUB_TLS", "false")
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", "postgresql://svc@[::1]:5432/revsync")
    monkeypatch.setenv("REVSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_PASSWORD", "pw")
    service = ServiceSettings.load()
    assert service.crm_instance_url == "http://127.0.0.1:8443"
    assert Settings.load().postgres_dsn.get_secret_value().endswith("[::1]:5432/revsync")


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


# --- settings as files (REVSYNC_SECRETS_DIR), as Kubernetes mounts a Secret -------------------


def mounted_secret(folder: Path, files: dict[str, str]) -> Path:
    """``files`` laid out as the kubelet mounts a Secret: the data in a timestamped folder, a
    ``..data`` link to it, and a link per key."""
    folder.mkdir()
    data = folder / "..2025_01_31_00_00_00.000000001"
    data.mkdir()
    (folder / "..data").symlink_to(data.name)
    for name, text in files.items():
        (data / name).write_text(text)
        (folder / name).symlink_to(f"..data/{name}")
    return folder


def test_settings_are_read_from_files_named_after_their_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dsn = f"postgresql://revsync_service:pw@db:5432/revsync?{VERIFIED}"
    folder = mounted_secret(
        tmp_path / "secrets",
        {
            # A Secret created from a file keeps the file's last newline.
            "REVSYNC_POSTGRES_DSN": dsn + "\n",
            "REVSYNC_CRM_CLIENT_SECRET": "crm-secret",
            "REVSYNC_DLT_MAX_REPLAYS": "5",
        },
    )
    monkeypatch.setenv("REVSYNC_SECRETS_DIR", str(folder))

    settings = Settings.load()
    service = ServiceSettings.load()

    assert settings.postgres_dsn.get_secret_value() == dsn
    assert service.crm_client_secret is not None
    assert service.crm_client_secret.get_secret_value() == "crm-secret"
    assert OpsSettings.load().dlt_max_replays == 5
    assert "pw@" not in repr(settings)


def test_kafka_pass_through_is_read_from_files_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = mounted_secret(
        tmp_path / "secrets",
        {
            "REVSYNC_KAFKA_SASL_USERNAME": "revsync-order-sync",
            "REVSYNC_KAFKA_SASL_PASSWORD": "kafka-secret\n",
        },
    )
    monkeypatch.setenv("REVSYNC_SECRETS_DIR", str(folder))
    monkeypatch.setenv("REVSYNC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("REVSYNC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")

    settings = Settings.load()

    assert settings.kafka_config() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "revsync-order-sync",
        "sasl.password": "kafka-secret",
    }
    assert "kafka-secret" not in repr(settings)


def test_a_setting_given_as_a_file_and_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Neither wins: the chart renders one or the other, so both means a mistake somewhere."""
    folder = mounted_secret(
        tmp_path / "secrets",
        {"REVSYNC_POSTGRES_DSN": "postgresql://a@127.0.0.1/revsync"},
    )
    monkeypatch.setenv("REVSYNC_SECRETS_DIR", str(folder))
    monkeypatch.setenv("REVSYNC_POSTGRES_DSN", "postgresql://b@127.0.0.1/revsync")

    for settings_cls in (Settings, ServiceSettings, OpsSettings):
        with pytest.raises(SettingsError, match="REVSYNC_POSTGRES_DSN is set both in the env"):
            settings_cls.load()


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"postgres-dsn": "x"}, r"postgres-dsn in .* names no setting; each file there is named"),
        ({"REVSYNC_POSTGRES_DNS": "x"}, "unknown setting REVSYNC_POSTGRES_DNS"),
        ({"REVSYNC_POSTGRES_DSN": "mysql://pw@db/revsync"}, "REVSYNC_POSTGRES_DSN: must be"),
        ({"REVSYNC_KAFKA_SASL_PASSWORD": "hunter2"}, "REVSYNC_KAFKA_SASL_PASSWORD is set but"),
    ],
)
def test_a_bad_file_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, files: dict[str, str], named: str
) -> None:
    monkeypatch.setenv("REVSYNC_SECRETS_DIR", str(mounted_secret(tmp_path / "secrets", files)))

    with pytest.raises(SettingsError, match=named) as raised:
        Settings.load()
    assert "hunter2" not in str(raised.value)
    assert "pw@" not in str(raised.value)


@pytest.mark.parametrize("where", ["missing", "a-file", ""])
def test_a_secrets_dir_that_is_no_directory_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("REVSYNC_POSTGRES_DSN=postgresql://127.0.0.1/revsync\n")
    monkeypatch.setenv("REVSYNC_SECRETS_DIR", str(tmp_path / where) if where else "")

    for settings_cls in (Settings, ServiceSettings, OpsSettings):
        with pytest.raises(SettingsError, match=r"REVSYNC_SECRETS_DIR: .* is not a directory"):
            settings_cls.load()
