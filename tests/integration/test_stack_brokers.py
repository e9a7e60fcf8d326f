"""Fault tests on servers of their own, never the shared stack: a three-broker stack that loses
a broker to SIGKILL mid-run and carries on, and Toxiproxy putting latency, resets, a black hole
and a bandwidth cap between a client and a server.

Slow (a stack of its own starts in about 40 s), so marked ``chaos`` and run only when asked:
``.venv/bin/pytest -m chaos tests/integration/test_stack_brokers.py``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, TopicMetadata
from typer.testing import CliRunner

from revsync.cli import app
from revsync.contracts.topics import await_topic
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import LocalStack, State
from revsync_devstack.toxiproxy import TOXIPROXY_SERVER, Toxiproxy, ToxiproxyServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

# Everything these tests start listens in 29000-29999, away from the shared stack's ports.
PORT_RANGE = range(29100, 30000, 100)
PORTS_NEEDED = 10
PARTITIONS = 6


@pytest.fixture(scope="module", autouse=True)
def only_when_chaos_is_selected(request: pytest.FixtureRequest) -> None:
    """Out of the normal suite: these start servers of their own and take minutes."""
    if "chaos" not in (request.config.option.markexpr or ""):
        pytest.skip("a chaos test; run it with -m chaos")


def free_port_block() -> int:
    """The first port of PORTS_NEEDED consecutive free loopback ports in PORT_RANGE."""
    for base in PORT_RANGE:
        if all(port_is_free(port) for port in range(base, base + PORTS_NEEDED)):
            return base
    raise RuntimeError(f"no {PORTS_NEEDED} free consecutive ports in {PORT_RANGE}")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- three brokers -------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreeBrokerStack:
    stack: LocalStack
    environment: dict[str, str]
    """The REVSYNC_STACK_* variables that name this stack, for `revsync stack` commands."""
    started_in_s: float

    @property
    def bootstrap_servers(self) -> str:
        return self.stack.kafka.bootstrap_servers

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 2})

    def await_topic_on_every_broker(self, topic: str) -> TopicMetadata:
        """A new topic reaches each broker's metadata on its own time; wait for all three."""
        for broker in self.stack.brokers:
            own = AdminClient({"bootstrap.servers": broker.address, "log_level": 2})
            metadata = await_topic(own, topic)
        return metadata


@pytest.fixture(scope="module")
def three_brokers(only_when_chaos_is_selected: None) -> Iterator[ThreeBrokerStack]:
    # Not pytest's tmp_path: PostgreSQL runs as its own user and must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="revsync-chaos-stack-", dir="/tmp"))
    folder.chmod(0o755)
    base = free_port_block()
    environment = {
        "REVSYNC_STACK_DIR": str(folder),
        "REVSYNC_STACK_KAFKA_PORT": str(base),  # brokers on base, base + 2, base + 4
        "REVSYNC_STACK_KAFKA_CONTROLLER_PORT": str(base + 1),  # base + 1, + 3, + 5
        "REVSYNC_STACK_REGISTRY_PORT": str(base + 6),
        "REVSYNC_STACK_REGISTRY_MANAGEMENT_PORT": str(base + 7),
        "REVSYNC_STACK_POSTGRES_PORT": str(base + 8),
    }
    settings = StackSettings(
        dir=folder,
        kafka_port=base,
        kafka_controller_port=base + 1,
        registry_port=base + 6,
        registry_management_port=base + 7,
        postgres_port=base + 8,
        kafka_brokers=3,
    )
    stack = LocalStack(settings)
    started = time.monotonic()
    try:
        stack.up()
        yield ThreeBrokerStack(stack, environment, time.monotonic() - started)
    finally:
        # Kafka clients a failed test left behind would log their reconnects after the stop.
        gc.collect()
        stopping = time.monotonic()
        stack.down(purge=True)
        print(f"\nthree-broker stack down in {time.monotonic() - stopping:.1f}s")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stack_environment(
    three_brokers: ThreeBrokerStack, monkeypatch: pytest.MonkeyPatch
) -> ThreeBrokerStack:
    """The environment of a shell that uses this stack: its REVSYNC_STACK_* and nothing else."""
    for name in [n for n in os.environ if n.startswith("REVSYNC_")]:
        monkeypatch.delenv(name)
    for name, value in three_brokers.environment.items():
        monkeypatch.setenv(name, value)
    return three_brokers


