"""Typed configuration from ``REVSYNC_*`` environment variables, validated at start-up.

Every service and tool reads its endpoints through :class:`Settings`. Any librdkafka property
passes through as ``REVSYNC_KAFKA_<PROPERTY>`` (dots written as underscores), so a real
cluster's ``security.protocol``, ``sasl.*`` and ``ssl.*`` need no code change. Any setting may
instead be a file in ``REVSYNC_SECRETS_DIR``, named after its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from revsync.transport import (
    https_off_loopback,
    kafka_in_clear_off_loopback,
    on_loopback,
    unverified_tls,
    verified_tls_off_loopback,
)

ENV_PREFIX = "REVSYNC_"
KAFKA_PASSTHROUGH_PREFIX = "REVSYNC_KAFKA_"
STACK_PREFIX = "REVSYNC_STACK_"
"""Reserved for the development stack (revsync-devstack), which checks its own variables."""
SECRETS_DIR = "REVSYNC_SECRETS_DIR"
"""A directory of settings as files, each named after its variable (``REVSYNC_POSTGRES_DSN``),
as Kubernetes mounts a Secret, so credentials need not be in the environment. ``load()`` reads
it; a setting given both there and in the environment is refused, since neither would clearly
be the one meant."""
CHECKOUT_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "avro"
"""The contracts of a checkout; an installed revsync is given ``REVSYNC_SCHEMAS_DIR``."""


_S = TypeVar("_S", bound=BaseSettings)


class SettingsError(ValueError):
    """A setting is unknown, malformed or contradicts another; the message names it."""


# The local development stack's default ports (revsync-devstack), so a checkout works as it is.
LOCAL_BOOTSTRAP = "127.0.0.1:19092"
LOCAL_REGISTRY = "http://127.0.0.1:18081/apis/ccompat/v7"
LOCAL_POSTGRES = "postgresql://revsync@127.0.0.1:15432/revsync"


class Settings(BaseSettings):
    """Endpoints and client options shared by every revsync process (``REVSYNC_*``).

    Defaults point at the local stack (``revsync stack up``), so a checkout works as it is.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    bootstrap_servers: str = Field(
        default=LOCAL_BOOTSTRAP, min_length=1, description="Kafka bootstrap servers."
    )
    schema_registry_url: str = Field(
        default=LOCAL_REGISTRY,
        description="Confluent-compatible schema registry API (Confluent, Apicurio ccompat, ...).",
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        default=None, description="Registry credentials as USER:PASSWORD."
    )
    schema_registry_ca_location: Path | None = Field(
        default=None,
        description="The CA certificate (PEM) the registry's TLS certificate is verified "
        "against; default: the system's trusted CAs.",
    )
    postgres_dsn: SecretStr = Field(
        default=SecretStr(LOCAL_POSTGRES), description="libpq connection string for PostgreSQL."
    )
    schemas_dir: Path = Field(
        default=CHECKOUT_SCHEMAS,
        description="The event contracts: catalog.yaml, the .avsc files and their releases.",
    )
    kafka: dict[str, str] = Field(
        default_factory=dict,
        # Never in repr: SASL passwords and key passphrases pass through here.
        repr=False,
        description="librdkafka properties, from REVSYNC_KAFKA_<PROPERTY> variables.",
    )

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url_is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return https_off_loopback(url.rstrip("/"))

    @field_validator("postgres_dsn")
    @classmethod
    def _dsn_is_postgres(cls, dsn: SecretStr) -> SecretStr:
        if not dsn.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return verified_tls_off_loopback(dsn)

    @model_validator(mode="after")
    def _kafka_options_agree(self) -> Self:
        protocol = self.kafka.get("security.protocol", "plaintext").lower()
        for key in self.kafka:
            if key == "bootstrap.servers":
                raise ValueError(
                    "REVSYNC_KAFKA_BOOTSTRAP_SERVERS duplicates REVSYNC_BOOTSTRAP_SERVERS; "
                    "set only REVSYNC_BOOTSTRAP_SERVERS"
                )
            if key.startswith("sasl.") and not protocol.startswith("sasl_"):
                raise ValueError(
                    f"{kafka_env_name(key)} is set but REVSYNC_KAFKA_SECURITY_PROTOCOL is "
                    f"{protocol!r}; SASL options need SASL_PLAINTEXT or SASL_SSL"
                )
            if unverified_tls(key, self.kafka[key]):
                raise ValueError(
                    f"{kafka_env_name(key)}={self.kafka[key]} would accept any broker's "
                    "certificate; revsync verifies it (name a CA with "
                    f"{kafka_env_name('ssl.ca.location')} instead)"
                )
            if key.startswith("ssl.") and protocol not in ("ssl", "sasl_ssl"):
                raise ValueError(
                    f"{kafka_env_name(key)} is set but REVSYNC_KAFKA_SECURITY_PROTOCOL is "
                    f"{protocol!r}; TLS options need SSL or SASL_SSL"
                )
        remote = kafka_in_clear_off_loopback(self.bootstrap_servers)
        if protocol == "sasl_plaintext" and remote:
            raise ValueError(
                f"REVSYNC_KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT but broker {remote} is not "
                "on this machine; the SASL credentials would cross in clear, so use SASL_SSL"
            )
        if self.kafka:
            _check_librdkafka_accepts(self.kafka)
        return self

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration for a client: endpoints, pass-through, then overrides."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka, **overrides}

    def registry_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's ``SchemaRegistryClient``."""
        # Without a timeout the client waits on a stalled registry forever.
        config: dict[str, Any] = {"url": self.schema_registry_url, "timeout": 10}
        if self.schema_registry_basic_auth is not None:
            config["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        if self.schema_registry_ca_location is not None:
            config["ssl.ca.location"] = str(self.schema_registry_ca_location)
        return config

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _KafkaPassthrough(settings_cls), env_settings, file_secret_settings

    @classmethod
    def load(cls) -> Settings:
        """Read and validate the environment; raise :class:`SettingsError` naming the culprit."""
        return load_checked(cls)


class ServiceSettings(BaseSettings):
    """What a running service needs beyond the endpoints (``revsync run <service>``): the CRM
    and ERP it talks to, its health port, and how its consumer loop batches and retries.

    The CRM and ERP settings have no defaults: a service must be told where they are.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    crm_instance_url: str | None = Field(
        default=None, description="Salesforce instance URL, e.g. https://acme.my.salesforce.com."
    )
    crm_client_id: str | None = Field(default=None, description="Connected app consumer key.")
    crm_client_secret: SecretStr | None = Field(
        default=None, description="Connected app consumer secret."
    )
    crm_api_version: str = Field(
        default="v62.0", pattern=r"^v\d+\.\d$", description="Salesforce REST API version."
    )
    crm_client_name: str = Field(
        default="revsync",
        min_length=1,
        description="Sent as Sforce-Call-Options client=; changes carrying it are not echoed.",
    )
    crm_integration_user_id: str | None = Field(
        default=None, description="The integration user's id; its changes are not echoed."
    )
    crm_pubsub_endpoint: str = Field(
        default="api.pubsub.salesforce.com:7443",
        pattern=r"^[^\s:/]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:]+\]:[0-9]{1,5}$",
        description="Salesforce's Pub/Sub API, host:port (the CDC bridge subscribes there).",
    )
    crm_pubsub_tls: bool = Field(
        default=True,
        description="TLS to the Pub/Sub API; plain gRPC is refused off this machine.",
    )
    cdc_channels: str = Field(
        default="/data/OrderChangeEvent",
        pattern=r"^\s*/data/[A-Za-z0-9_]+(\s*,\s*/data/[A-Za-z0-9_]+)*\s*$",
        description="Change event channels the CDC bridge subscribes to, comma-separated.",
    )
    cdc_initial: str = Field(
        default="latest",
        pattern=r"^(latest|earliest|since=.+)$",
        description="A channel's first start: latest, earliest, or since=<ISO time> (reconciled).",
    )
    cdc_after_gap: str = Field(
        default="earliest",
        pattern=r"^(latest|earliest)$",
        description="Where a channel resumes once a lost position is written as a gap record.",
    )
    cdc_retention_s: float = Field(
        default=72 * 3600.0,
        gt=0,
        description="Change event retention; an older checkpoint is a gap, whatever the API says.",
    )
    cdc_max_in_flight: int = Field(
        default=100,
        ge=1,
        le=100,
        description="Events requested and not yet in Kafka, per channel (the API allows 100).",
    )
    cdc_stall_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A stream silent this long (no event, no keepalive) is subscribed again.",
    )
    erp_base_url: str | None = Field(default=None, description="The ERP REST API's base URL.")
    erp_api_token: SecretStr | None = Field(default=None, description="ERP API bearer token.")
    erp_outbox_dsn: SecretStr | None = Field(
        default=None, description="libpq DSN of the ERP database holding its outbox."
    )
    erp_outbox_table: str = Field(
        default="erp.outbox", description="The ERP's outbox table (Debezium outbox columns)."
    )
    erp_outbox_published_column: str | None = Field(
        default="published_at",
        description="Column the publisher stamps on published rows; unset: rows are deleted.",
    )
    erp_outbox_channel: str | None = Field(
        default="erp_outbox", description="NOTIFY channel the ERP signals new outbox rows on."
    )
    order_rules: Path | None = Field(
        default=None, description="order_sync's acceptance rules (YAML); default: bundled."
    )
    customer_qualify: str = Field(
        default="flag,first-order",
        pattern=r"^\s*(flag|first-order)(\s*,\s*(flag|first-order))*\s*$",
        description=(
            "When customer_sync masters a CRM account in the ERP, comma-separated: flag "
            "(Sync_To_ERP__c is true), first-order (its first activated order)."
        ),
    )
    customer_match: str = Field(
        default="tax_id,duns,name_country",
        pattern=r"^\s*(tax_id|duns|name_country)(\s*,\s*(tax_id|duns|name_country))*\s*$",
        description=(
            "What makes a new account a likely duplicate of an ERP customer, comma-separated: "
            "tax_id, duns, name_country (normalised name in the same country)."
        ),
    )
    http_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of one CRM or ERP call: connecting, sending and the whole answer.",
    )
    master_data_ttl_s: float = Field(
        default=60.0, ge=0, description="How long customers, products and prices are cached."
    )
    handler_concurrency: int = Field(
        default=8, ge=1, le=64, description="Orders order_sync handles at once (never two of one)."
    )
    health_port: int = Field(
        default=8080, ge=0, le=65535, description="/metrics, /healthz and /readyz (0: any)."
    )
    log_level: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level."
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Records per batch.")
    session_timeout_ms: int = Field(
        default=45_000, ge=6_000, description="Kafka consumer group session timeout."
    )
    max_poll_interval_ms: int = Field(
        default=300_000, ge=10_000, description="Longest batch before the group drops a member."
    )
    in_process_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries of a transient failure before a retry tier."
    )

    @field_validator("crm_instance_url", "erp_base_url")
    @classmethod
    def _https_off_loopback(cls, url: str | None) -> str | None:
        return _https_unless_loopback(url)

    @model_validator(mode="after")
    def _pubsub_in_clear_only_here(self) -> Self:
        host = self.crm_pubsub_endpoint.rsplit(":", 1)[0]
        if not self.crm_pubsub_tls and not on_loopback(host):
            raise ValueError(
                f"REVSYNC_CRM_PUBSUB_TLS is false but {self.crm_pubsub_endpoint} is not on this "
                "machine; the access token crosses it, so it is reached over TLS only"
            )
        return self

    @field_validator("erp_outbox_dsn")
    @classmethod
    def _outbox_dsn_verifies_tls(cls, dsn: SecretStr | None) -> SecretStr | None:
        return None if dsn is None else verified_tls_off_loopback(dsn)

    def required(self, *names: str) -> None:
        """Fail, naming every missing variable, unless all of ``names`` are set."""
        missing = [f"{ENV_PREFIX}{name.upper()}" for name in names if getattr(self, name) is None]
        if missing:
            raise SettingsError(f"this service needs {', '.join(missing)}")

    @classmethod
    def load(cls) -> ServiceSettings:
        return load_checked(cls)


class OpsSettings(BaseSettings):
    """The operators' tooling (``revsync dlt``): what it masks, and its loop guard."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    dlt_mask_fields: str = Field(
        # revsync's own (street and postal code; city and country stay, operators route by
        # them), Salesforce's compound addresses whole, its order, contact and person-account
        # emails and phones, and a change event nothing could decode (its raw bytes).
        default=(
            "street,postal_code,tracking_number,"
            "BillingStreet,BillingPostalCode,ShippingStreet,ShippingPostalCode,"
            "BillingAddress,ShippingAddress,MailingAddress,OtherAddress,Address,"
            "PersonMailingAddress,PersonOtherAddress,"
            "Email,BillingEmailAddress,PersonEmail,"
            "Phone,BillingPhoneNumber,MobilePhone,HomePhone,OtherPhone,AssistantPhone,Fax,"
            "PersonMobilePhone,PersonHomePhone,PersonOtherPhone,payloadBase64"
        ),
        description=(
            "Fields `dlt show` and `dlt export` mask, comma-separated: names or paths from the "
            "top (BillingAddress.Street), case-insensitive; a compound field is masked whole."
        ),
    )
    dlt_max_replays: int = Field(
        default=3, ge=1, le=100, description="Replays of one record before it is quarantined."
    )

    @property
    def mask_fields(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.dlt_mask_fields.split(",") if name.strip())

    @classmethod
    def load(cls) -> OpsSettings:
        return load_checked(cls)


