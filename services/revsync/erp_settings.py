"""Which ERP each legal entity is on, and how revsync reaches each kind of ERP: the reference
REST API (:class:`~revsync.settings.ServiceSettings`' ``erp_*``), NetSuite's SuiteTalk REST
web services, and Business Central's API v2.0. Read by every service that calls an ERP and by
``revsync run erp-inbound``, which brings the API-reached ERPs' changes in.

With no routes, every legal entity is on ``REVSYNC_ERP_SYSTEM``. With routes
(``REVSYNC_ERP_ROUTES='{"US01": "netsuite", "DE01": "business-central"}'``), every legal
entity revsync books for must be named: one an order names without a route is refused.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from revsync.settings import ENV_PREFIX, SettingsError, _https_unless_loopback, load_checked

ErpSystem = Literal["reference", "netsuite", "business-central"]
REFERENCE: ErpSystem = "reference"
NETSUITE: ErpSystem = "netsuite"
BUSINESS_CENTRAL: ErpSystem = "business-central"
API_REACHED: tuple[ErpSystem, ...] = (NETSUITE, BUSINESS_CENTRAL)
"""ERPs whose changes come through their API (``revsync run erp-inbound``) rather than an
outbox in their database (``revsync run erp-outbox-publisher``)."""


class ErpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    erp_system: ErpSystem = Field(
        default=REFERENCE,
        description="The ERP of every legal entity, when no routes are set: reference, "
        "netsuite or business-central.",
    )
    erp_routes: dict[str, ErpSystem] = Field(
        default_factory=dict,
        description='The ERP of each legal entity, JSON: {"US01": "netsuite", ...}.',
    )
    erp_regions: dict[str, str] = Field(
        default_factory=dict,
        description='Sales region of each legal entity, JSON: {"US01": "NA", ...}, for the '
        "documents of ERPs whose orders carry none.",
    )

    netsuite_account_id: str | None = Field(
        default=None, pattern=r"^[0-9A-Za-z_]+$", description="NetSuite account id: 1234567_SB1."
    )
    netsuite_base_url: str | None = Field(
        default=None,
        description="SuiteTalk REST base URL; default https://<account>.suitetalk.api.netsuite.com.",
    )
    netsuite_client_id: str | None = Field(
        default=None, description="The integration record's client id (consumer key)."
    )
    netsuite_certificate_id: str | None = Field(
        default=None, description="The M2M certificate id NetSuite gave the uploaded certificate."
    )
    netsuite_private_key: SecretStr | None = Field(
        default=None, description="PEM private key of that certificate (signs token requests)."
    )
    netsuite_algorithm: Literal["PS256", "PS384", "PS512", "ES256", "ES384", "ES512"] = Field(
        default="PS256", description="The JWT assertion's signing algorithm."
    )
    netsuite_subsidiaries: dict[str, str] = Field(
        default_factory=dict,
        description='Subsidiary internal id of each legal entity, JSON: {"US01": "1", ...}.',
    )
    netsuite_currencies: dict[str, str] = Field(
        default_factory=dict,
        description='Currency internal id of each ISO code, JSON: {"USD": "1", ...}; default: '
        "NetSuite's usual first four (USD 1, GBP 2, CAD 3, EUR 4).",
    )
    netsuite_locations: dict[str, str] = Field(
        default_factory=dict,
        description='Location internal id of each sales region, JSON: {"NA": "7", ...}; a '
        "region not named is taken as its location's id.",
    )
    netsuite_timezone: str = Field(
        default="America/Los_Angeles",
        description="The account's time zone (Company Information): SuiteQL dates are in it.",
    )
    netsuite_poll_interval_s: float = Field(
        default=30.0, gt=0, description="How often erp-inbound asks NetSuite for changes."
    )
    netsuite_overlap_s: float = Field(
        default=120.0,
        ge=0,
        description="How far before its watermark each poll reads again (late commits).",
    )
    netsuite_after_submit_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of the afterSubmit script's posts; unset: the endpoint is off.",
    )

    business_central_api_url: str | None = Field(
        default=None,
        description="https://api.businesscentral.dynamics.com/v2.0/<tenant>/<environment>/api/v2.0",
    )
    business_central_token_url: str | None = Field(
        default=None,
        description="Entra token endpoint; default https://login.microsoftonline.com/<tenant>/"
        "oauth2/v2.0/token.",
    )
    business_central_tenant_id: str | None = Field(default=None, description="Entra tenant id.")
    business_central_client_id: str | None = Field(
        default=None, description="The app registration's client id."
    )
    business_central_client_secret: SecretStr | None = Field(
        default=None, description="The app registration's client secret."
    )
    business_central_companies: dict[str, str] = Field(
        default_factory=dict,
        description='Company id of each legal entity, JSON: {"DE01": "<guid>", ...}.',
    )
    business_central_notification_url: str | None = Field(
        default=None,
        description="Public https URL of erp-inbound's /erp/business-central/notifications.",
    )
    business_central_client_state: SecretStr | None = Field(
        default=None, description="Secret Business Central echoes in every notification."
    )
    business_central_renew_before_s: float = Field(
        default=12 * 3600.0, gt=0, description="Renew a webhook subscription this long before."
    )
    business_central_reconcile_interval_s: float = Field(
        default=300.0, gt=0, description="How often erp-inbound polls for what webhooks miss."
    )

    erp_inbound_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the receiver of webhooks, in its own pod
        description="Address erp-inbound's webhook receiver binds.",
    )
    erp_inbound_port: int = Field(
        default=8091, ge=0, le=65535, description="Port of erp-inbound's webhook receiver."
    )

    @field_validator(
        "netsuite_base_url",
        "business_central_api_url",
        "business_central_token_url",
        "business_central_notification_url",
    )
    @classmethod
    def _https_off_loopback(cls, url: str | None) -> str | None:
        return _https_unless_loopback(url)

    @model_validator(mode="after")
    def _routes_name_known_erps(self) -> Self:
        if self.erp_routes and self.erp_system != REFERENCE:
            raise ValueError(
                "REVSYNC_ERP_SYSTEM and REVSYNC_ERP_ROUTES both choose ERPs; set one of them"
            )
        return self

    @property
    def systems(self) -> frozenset[ErpSystem]:
        """The ERPs in use."""
        return (
            frozenset(self.erp_routes.values()) if self.erp_routes else frozenset({self.erp_system})
        )

    def required(self, *names: str) -> None:
        """Fail, naming every missing variable, unless all of ``names`` are set."""
        missing = [f"{ENV_PREFIX}{name.upper()}" for name in names if not getattr(self, name)]
        if missing:
            raise SettingsError(f"this ERP needs {', '.join(missing)}")

    @classmethod
    def load(cls) -> ErpSettings:
        return load_checked(cls)
