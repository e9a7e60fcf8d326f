"""The secured stack (``revsync stack up --secure``) as the tests meet it: started once per
run beside the plain one (and stopped again only if this run started it), governed by the
governance job as its own principal, and each principal's settings."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from sandbox.harness import private_contracts, with_consumer_settings

from contract_fixtures import REPO_ROOT, SCHEMAS_DIR
from revsync.settings import STACK_PREFIX, Settings
from revsync_devstack.secure import POSTGRES_ADMIN
from revsync_devstack.settings import SECURE_DEFAULTS, StackSettings
from revsync_devstack.stack import LocalStack

REVSYNC = REPO_ROOT / ".venv" / "bin" / "revsync"


@dataclass(frozen=True)
class SecureStack:
    stack: LocalStack
    contracts: Path
    """This run's private contracts, governed on the secured stack."""

    def environment(self, identity: str) -> dict[str, str]:
        """A principal's settings (a deployable's name, ``operator``, ``governance``)."""
        return self.stack.environment(identity) | {"REVSYNC_SCHEMAS_DIR": str(self.contracts)}

    def settings(self, identity: str) -> Settings:
        """What a process authenticated as ``identity`` loads from its environment."""
        with pytest.MonkeyPatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("REVSYNC_")]:
                patch.delenv(name)
            for name, value in self.environment(identity).items():
                patch.setenv(name, value)
            return Settings.load()

    def admin_dsn(self) -> str:
        """The cluster's superuser: what the tests check with, never what revsync runs as."""
        return self.stack.postgres.dsn(role=POSTGRES_ADMIN)

    def revsync(
        self, identity: str, *arguments: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``revsync ARGUMENTS`` run as ``identity`` (with ``env`` over its settings), as
        its own process."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("REVSYNC_")}
        return subprocess.run(
            [str(REVSYNC), *arguments],
            env={**clean, **self.environment(identity), **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


def start_secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """The ``secure_stack`` fixture's body (tests/conftest.py)."""
    settings = StackSettings.model_validate(
        {**_stack_environment(), **SECURE_DEFAULTS, "secure": True}
    )
    stack = LocalStack(settings)
    was_running = stack.is_up()
    stack.up()
    contracts = private_contracts(SCHEMAS_DIR, tmp_path_factory.mktemp("secure") / "contracts")
    with_consumer_settings(contracts, retry_tiers=["1s", "2s"])
    secured = SecureStack(stack, contracts)
    for command in (
        ("db", "migrate"),
        ("topics", "apply", "--dir", str(contracts)),
        ("schemas", "register", "--dir", str(contracts)),
        ("acls", "apply", "--dir", str(contracts)),
    ):
        result = secured.revsync("governance", *command)
        assert result.returncode == 0, f"revsync {' '.join(command)}: {result.stderr}"
    yield secured
    if not was_running:
        gc.collect()
        stack.down()


def _stack_environment() -> Mapping[str, str]:
    """Only the stack's heap and timeout settings carry over: its folder and ports are the
    secured stack's own."""
    carried = ("kafka_heap", "registry_heap", "start_timeout_s", "registry_java")
    return {
        name: value
        for name in carried
        if (value := os.environ.get(f"{STACK_PREFIX}{name.upper()}")) is not None
    }
