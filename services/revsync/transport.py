"""What may cross the network in clear, and what must be encrypted and verified: the checks
the settings apply at start-up to every endpoint off this machine."""

from __future__ import annotations

import ipaddress
import os
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
    naming the host otherwise. libpq's own sources count too: ``hostaddr`` (the address it
    really connects to), ``PGHOST``/``PGHOSTADDR``/``PGSSLMODE`` for what the DSN leaves out,
    and a ``service`` file, whose host cannot be seen from here (so it needs verify-full in
    the DSN). The DSN itself is never echoed: it holds a password."""
    try:
        parameters = conninfo_to_dict(dsn.get_secret_value())
    except Exception:  # psycopg's ProgrammingError: a malformed DSN, told without its text
        raise ValueError("not a PostgreSQL connection string") from None
    sslmode = parameters.get("sslmode") or os.environ.get("PGSSLMODE")
    if sslmode == "verify-full":
        return dsn
    if parameters.get("service") or os.environ.get("PGSERVICE"):
        raise ValueError(
            "a connection service file names the host, which cannot be checked here; add "
            "sslmode=verify-full (and sslrootcert) so the connection is encrypted and verified"
        )
    hosts = [
        host
        for name, variable in (("host", "PGHOST"), ("hostaddr", "PGHOSTADDR"))
        for host in str(parameters.get(name) or os.environ.get(variable) or "").split(",")
    ]
    remote = [host for host in hosts if not on_loopback(host)]
    if remote:
        raise ValueError(
            f"host {remote[0]} is not on this machine; add sslmode=verify-full (and sslrootcert) "
            f"so the connection is encrypted and the server's certificate checked"
        )
    return dsn


def kafka_in_clear_off_loopback(bootstrap_servers: str) -> str | None:
    """The first broker of ``bootstrap_servers`` that is not on this machine, or None."""
    for server in bootstrap_servers.split(","):
        address = server.strip().split("://")[-1]
        host = address.rsplit(":", 1)[0] if ":" in address else address
        if not on_loopback(host):
            return host
    return None


def unverified_tls(key: str, value: str) -> bool:
    """Whether librdkafka property ``key`` set to ``value`` would accept any broker's
    certificate or name. Only what librdkafka reads as "on" keeps verification: it also
    reads ``f`` and ``F`` as false."""
    if key == "enable.ssl.certificate.verification":
        return value.strip().lower() not in ("true", "t", "1")
    if key == "ssl.endpoint.identification.algorithm":
        return value.strip().lower() != "https"
    return False