def _https_unless_loopback(url: str | None) -> str | None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError("must be an https:// URL")
    return None if url is None else https_off_loopback(url)


class ConsoleSettings(BaseSettings):
    """The exception console (``revsync console``): where it listens, how people sign in (the
    company's OpenID Connect provider, or local accounts), and when an order counts as stuck.
    It reads and acts with the operators' endpoints and credentials (:class:`Settings`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    console_host: str = Field(default="127.0.0.1", description="Address the console binds.")
    console_port: int = Field(default=8090, ge=1, le=65535, description="Its HTTP port.")
    console_public_url: str | None = Field(
        default=None,
        description=(
            "The address people reach it at (https://…; http only on this machine): the "
            "OpenID Connect redirect URI is made from it. Default: http://<host>:<port>."
        ),
    )
    console_session_secret: SecretStr | None = Field(
        default=None, description="Signs the session cookie; at least 32 characters."
    )
    console_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 7, description="How long a sign-in lasts."
    )
    console_users_file: Path | None = Field(
        default=None,
        description="Local accounts (YAML: name, role, scrypt password hash); demo and tests.",
    )
    console_oidc_issuer: str | None = Field(
        default=None, description="The OpenID Connect provider's issuer URL (https)."
    )
    console_oidc_client_id: str | None = Field(default=None, description="The console's client.")
    console_oidc_client_secret: SecretStr | None = Field(
        default=None, description="Its client secret."
    )
    console_oidc_roles_claim: str = Field(
        default="roles", description="The ID and access tokens' claim that lists roles."
    )
    console_oidc_role_map: str = Field(
        default="revsync-viewer=viewer,revsync-operator=operator,revsync-admin=admin",
        description="The provider's role names to the console's, comma-separated.",
    )
    console_oidc_audience: str | None = Field(
        default=None,
        description=(
            "The audience API clients' bearer tokens must name; unset, the API takes no "
            "bearer tokens (the client id would let ID tokens pass for access tokens)."
        ),
    )
    console_stage_ages: str = Field(
        default="accepted=15m,invoiced=3d,shipped=7d",
        description="How long an order may wait for each stage before it is stuck.",
    )

    @field_validator("console_public_url", "console_oidc_issuer")
    @classmethod
    def _console_https_off_loopback(cls, url: str | None) -> str | None:
        return _https_unless_loopback(url)

    @model_validator(mode="after")
    def _console_sign_in(self) -> Self:
        secret = self.console_session_secret
        if secret is not None and len(secret.get_secret_value()) < 32:
            raise ValueError("console_session_secret: at least 32 characters")
        oidc = (self.console_oidc_issuer, self.console_oidc_client_id)
        if any(oidc) and not all(oidc):
            raise ValueError("console_oidc_issuer and console_oidc_client_id go together")
        return self

    @classmethod
    def load(cls) -> ConsoleSettings:
        return load_checked(cls)


class ProcessApiSettings(BaseSettings):
    """The process API (``revsync run process-api``): where it listens, whose bearer tokens it
    takes, how fast each client may call it, and how it answers while the ERP fails. The ERP,
    the order rules and the master data's time to live are the services' own
    (:class:`ServiceSettings`), so quotes are judged as orders are."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    process_api_host: str = Field(default="127.0.0.1", description="Address it binds.")
    process_api_port: int = Field(default=8095, ge=1, le=65535, description="Its HTTP port.")
    process_api_oidc_issuer: str | None = Field(
        default=None,
        description="The OpenID Connect provider whose access tokens it takes (https); required.",
    )
    process_api_oidc_audience: str | None = Field(
        default=None, description="The audience those tokens must name; required."
    )
    process_api_rate_per_s: float = Field(
        default=50.0, gt=0, description="Requests a second each client may make, sustained."
    )
    process_api_burst: int = Field(
        default=100, ge=1, description="Requests a client may make at once, above the rate."
    )
    process_api_breaker_failures: int = Field(
        default=5, ge=1, description="Failed ERP calls in a row that open its circuit breaker."
    )
    process_api_breaker_cool_down_s: float = Field(
        default=30.0, gt=0, description="How long the breaker stays open before one probe call."
    )
    process_api_live_ttl_s: float = Field(
        default=10.0, ge=0, description="How long credit positions and stock levels are cached."
    )
    process_api_stale_for_s: float = Field(
        default=86_400.0,
        ge=0,
        description="How old a cached ERP answer may be and still be given, marked stale, while "
        "the ERP cannot be asked.",
    )

    @field_validator("process_api_oidc_issuer")
    @classmethod
    def _issuer_https_off_loopback(cls, url: str | None) -> str | None:
        return _https_unless_loopback(url)

    @classmethod
    def load(cls) -> ProcessApiSettings:
        return load_checked(cls)