def test_the_stack_remembers_its_three_brokers(stack_environment: ThreeBrokerStack) -> None:
    ports = [
        int(stack_environment.environment["REVSYNC_STACK_KAFKA_PORT"]) + 2 * n for n in (0, 1, 2)
    ]
    # Made anew from the environment alone (no broker count in it): the folder remembers three.
    stack = LocalStack(StackSettings.load())
    assert stack.broker_count == 3
    assert [component.name for component in stack.components] == [
        "postgres",
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "registry",
    ]
    assert all(status.state is State.HEALTHY for status in stack.status())
    assert stack.client_settings().bootstrap_servers == ",".join(f"127.0.0.1:{p}" for p in ports)

    status = CliRunner().invoke(app, ["stack", "status"])
    assert status.exit_code == 0, status.output
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        line = next(line for line in status.output.splitlines() if name in line)
        assert "healthy" in line
        assert "unhealthy" not in line

    other_count = CliRunner().invoke(app, ["stack", "up", "--brokers", "1"])
    assert other_count.exit_code == 2
    assert "was made with 3 brokers, not 1" in one_line(other_count.output)
    no_such_broker = CliRunner().invoke(app, ["stack", "kill", "--broker", "4"])
    assert no_such_broker.exit_code == 2
    assert "no broker 4: the stack in" in one_line(no_such_broker.output)

    check = CliRunner().invoke(app, ["stack", "check"])
    assert check.exit_code == 0, check.output
    assert "round trip intact" in check.output


def one_line(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_every_broker_replicates_three_ways_and_acks_on_two(
    three_brokers: ThreeBrokerStack,
) -> None:
    admin = three_brokers.admin()
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
    for node_id in (1, 2, 3):
        resource = ConfigResource(ConfigResource.Type.BROKER, str(node_id))
        config = admin.describe_configs([resource])[resource].result(timeout=10)
        assert {
            key: config[key].value
            for key in (
                "default.replication.factor",
                "min.insync.replicas",
                "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr",
            )
        } == {
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
        }, f"broker {node_id}"


@dataclass
class Deliveries:
    """What the producer was told about each record, by its sequence number."""

    acked: dict[int, tuple[int, int]]
    failed: list[str]
    acked_at: list[float]

    def callback(self) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.failed.append(str(error))
                return
            value = message.value()
            assert value is not None
            self.acked[int(value)] = (message.partition() or 0, message.offset() or 0)
            self.acked_at.append(time.monotonic())

        return delivered


def test_producing_and_consuming_go_on_while_one_broker_of_three_is_killed(
    three_brokers: ThreeBrokerStack,
) -> None:
    admin = three_brokers.admin()
    topic = f"chaos.orders.{uuid.uuid4().hex[:8]}"
    # Replication factor -1, as `revsync topics apply` asks: the brokers' default, 3.
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)])[topic].result(timeout=30)
    metadata = three_brokers.await_topic_on_every_broker(topic)
    assert all(len(p.replicas) == 3 and len(p.isrs) == 3 for p in metadata.partitions.values())
    topic_config = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([topic_config])[topic_config].result(timeout=10)
    assert described["min.insync.replicas"].value == "2"

    # The broker leading partition 0 goes: its leaderships must move, its follower seats empty.
    victim = metadata.partitions[0].leader
    producer = Producer(
        {
            "bootstrap.servers": three_brokers.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "log_level": 2,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": three_brokers.bootstrap_servers,
            "group.id": f"chaos-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 500,
            "log_level": 2,
        }
    )
    consumer.subscribe([topic])
    deliveries = Deliveries({}, [], [])
    consumed: list[int] = []
    sequence = 0

    def produce_and_consume_for(seconds: float, between: Callable[[], None] | None = None) -> None:
        nonlocal sequence
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            producer.produce(
                topic,
                key=f"order-{sequence % 97}".encode(),
                value=str(sequence).encode(),
                on_delivery=deliveries.callback(),
            )
            sequence += 1
            producer.poll(0)
            consumed.extend(read(consumer, 0.005))
            if between is not None:
                between()
                between = None

    try:
        produce_and_consume_for(3.0)
        assert producer.flush(30) == 0
        before_kill = len(deliveries.acked)
        assert before_kill > 100, "the producer got going before the kill"

        killed_at = time.monotonic()
        pid = three_brokers.stack.kill_broker(victim)
        assert pid is not None
        assert three_brokers.stack.broker(victim).pid() is None
        produce_and_consume_for(20.0)
        assert producer.flush(60) == 0
        assert deliveries.failed == []
        after_kill = [at for at in deliveries.acked_at if at > killed_at]
        assert len(deliveries.acked) == sequence
        assert after_kill, "records were acknowledged while a broker was down"
        stall_s = after_kill[0] - killed_at

        # With the victim fenced, every partition is led by a survivor and in sync on two.
        survivors = wait_for_isr(admin, topic, expected=2, timeout_s=60)
        assert all(victim not in isr and len(isr) == 2 for isr in survivors.values())

        restart_started = time.monotonic()
        assert three_brokers.stack.start_broker(victim)
        restarted_in_s = time.monotonic() - restart_started
        rejoined = wait_for_isr(admin, topic, expected=3, timeout_s=120)
        assert all(victim in isr for isr in rejoined.values())

        produce_and_consume_for(3.0)
        assert producer.flush(30) == 0
        assert deliveries.failed == []
        deadline = time.monotonic() + 60
        while len(set(consumed)) < sequence and time.monotonic() < deadline:
            consumed.extend(read(consumer, 0.5))
    finally:
        consumer.close()

    assert set(consumed) == set(range(sequence)), "the group read every acknowledged record"
    # Idempotent and acks=all: the log holds each record exactly once, none lost.
    in_log = read_whole_topic(three_brokers.bootstrap_servers, topic)
    assert sorted(in_log) == list(range(sequence))
    print(
        f"\n{sequence} records; stack up in {three_brokers.started_in_s:.1f}s; broker {victim} "
        f"killed: first ack after {stall_s:.1f}s; restarted in {restarted_in_s:.1f}s"
    )


