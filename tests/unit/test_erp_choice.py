"""The ERP port made from the settings (revsync.connectors.erps): the one ERP in use, or the
routes of each legal entity; a missing setting is named before anything is called."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from revsync.connectors.business_central import BusinessCentralAdapter
from revsync.connectors.erp import ErpRestAdapter
from revsync.connectors.erp_routes import ErpRoutes
from revsync.connectors.erps import erp_port
from revsync.connectors.netsuite import NetSuiteAdapter
from revsync.erp_settings import ErpSettings
from revsync.ports.erp import ErpPort
from revsync.settings import ServiceSettings, SettingsError

pytestmark = pytest.mark.unit


def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


NETSUITE = {
    "REVSYNC_NETSUITE_ACCOUNT_ID": "1234567_SB1",
    "REVSYNC_NETSUITE_CLIENT_ID": "client",
    "REVSYNC_NETSUITE_CERTIFICATE_ID": "kid",
    "REVSYNC_NETSUITE_SUBSIDIARIES": json.dumps({"US01": "1", "CA01": "2"}),
}
BUSINESS_CENTRAL = {
    "REVSYNC_BUSINESS_CENTRAL_API_URL": "https://api.businesscentral.dynamics.com/v2.0/"
    "tenant/production/api/v2.0",
    "REVSYNC_BUSINESS_CENTRAL_TENANT_ID": "tenant",
    "REVSYNC_BUSINESS_CENTRAL_CLIENT_ID": "client",
    "REVSYNC_BUSINESS_CENTRAL_CLIENT_SECRET": "secret",
    "REVSYNC_BUSINESS_CENTRAL_COMPANIES": json.dumps({"DE01": "CRONUS DE"}),
}
REFERENCE = {"REVSYNC_ERP_BASE_URL": "https://erp.example", "REVSYNC_ERP_API_TOKEN": "t"}


def port_for(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> ErpPort:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return erp_port(ServiceSettings.load(), ErpSettings.load())


def test_the_reference_erp_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    port = port_for(monkeypatch, REFERENCE)

    assert isinstance(port, ErpRestAdapter)
    port.close()


def test_netsuite_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    port = port_for(
        monkeypatch,
        {
            **NETSUITE,
            "REVSYNC_ERP_SYSTEM": "netsuite",
            "REVSYNC_NETSUITE_PRIVATE_KEY": private_key(),
        },
    )

    assert isinstance(port, NetSuiteAdapter)
    port.close()


def test_legal_entities_routed_to_three_erps(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {"US01": "netsuite", "CA01": "reference", "DE01": "business-central"}
    port = port_for(
        monkeypatch,
        {
            **REFERENCE,
            **NETSUITE,
            **BUSINESS_CENTRAL,
            "REVSYNC_NETSUITE_PRIVATE_KEY": private_key(),
            "REVSYNC_ERP_ROUTES": json.dumps(routes),
        },
    )

    assert isinstance(port, ErpRoutes)
    assert port.routes == routes
    assert {name: type(erp) for name, erp in port.erps.items()} == {
        "reference": ErpRestAdapter,
        "netsuite": NetSuiteAdapter,
        "business-central": BusinessCentralAdapter,
    }
    port.close()


@pytest.mark.parametrize(
    ("system", "environment", "missing"),
    [
        ("netsuite", NETSUITE, "REVSYNC_NETSUITE_PRIVATE_KEY"),
        ("business-central", {}, "REVSYNC_BUSINESS_CENTRAL_API_URL"),
        ("reference", {}, "REVSYNC_ERP_BASE_URL"),
    ],
)
def test_a_missing_setting_of_the_erp_in_use_is_named(
    monkeypatch: pytest.MonkeyPatch, system: str, environment: dict[str, str], missing: str
) -> None:
    with pytest.raises(SettingsError, match=missing):
        port_for(monkeypatch, {**environment, "REVSYNC_ERP_SYSTEM": system})


def test_a_system_and_routes_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVSYNC_ERP_SYSTEM", "netsuite")
    monkeypatch.setenv("REVSYNC_ERP_ROUTES", json.dumps({"US01": "reference"}))

    with pytest.raises(SettingsError, match="set one of them"):
        ErpSettings.load()
