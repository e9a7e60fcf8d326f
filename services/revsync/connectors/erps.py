"""The ERP port a service calls, made from the settings: the adapter of the one ERP in use, or
the ERPs of every legal entity behind one port (:class:`~revsync.connectors.erp_routes.ErpRoutes`).
"""

from __future__ import annotations

from revsync.connectors.business_central import BusinessCentralAdapter, BusinessCentralConfig
from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync.connectors.erp_routes import ErpRoutes
from revsync.connectors.netsuite import (
    DEFAULT_CURRENCIES,
    NetSuiteAdapter,
    NetSuiteConfig,
    account_url,
)
from revsync.erp_settings import BUSINESS_CENTRAL, NETSUITE, REFERENCE, ErpSettings, ErpSystem
from revsync.ports.erp import ErpPort
from revsync.settings import ServiceSettings

ENTRA = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"


def erp_port(service: ServiceSettings, erp: ErpSettings) -> ErpPort:
    """The ERP port: one adapter, or the routes of every legal entity over each ERP's."""
    adapters: dict[str, ErpPort] = {
        system: adapter(system, service, erp) for system in sorted(erp.systems)
    }
    if not erp.erp_routes:
        return adapters[erp.erp_system]
    return ErpRoutes(adapters, erp.erp_routes)


def adapter(system: ErpSystem, service: ServiceSettings, erp: ErpSettings) -> ErpPort:
    if system == REFERENCE:
        service.required("erp_base_url", "erp_api_token")
        assert service.erp_base_url
        assert service.erp_api_token
        return ErpRestAdapter(
            ErpConfig(service.erp_base_url, service.erp_api_token, timeout_s=service.http_timeout_s)
        )
    if system == NETSUITE:
        return NetSuiteAdapter(netsuite_config(erp, service.http_timeout_s))
    assert system == BUSINESS_CENTRAL
    return BusinessCentralAdapter(business_central_config(erp, service.http_timeout_s))


def netsuite_config(erp: ErpSettings, timeout_s: float) -> NetSuiteConfig:
    erp.required(
        "netsuite_account_id",
        "netsuite_client_id",
        "netsuite_certificate_id",
        "netsuite_private_key",
        "netsuite_subsidiaries",
    )
    assert erp.netsuite_account_id
    assert erp.netsuite_client_id
    assert erp.netsuite_certificate_id
    assert erp.netsuite_private_key
    return NetSuiteConfig(
        base_url=erp.netsuite_base_url or account_url(erp.netsuite_account_id),
        account_id=erp.netsuite_account_id,
        client_id=erp.netsuite_client_id,
        certificate_id=erp.netsuite_certificate_id,
        private_key=erp.netsuite_private_key,
        subsidiaries=erp.netsuite_subsidiaries,
        currencies=erp.netsuite_currencies or DEFAULT_CURRENCIES,
        locations=erp.netsuite_locations,
        algorithm=erp.netsuite_algorithm,
        timeout_s=timeout_s,
    )


def business_central_config(erp: ErpSettings, timeout_s: float) -> BusinessCentralConfig:
    erp.required(
        "business_central_api_url",
        "business_central_tenant_id",
        "business_central_client_id",
        "business_central_client_secret",
        "business_central_companies",
    )
    assert erp.business_central_api_url
    assert erp.business_central_tenant_id
    assert erp.business_central_client_id
    assert erp.business_central_client_secret
    return BusinessCentralConfig(
        api_url=erp.business_central_api_url,
        token_url=erp.business_central_token_url
        or ENTRA.format(tenant=erp.business_central_tenant_id),
        tenant_id=erp.business_central_tenant_id,
        client_id=erp.business_central_client_id,
        client_secret=erp.business_central_client_secret,
        companies=erp.business_central_companies,
        timeout_s=timeout_s,
    )