def read(consumer: Consumer, timeout_s: float) -> list[int]:
    values = []
    for message in consumer.consume(num_messages=500, timeout=timeout_s):
        if message.error() is None and message.value() is not None:
            values.append(int(message.value() or b"0"))
    return values


def read_whole_topic(bootstrap_servers: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 2})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 2,
        }
    )
    values: list[int] = []
    try:
        ends = {}
        for partition in partitions:
            _, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            ends[partition] = high
        reader.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        positions = dict.fromkeys(partitions, 0)
        deadline = time.monotonic() + 60
        while any(positions[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            for message in reader.consume(num_messages=1000, timeout=1):
                if message.error() is None:
                    values.append(int(message.value() or b"0"))
                    positions[message.partition() or 0] = (message.offset() or 0) + 1
    finally:
        reader.close()
    return values


def wait_for_isr(
    admin: AdminClient, topic: str, expected: int, timeout_s: float
) -> dict[int, list[int]]:
    """Every partition's in-sync replicas once each partition has ``expected`` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        isrs = {number: list(p.isrs) for number, p in partitions.items()}
        if all(len(isr) == expected for isr in isrs.values()) and all(
            p.leader in p.isrs for p in partitions.values()
        ):
            return isrs
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: in-sync replicas {isrs}, wanted {expected} each")
        time.sleep(0.5)


# --- Toxiproxy -----------------------------------------------------------------------------


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        connection: socket.socket = self.request
        # A reset from the proxy in front is what some tests are about.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while chunk := connection.recv(65536):
                connection.sendall(chunk)


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def toxiproxy(only_when_chaos_is_selected: None, tmp_path: Path) -> Iterator[Toxiproxy]:
    if not TOXIPROXY_SERVER.exists():
        pytest.fail(f"no {TOXIPROXY_SERVER}; build it with `make toxiproxy`")
    with ToxiproxyServer(free_port_block() + 9, log=tmp_path / "toxiproxy.log") as client:
        yield client


def round_trip(port: int, payload: bytes = b"ping", timeout_s: float = 5.0) -> float:
    """Seconds for ``payload`` to go through the echo server and back, on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        started = time.monotonic()
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(received)} of {len(payload)} bytes")
            received += chunk
        elapsed = time.monotonic() - started
    assert received == payload
    return elapsed


def test_toxiproxy_delays_resets_blackholes_and_throttles_a_connection(
    toxiproxy: Toxiproxy, echo_server: int
) -> None:
    assert toxiproxy.version() == "v2.12.0"
    proxy = toxiproxy.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo_server}")
    port = proxy.listen_port
    assert round_trip(port) < 0.1

    toxiproxy.add_latency("echo", latency_ms=300, jitter_ms=50)
    delays = [round_trip(port) for _ in range(3)]
    assert all(0.25 <= delay < 1.0 for delay in delays), delays
    toxiproxy.remove_toxic("echo", "latency_downstream")
    assert round_trip(port) < 0.1

    toxiproxy.add_reset_peer("echo", name="reset")
    with pytest.raises(ConnectionResetError):
        round_trip(port)
    toxiproxy.remove_toxic("echo", "reset")
    assert round_trip(port) < 0.1

    toxiproxy.add_timeout("echo", close_after_ms=0, name="black-hole")
    with pytest.raises(TimeoutError):
        round_trip(port, timeout_s=0.5)
    toxiproxy.remove_toxic("echo", "black-hole")
    assert round_trip(port) < 0.1

    # 100 KB/s back to the client: 200 KB take about two seconds.
    toxiproxy.add_bandwidth("echo", rate_kb_per_s=100)
    throttled = round_trip(port, b"x" * 200_000, timeout_s=10)
    assert 1.5 <= throttled < 5.0, throttled
    toxiproxy.reset()
    assert toxiproxy.proxy("echo").toxics == []
    assert round_trip(port, b"x" * 200_000) < 0.5

    toxiproxy.disable("echo")
    with pytest.raises(ConnectionRefusedError):
        round_trip(port)
    toxiproxy.enable("echo")
    assert round_trip(port) < 0.1
    toxiproxy.delete_proxy("echo")
    assert "echo" not in toxiproxy.proxies()
