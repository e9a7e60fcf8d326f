"""The local stack's own logic: readiness waits, failure messages and generated config."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from revsync.cli import app
from revsync_devstack.secure import Credentials
from revsync_devstack.settings import SECURE_DEFAULTS, StackSettings
from revsync_devstack.stack import Component, Kafka, StackError, wait_until_healthy


class FakeComponent(Component):
    """A component whose process and health the test decides."""

    name = "fake"

    def __init__(self, settings: StackSettings, *, running: bool, healthy_after: int | None):
        super().__init__(settings)
        self.running = running
        self.healthy_after = healthy_after
        self.probes = 0

    def ports(self) -> dict[str, int]:
        return {"api": 1}

    def pid(self) -> int | None:
        return 4242 if self.running else None

    def prepare(self) -> None:
        raise AssertionError("not used")

    def spawn(self) -> None:
        raise AssertionError("not used")

    def healthy(self) -> bool:
        self.probes += 1
        return self.healthy_after is not None and self.probes > self.healthy_after


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(dir=tmp_path)


def test_waiting_ends_once_the_component_answers(settings: StackSettings) -> None:
    component = FakeComponent(settings, running=True, healthy_after=2)
    wait_until_healthy(component, timeout_s=5)
    assert component.probes == 3


def test_a_component_that_never_answers_is_named_with_its_log(settings: StackSettings) -> None:
    component = FakeComponent(settings, running=True, healthy_after=None)
    with pytest.raises(StackError) as raised:
        wait_until_healthy(component, timeout_s=0.3)
    message = str(raised.value)
    assert "fake did not become ready within 0s" in message
    assert str(settings.dir / "logs" / "fake.log") in message


def test_a_component_that_dies_during_start_up_shows_its_last_log_lines(
    settings: StackSettings,
) -> None:
    component = FakeComponent(settings, running=False, healthy_after=None)
    component.log.parent.mkdir(parents=True)
    component.log.write_text("starting\nFATAL: could not bind to port\n")
    with pytest.raises(StackError, match="fake exited during start-up") as raised:
        wait_until_healthy(component, timeout_s=5)
    assert "FATAL: could not bind to port" in str(raised.value)


def test_kafka_listens_on_loopback_at_the_configured_ports(tmp_path: Path) -> None:
    kafka = Kafka(StackSettings(dir=tmp_path, kafka_port=29092, kafka_controller_port=29093))
    properties = dict(line.split("=", 1) for line in kafka._server_properties().splitlines())
    assert properties["listeners"] == ("PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093")
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert properties["process.roles"] == "broker,controller"
    assert properties["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert properties["auto.create.topics.enable"] == "false"


def test_a_proxied_broker_advertises_its_proxy_and_replicates_past_it(tmp_path: Path) -> None:
    settings = StackSettings(
        dir=tmp_path,
        kafka_port=29092,
        kafka_controller_port=29192,
        kafka_proxy_port=29292,
        kafka_brokers=3,
    )
    kafka = Kafka(settings, node_id=2, brokers=3)
    properties = dict(line.split("=", 1) for line in kafka._server_properties().splitlines())
    assert properties["listeners"] == (
        "PLAINTEXT://127.0.0.1:29094,INTERNAL://127.0.0.1:29295,CONTROLLER://127.0.0.1:29194"
    )
    assert properties["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:29294,INTERNAL://127.0.0.1:29295"
    )
    assert properties["inter.broker.listener.name"] == "INTERNAL"
    assert properties["controller.listener.names"] == "CONTROLLER"
    # Clients start from the proxies; the stack's own health check asks the broker itself.
    assert kafka.bootstrap_servers == "127.0.0.1:29292,127.0.0.1:29294,127.0.0.1:29296"
    assert kafka.address == "127.0.0.1:29094"
    assert kafka.ports() == {"client": 29094, "controller": 29194, "internal": 29295}


def test_a_secured_broker_takes_only_authenticated_clients_over_tls(tmp_path: Path) -> None:
    settings = StackSettings(dir=tmp_path, secure=True)
    Credentials(tmp_path / "secrets").make()
    kafka = Kafka(settings)

    properties = dict(line.split("=", 1) for line in kafka._server_properties().splitlines())

    assert properties["listeners"] == (
        f"SASL_SSL://127.0.0.1:{SECURE_DEFAULTS['kafka_port']},"
        f"CONTROLLER://127.0.0.1:{SECURE_DEFAULTS['kafka_controller_port']}"
    )
    assert properties["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert "PLAINTEXT" not in properties["listener.security.protocol.map"]
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["listener.name.controller.ssl.client.auth"] == "required"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:broker"
    assert properties["authorizer.class.name"].endswith("StandardAuthorizer")
    assert settings.dir == tmp_path  # given folder wins over the secured stack's default


def test_the_secured_stack_keeps_its_secrets_to_its_owner(tmp_path: Path) -> None:
    credentials = Credentials(tmp_path / "secrets")
    credentials.make()

    assert (credentials.folder.stat().st_mode & 0o777) == 0o700
    for path in credentials.folder.iterdir():
        assert (path.stat().st_mode & 0o777) == 0o600, path
    passwords = credentials.passwords("kafka")
    assert {"broker", "revsync-order-sync", "revsync-operator", "revsync-governance"} <= set(
        passwords
    )
    assert len(set(passwords.values())) == len(passwords)


def test_a_proxy_port_that_meets_a_brokers_own_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"PORT \+ 4 \(broker 3\) and \S+_PROXY_PORT are both"):
        StackSettings(
            dir=tmp_path,
            kafka_port=29092,
            kafka_controller_port=29093,
            kafka_proxy_port=29096,  # broker 1's proxy on broker 3's own listener
            kafka_brokers=3,
        )


def test_logs_of_an_unknown_component_is_refused() -> None:
    result = CliRunner().invoke(app, ["stack", "logs", "zookeeper"])
    assert result.exit_code == 2
    assert "no component 'zookeeper'" in result.output
