"""The NetSuite adapter on the NetSuite simulator: the whole ERP port contract, then what is
NetSuite's own: the certificate-signed token and its refusals, the token's refresh, exactly
once under lost answers and idempotency keys, the account's concurrency pool, every error
code's place in revsync's taxonomy, SuiteQL's paging, and async jobs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr
from sandbox.erp import ErpSandbox
from sandbox.http import Faults
from sandbox.netsuite import NetSuiteSandbox, NetSuiteSimulator
from sandbox.netsuite import Settings as NetSuiteSettings

from erp_sandbox_control import NEVER, SandboxErpControl
from port_contracts import (
    ErpContract,
)
from revsync.connectors.netsuite import (
    NetSuiteAdapter,
    NetSuiteConfig,
)
from revsync.settings import Settings

pytestmark = pytest.mark.integration

CLIENT_ID = "revsync-integration-test"
CERTIFICATE_ID = "cert-7f3a"
SUBSIDIARIES = {"US01": "1", "CA01": "2", "DE01": "3", "GB01": "4"}
TOKEN = "/services/rest/auth/oauth2/v1/token"
RECORD = "/services/rest/record/v1"
SUITEQL = "/services/rest/query/v1/suiteql"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str
    key: Any


def key_pair(kind: str = "rsa") -> KeyPair:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, public, key)


@pytest.fixture(scope="module")
def certificate() -> KeyPair:
    return key_pair()


@pytest.fixture(scope="module")
def netsuite(settings: Settings, certificate: KeyPair) -> Iterator[NetSuiteSimulator]:
    simulator = NetSuiteSimulator(
        settings.postgres_dsn.get_secret_value(),
        reset=True,
        invoice_delay_s=NEVER,
        ship_delay_s=NEVER,
        seed=7,
        integration=(CLIENT_ID, CERTIFICATE_ID, certificate.public_pem),
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def books(netsuite: NetSuiteSimulator) -> Iterator[ErpSandbox]:
    """The books' control API; faults and the clock calmed after every test."""
    with ErpSandbox(netsuite.url) as sandbox:
        yield sandbox
        sandbox.set_faults(**asdict(Faults()))
        sandbox.set_clock(invoice_delay_s=NEVER, ship_delay_s=NEVER, payment_delay_s=-1)


@pytest.fixture
def knobs(netsuite: NetSuiteSimulator) -> Iterator[NetSuiteSandbox]:
    """NetSuite's own knobs, back to their defaults after every test."""
    with NetSuiteSandbox(netsuite.url) as sandbox:
        yield sandbox
        sandbox.set_settings(**asdict(NetSuiteSettings()))


def config(netsuite: NetSuiteSimulator, certificate: KeyPair, **changes: Any) -> NetSuiteConfig:
    return replace(
        NetSuiteConfig(
            base_url=netsuite.url,
            account_id=netsuite.account_id,
            client_id=CLIENT_ID,
            certificate_id=CERTIFICATE_ID,
            private_key=SecretStr(certificate.private_pem),
            subsidiaries=SUBSIDIARIES,
            timeout_s=5.0,
        ),
        **changes,
    )


@pytest.fixture
def erp(
    netsuite: NetSuiteSimulator, certificate: KeyPair, books: ErpSandbox, knobs: NetSuiteSandbox
) -> Iterator[NetSuiteAdapter]:
    adapter = NetSuiteAdapter(config(netsuite, certificate))
    yield adapter
    adapter.close()


@pytest.fixture
def erp_control(books: ErpSandbox) -> SandboxErpControl:
    return SandboxErpControl(books)


class TestNetSuiteAdapter(ErpContract):
    """The shared ERP port contract, on NetSuite."""