class _KafkaPassthrough(PydanticBaseSettingsSource):
    """Collects ``REVSYNC_KAFKA_<PROPERTY>`` variables and files into the ``kafka`` field."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        given = dict(os.environ)
        for name, path in secret_files().items():
            if name.startswith(KAFKA_PASSTHROUGH_PREFIX):
                # Stripped as pydantic strips the other files: a Secret's value often ends
                # with the newline of the file it was created from.
                given[name] = path.read_text(encoding="utf-8").strip()
        kafka = {
            name[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", "."): value
            for name, value in given.items()
            if name.startswith(KAFKA_PASSTHROUGH_PREFIX)
        }
        return {"kafka": kafka} if kafka else {}


def secret_files() -> dict[str, Path]:
    """The settings given as files in ``REVSYNC_SECRETS_DIR``, by variable name; none when it
    is unset. Hidden entries (Kubernetes' own ``..data``) are skipped; a file named after no
    variable, or after one the environment sets too, is refused."""
    directory = os.environ.get(SECRETS_DIR)
    if directory is None:
        return {}
    if not directory or not Path(directory).is_dir():
        raise SettingsError(f"{SECRETS_DIR}: {directory!r} is not a directory")
    files = {
        entry.name: entry for entry in Path(directory).iterdir() if not entry.name.startswith(".")
    }
    misnamed = sorted(name for name in files if not name.startswith(ENV_PREFIX))
    if misnamed:
        raise SettingsError(
            f"{SECRETS_DIR}: {', '.join(misnamed)} in {directory} names no setting; each file "
            f"there is named after the variable it sets, e.g. {ENV_PREFIX}POSTGRES_DSN"
        )
    twice = sorted(set(files) & set(os.environ))
    if twice:
        raise SettingsError(
            f"{', '.join(twice)} is set both in the environment and as a file in "
            f"{SECRETS_DIR} ({directory}); set it one way only"
        )
    return files


def kafka_env_name(key: str) -> str:
    """The environment variable that carries librdkafka property ``key``."""
    return KAFKA_PASSTHROUGH_PREFIX + key.replace(".", "_").upper()


def known_variables() -> frozenset[str]:
    """Every ``REVSYNC_*`` name revsync reads, apart from the Kafka pass-through."""
    from revsync.erp_settings import ErpSettings  # which builds on this module

    names = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields if field != "kafka"}
    names |= {f"{ENV_PREFIX}{field.upper()}" for field in ServiceSettings.model_fields}
    names |= {f"{ENV_PREFIX}{field.upper()}" for field in OpsSettings.model_fields}
    names |= {f"{ENV_PREFIX}{field.upper()}" for field in ConsoleSettings.model_fields}
    names |= {f"{ENV_PREFIX}{field.upper()}" for field in ProcessApiSettings.model_fields}
    names |= {f"{ENV_PREFIX}{field.upper()}" for field in ErpSettings.model_fields}
    names.add(SECRETS_DIR)
    return frozenset(names)


def reject_unknown_variables(environ: Mapping[str, str]) -> None:
    """Fail on a ``REVSYNC_*`` variable nothing reads: a typo must not pass silently."""
    known = known_variables()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and not name.startswith((KAFKA_PASSTHROUGH_PREFIX, STACK_PREFIX))
    )
    if unknown:
        raise SettingsError(
            f"unknown setting {', '.join(unknown)}; known settings are "
            f"{', '.join(sorted(known))} and {KAFKA_PASSTHROUGH_PREFIX}<librdkafka property>"
        )


def load_checked(settings_cls: type[_S]) -> _S:
    """``settings_cls`` from the environment and ``REVSYNC_SECRETS_DIR``, after refusing unknown
    ``REVSYNC_*`` names; a bad value raises :class:`SettingsError` naming the variable."""
    files = secret_files()
    reject_unknown_variables({**os.environ, **{name: "" for name in files}})
    try:
        return settings_cls(_secrets_dir=os.environ.get(SECRETS_DIR))
    except ValidationError as error:
        raise SettingsError(
            _describe(error, settings_cls.model_config.get("env_prefix") or ENV_PREFIX)
        ) from None


def _check_librdkafka_accepts(properties: Mapping[str, str]) -> None:
    """Let librdkafka itself judge the pass-through keys, without contacting any broker."""
    problem = _librdkafka_refusal(properties)
    if problem is None:
        return
    # librdkafka names a property by its canonical name (linger.ms -> queue.buffering.max.ms),
    # so find the variable to blame by trying each alone.
    culprit = next((key for key in properties if _librdkafka_refusal({key: properties[key]})), None)
    where = kafka_env_name(culprit) if culprit else "the REVSYNC_KAFKA_* settings"
    raise ValueError(f"{where}: librdkafka refused it: {problem}")


def _librdkafka_refusal(properties: Mapping[str, str]) -> str | None:
    from confluent_kafka import KafkaException, Producer

    try:
        # log_level 0: the missing bootstrap.servers is deliberate here, not worth a warning.
        Producer({**properties, "log_level": 0})
    except KafkaException as error:
        return str(error.args[0].str() if error.args else error)
    return None


def _describe(error: ValidationError, prefix: str) -> str:
    problems = []
    for issue in error.errors():
        location = issue["loc"]
        message = issue["msg"].removeprefix("Value error, ")
        if location and location[0] != "kafka":
            field = str(location[0])
            problems.append(f"{prefix}{field.upper()}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)
