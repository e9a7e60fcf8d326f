"""What may cross the network in clear, and what must be encrypted and verified: the checks
the settings apply at start-up to every endpoint off this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr


def on_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (a loopback name or address, or a Unix socket): the
    one place a credential may cross without TLS."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def https_off_loopback(url: str) -> str:
    """``url``, unless it is plain HTTP to another machine (its credentials would cross in
    clear): then a ValueError that says so."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not on_loopback(parts.hostname):
        raise ValueError(
            f"{parts.scheme}://{parts.hostname} is not on this machine; reach it over https://"
        )
    return url


def verified_tls_off_loopback(dsn: SecretStr) -> SecretStr:
    """A PostgreSQL DSN whose every host off this machine is reached with
    ``sslmode=verify-full`` (encrypted, its certificate and name checked); a ValueError
    naming the host otherwise. The DSN itself is never echoed: it holds a password."""
    try:
        parameters = conninfo_to_dict(dsn.get_secret_value())
    except Exception:  # psycopg's ProgrammingError: a malformed DSN, told without its text
        raise ValueError("not a PostgreSQL connection string") from None
    hosts = str(parameters.get("host") or "").split(",")
    remote = [host for host in hosts if not on_loopback(host)]
    if remote and parameters.get("sslmode") != "verify-full":
        raise ValueError(
            f"host {remote[0]} is not on this machine; add sslmode=verify-full (and sslrootcert) "
            f"so the connection is encrypted and the server's certificate checked"
        )
    return dsn


UNVERIFIED_TLS = {
    "enable.ssl.certificate.verification": ("false", "0"),
    "ssl.endpoint.identification.algorithm": ("none",),
}
"""librdkafka properties that would accept any broker's certificate or name."""
