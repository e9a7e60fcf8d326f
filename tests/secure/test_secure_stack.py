"""The secured stack as an attacker, a misconfigured client and each principal meet it: no
way in without TLS and credentials, and each principal confined to its own share."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from revsync.migrations import SchemaMissing, Tables, ensure
from secure_support import SecureStack

TIMEOUT_S = 15


def _admin(config: dict[str, Any]) -> AdminClient:
    return AdminClient({**config, "socket.timeout.ms": 5000, "log_level": 0})


def _kafka(secure_stack: SecureStack, identity: str) -> dict[str, str]:
    return secure_stack.settings(identity).kafka_config()


# --- no way in without TLS and credentials ---------------------------------------------------


def test_kafka_refuses_a_client_in_clear(secure_stack: SecureStack) -> None:
    kafka = secure_stack.stack.kafka
    host, port = kafka.address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()  # the broker is there
    admin = _admin({"bootstrap.servers": kafka.bootstrap_servers})

    with pytest.raises(KafkaException) as refused:
        admin.list_topics(timeout=5)
    assert refused.value.args[0].code() == KafkaError._TRANSPORT


def test_kafka_refuses_a_wrong_password(secure_stack: SecureStack) -> None:
    errors: list[KafkaError] = []
    config = _kafka(secure_stack, "order-sync") | {
        "sasl.password": "not-the-password",
        "error_cb": errors.append,
    }
    producer = Producer(config)
    deadline = time.monotonic() + TIMEOUT_S
    while not errors and time.monotonic() < deadline:
        producer.poll(0.5)

    assert KafkaError._AUTHENTICATION in {error.code() for error in errors}


def test_postgres_refuses_a_connection_without_tls(secure_stack: SecureStack) -> None:
    dsn = secure_stack.admin_dsn().replace("sslmode=verify-full", "sslmode=disable")

    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_postgres_refuses_a_wrong_password(secure_stack: SecureStack) -> None:
    dsn = secure_stack.stack.postgres.dsn(role="revsync_service")
    password = secure_stack.stack.postgres.credentials.passwords("postgres")["revsync_service"]

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn.replace(password, "wrong"), connect_timeout=5).close()


def test_the_registry_speaks_only_https_and_only_to_its_users(
    secure_stack: SecureStack,
) -> None:
    registry = secure_stack.stack.registry
    url = f"{registry.url}/subjects"
    ca = ssl.create_default_context(cafile=registry.credentials.ca)

    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://"), timeout=5)
    assert httpx.get(url, verify=ca, timeout=5).status_code == 401
    user, password = (registry.basic_auth() or "").split(":", 1)
    assert httpx.get(url, verify=ca, auth=(user, "wrong"), timeout=5).status_code == 401
    assert httpx.get(url, verify=ca, auth=(user, password), timeout=5).status_code == 200


def test_a_reader_of_the_registry_cannot_register_a_schema(secure_stack: SecureStack) -> None:
    registry = secure_stack.stack.registry
    user, password = (registry.basic_auth() or "").split(":", 1)

    answer = httpx.post(
        f"{registry.url}/subjects/revsync.intruder.{uuid.uuid4().hex[:6]}-value/versions",
        json={"schema": '"string"'},
        verify=ssl.create_default_context(cafile=registry.credentials.ca),
        auth=(user, password),
        timeout=5,
    )

    assert answer.status_code == 403


# --- each principal confined to its own share ------------------------------------------------


def _produce(config: dict[str, str], topic: str) -> KafkaError | None:
    """Write one record to ``topic``; the broker's error, None when it took the record."""
    outcome: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": 10_000})
    producer.produce(topic, b"probe", on_delivery=lambda error, _: outcome.append(error))
    producer.flush(TIMEOUT_S)
    assert outcome, "no delivery report"
    return outcome[0]


def test_order_sync_cannot_write_an_invoice_topic(secure_stack: SecureStack) -> None:
    invoices = _topic(secure_stack, "invoice", "posted")
    orders = _topic(secure_stack, "order", "accepted")

    refused = _produce(_kafka(secure_stack, "order-sync"), invoices)
    allowed = _produce(_kafka(secure_stack, "order-sync"), orders)

    assert refused is not None
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert allowed is None


@pytest.mark.parametrize("identity", ["order-sync", "operator"])
def test_only_governance_creates_topics(secure_stack: SecureStack, identity: str) -> None:
    name = f"revsync.probe-{uuid.uuid4().hex[:8]}.created.v1"

    admin = _admin(_kafka(secure_stack, identity))
    with pytest.raises(KafkaException) as refused:
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=TIMEOUT_S)

    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    governance = _admin(_kafka(secure_stack, "governance"))
    governance.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=TIMEOUT_S)
    # Governance deletes nothing: the cluster's administrator tidies up.
    kafka = secure_stack.stack.kafka
    administrator = _admin({"bootstrap.servers": kafka.bootstrap_servers, **kafka.client_config()})
    administrator.delete_topics([name])[name].result(timeout=TIMEOUT_S)


def test_a_service_cannot_grant_itself_acls(secure_stack: SecureStack) -> None:
    result = secure_stack.revsync("order-sync", "acls", "apply")

    assert result.returncode == 1
    assert "applying the ACLs failed" in result.stderr
    assert "CLUSTER_AUTHORIZATION_FAILED" in result.stderr


