"""The ERP a pipeline runs on (:class:`sandbox.harness.Pipeline`): the reference ERP, NetSuite
or Business Central, each as its simulator over the sandbox's books. For each: how its
simulator is started, the settings that point the services at it with credentials of their
own, and the deployable that brings its changes into Kafka (the reference ERP's outbox
publisher, or ``erp-inbound`` for an ERP reached through its API)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.business_central import BusinessCentralSandbox
from sandbox.business_central import simulator as bc
from sandbox.erp.simulator import DEFAULT_API_TOKEN
from sandbox.netsuite import NetSuiteSandbox
from sandbox.netsuite.suiteql import DEFAULT_SUBSIDIARIES
from sandbox.scenario import ENTITIES

SYSTEMS = ("reference", "netsuite", "business-central")
OUTBOX_PUBLISHER = "erp-outbox-publisher"
INBOUND = "erp-inbound"
NETSUITE_CLIENT_ID = "revsync-sandbox-integration"
NETSUITE_CERTIFICATE_ID = "revsync-sandbox-certificate"


@dataclass
class SandboxErp:
    """One ERP of a pipeline; :meth:`options` before its simulator starts, :meth:`environment`
    once it serves at ``url``."""

    system: str
    workdir: Path
    inbound_port: int
    """Where erp-inbound serves its webhook receiver (Business Central notifies it there)."""
    secrets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown ERP {self.system!r}; one of {', '.join(SYSTEMS)}")

    @property
    def module(self) -> str:
        """The simulator's module, for ``python -m sandbox.<module>``."""
        return {"reference": "erp", "netsuite": "netsuite"}.get(self.system, "business_central")

    @property
    def publisher(self) -> str:
        """The deployable that brings the ERP's changes into Kafka."""
        return OUTBOX_PUBLISHER if self.system == "reference" else INBOUND

    @property
    def idle(self) -> str:
        """The deployable a pipeline on this ERP does not run."""
        return INBOUND if self.system == "reference" else OUTBOX_PUBLISHER

    def options(self) -> list[list[str]]:
        """The simulator's command-line options beyond its database, delays and reset."""
        if self.system == "netsuite":
            return [
                ["--client-id", NETSUITE_CLIENT_ID],
                ["--certificate-id", NETSUITE_CERTIFICATE_ID],
                ["--public-key", str(self._netsuite_key())],
            ]
        return []

    def environment(self, url: str, via: Callable[[str, str], str]) -> dict[str, str]:
        """The services' settings for this ERP at ``url`` (reached through ``via``)."""
        if self.system == "reference":
            return {
                "REVSYNC_ERP_BASE_URL": via("erp", url),
                "REVSYNC_ERP_API_TOKEN": DEFAULT_API_TOKEN,
            }
        if self.system == "netsuite":
            return {
                "REVSYNC_ERP_SYSTEM": "netsuite",
                "REVSYNC_NETSUITE_ACCOUNT_ID": "1234567_SB1",
                "REVSYNC_NETSUITE_BASE_URL": via("erp", url),
                "REVSYNC_NETSUITE_CLIENT_ID": NETSUITE_CLIENT_ID,
                "REVSYNC_NETSUITE_CERTIFICATE_ID": NETSUITE_CERTIFICATE_ID,
                "REVSYNC_NETSUITE_PRIVATE_KEY": self.secrets["netsuite_private_key"],
                "REVSYNC_NETSUITE_SUBSIDIARIES": json.dumps(DEFAULT_SUBSIDIARIES),
                "REVSYNC_NETSUITE_POLL_INTERVAL_S": "1",
                "REVSYNC_NETSUITE_TIMEZONE": "America/Los_Angeles",
                "REVSYNC_ERP_REGIONS": json.dumps({e.code: e.region for e in ENTITIES}),
                "REVSYNC_ERP_INBOUND_PORT": str(self.inbound_port),
            }
        root, tenant = via("erp", url), bc.DEFAULT_TENANT_ID
        return {
            "REVSYNC_ERP_SYSTEM": "business-central",
            "REVSYNC_BUSINESS_CENTRAL_API_URL": (
                f"{root}/v2.0/{tenant}/{bc.DEFAULT_ENVIRONMENT}/api/v2.0"
            ),
            "REVSYNC_BUSINESS_CENTRAL_TOKEN_URL": f"{root}/{tenant}/oauth2/v2.0/token",
            "REVSYNC_BUSINESS_CENTRAL_TENANT_ID": tenant,
            "REVSYNC_BUSINESS_CENTRAL_CLIENT_ID": bc.DEFAULT_CLIENT_ID,
            "REVSYNC_BUSINESS_CENTRAL_CLIENT_SECRET": bc.DEFAULT_CLIENT_SECRET,
            # Companies by name, as people configure them; the adapter finds their ids.
            "REVSYNC_BUSINESS_CENTRAL_COMPANIES": json.dumps({e.code: e.code for e in ENTITIES}),
            "REVSYNC_BUSINESS_CENTRAL_NOTIFICATION_URL": f"http://127.0.0.1:{self.inbound_port}"
            "/erp/business-central/notifications",
            "REVSYNC_BUSINESS_CENTRAL_CLIENT_STATE": self.secrets.setdefault(
                "client_state", secrets.token_urlsafe(32)
            ),
            "REVSYNC_BUSINESS_CENTRAL_RECONCILE_INTERVAL_S": "5",
            "REVSYNC_ERP_REGIONS": json.dumps({e.code: e.region for e in ENTITIES}),
            "REVSYNC_ERP_INBOUND_PORT": str(self.inbound_port),
        }

    def harden(self, url: str) -> None:
        """The ERP's own ways of making an integration's life hard, beside the shared fault
        knobs: NetSuite's concurrency pool small, Business Central's at its documented five and its
        notifications sent twice."""
        if self.system == "netsuite":
            with NetSuiteSandbox(url) as account:
                account.set_settings(concurrency_limit=4)
        elif self.system == "business-central":
            with BusinessCentralSandbox(url) as environment:
                environment.configure(concurrency_limit=5)
                environment.duplicate_next_notifications(1_000_000)

    def _netsuite_key(self) -> Path:
        """A key pair made for this run: the private key for revsync's token requests, the
        public one registered with the simulator as the certificate's."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.secrets["netsuite_private_key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = self.workdir / f"netsuite-certificate-{secrets.token_hex(4)}.pem"
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return public