def test_the_operators_may_not_write_what_the_services_emit(secure_stack: SecureStack) -> None:
    refused = _produce(_kafka(secure_stack, "operator"), _topic(secure_stack, "order", "accepted"))

    assert refused is not None
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_audit_trail_takes_the_operators_inserts_and_nothing_else(
    secure_stack: SecureStack,
) -> None:
    actor = f"probe-{uuid.uuid4().hex[:8]}"
    insert = (
        "INSERT INTO revsync_audit (actor, action, filter, count, outcome) "
        "VALUES (%s, 'probe', '{}', 0, 'written')"
    )
    operator = secure_stack.environment("operator")["REVSYNC_POSTGRES_DSN"]
    service = secure_stack.environment("order-sync")["REVSYNC_POSTGRES_DSN"]
    with psycopg.connect(operator, autocommit=True) as connection:
        connection.execute(insert, (actor,))
        for statement in (
            "UPDATE revsync_audit SET outcome = 'rewritten' WHERE actor = %s",
            "DELETE FROM revsync_audit WHERE actor = %s",
            "SELECT outcome FROM revsync_audit WHERE actor = %s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement, (actor,))
        # Nor may it say it was someone else: PostgreSQL names the role.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute(
                "INSERT INTO revsync_audit (actor, action, filter, count, outcome, db_role) "
                "VALUES (%s, 'probe', '{}', 0, 'written', 'revsync_migrator')",
                (actor,),
            )
    # The services write no audit rows, so they may not touch the table at all.
    with psycopg.connect(service, autocommit=True) as connection:
        for statement in (insert, "UPDATE revsync_audit SET outcome = 'x' WHERE actor = %s"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement, (actor,))

    with psycopg.connect(secure_stack.admin_dsn()) as admin:
        rows = admin.execute(
            "SELECT db_role, outcome FROM revsync_audit WHERE actor = %s", (actor,)
        ).fetchall()
    assert rows == [("revsync_operator", "written")]


def test_the_services_role_cannot_touch_the_operators_tables(secure_stack: SecureStack) -> None:
    dsn = secure_stack.environment("invoice-sync")["REVSYNC_POSTGRES_DSN"]
    with (
        psycopg.connect(dsn, autocommit=True) as connection,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        connection.execute("DELETE FROM revsync_dlt_ledger")


def test_the_operators_tooling_is_audited_as_its_authenticated_principals(
    secure_stack: SecureStack,
) -> None:
    actor = f"on-call-{uuid.uuid4().hex[:8]}"

    result = secure_stack.revsync("operator", "dlt", "ls", "--actor", actor)

    assert result.returncode == 0, result.stderr
    with psycopg.connect(secure_stack.admin_dsn()) as admin:
        rows = admin.execute(
            "SELECT db_role, kafka_principal, action FROM revsync_audit WHERE actor = %s",
            (actor,),
        ).fetchall()
    assert rows == [("revsync_operator", "User:revsync-operator", "list")]


def _topic(secure_stack: SecureStack, entity: str, event: str) -> str:
    """This run's topic of ``entity`` ``event`` (the private contracts rename them)."""
    from revsync.contracts.catalog import load_catalog

    catalog = load_catalog(secure_stack.contracts)
    return next(
        topic.name
        for topic in catalog.topics
        if topic.name.startswith(f"revsync.{entity}-") and f".{event}." in topic.name
    )


def test_a_service_whose_tables_were_never_migrated_is_told_to_migrate(
    secure_stack: SecureStack,
) -> None:
    never_made = f"revsync_never_made_{uuid.uuid4().hex[:8]}"
    dsn = secure_stack.environment("order-sync")["REVSYNC_POSTGRES_DSN"]
    tables = Tables(f"CREATE TABLE IF NOT EXISTS {never_made} (id integer);")

    with (
        psycopg.connect(dsn, autocommit=True) as connection,
        pytest.raises(SchemaMissing, match=f"{never_made} .*revsync db migrate"),
    ):
        ensure(connection, [tables])


def test_no_file_others_may_read_holds_a_password(secure_stack: SecureStack) -> None:
    credentials = secure_stack.stack.kafka.credentials
    passwords = [
        password.encode()
        for kind in ("kafka", "postgres", "registry")
        for password in credentials.passwords(kind).values()
    ]
    readable = [
        path
        for path in secure_stack.stack.settings.dir.rglob("*")
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o004
    ]

    leaking = [path for path in readable if any(p in path.read_bytes() for p in passwords)]

    assert readable, "the stack's logs at least are readable"
    assert leaking == []


def test_reading_dead_letters_without_the_right_fails_at_once(secure_stack: SecureStack) -> None:
    from revsync.contracts.catalog import load_catalog

    catalog = load_catalog(secure_stack.contracts)
    dead_letters = catalog.dead_letter_topic(catalog.consumer_of("order_sync"))
    assert _produce(_kafka(secure_stack, "order-sync"), dead_letters) is None
    # The operators' database role, but order-sync's Kafka user: it may write its dead
    # letters, never read them.
    order_sync = secure_stack.environment("order-sync")
    kafka_user = {k: v for k, v in order_sync.items() if k.startswith("REVSYNC_KAFKA_")}

    refused = secure_stack.revsync("operator", "dlt", "ls", env=kafka_user)
    allowed = secure_stack.revsync("operator", "dlt", "ls", "--service", "order-sync")

    assert refused.returncode == 2
    assert "AUTHORIZATION_FAILED" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr  # the operators' own user reads them
