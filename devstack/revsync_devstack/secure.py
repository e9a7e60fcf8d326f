"""The secured stack's credentials: a certificate authority made on this machine, the server
certificates it signs, and a random password for every principal, kept owner-only in the
stack's ``secrets/`` folder; each server's own configuration (owner-only too) holds what that
server needs of them.

Who the principals are follows revsync's least-privilege split: a Kafka user per deployable
plus the operators' and the governance job's (:mod:`revsync.security`), the broker's own user
(the only super user), and PostgreSQL's roles per purpose.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from revsync.deployables import discover
from revsync.security import (
    GOVERNANCE,
    OPERATOR,
    POSTGRES_MIGRATOR,
    POSTGRES_OPERATOR,
    POSTGRES_SERVICE,
    kafka_principal,
)

BROKER_USER = "broker"
"""The brokers' own identity (SCRAM between brokers, certificate on the controller
listener): Kafka's only super user."""
POSTGRES_ADMIN = "revsync"
"""The cluster's bootstrap superuser: creates the roles and databases, nothing else."""
POSTGRES_REGISTRY = "revsync_registry"
"""The registry's storage, a database of its own."""
REGISTRY_GOVERNANCE = "governance"
REGISTRY_READER = "reader"
"""The registry's users: the governance job registers contracts (sr-developer); services and
operators only read them (sr-readonly)."""
VALID_FOR = datetime.timedelta(days=825)


@dataclass(frozen=True)
class Credentials:
    """Where the secured stack keeps what proves who is who."""

    folder: Path

    @property
    def ca(self) -> Path:
        """The CA certificate clients trust (and nothing else)."""
        return self.folder / "ca.pem"

    @property
    def kafka_keystore(self) -> Path:
        """The brokers' private key and certificate chain, one PEM file as Kafka reads it."""
        return self.folder / "kafka-keystore.pem"

    @property
    def server_certificate(self) -> Path:
        """PostgreSQL's and the registry's certificate (127.0.0.1, localhost)."""
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def passwords_file(self) -> Path:
        return self.folder / "passwords.json"

    def exist(self) -> bool:
        return self.passwords_file.exists()

    def make(self) -> None:
        """A new CA, the certificates it signs and a password per principal; kept as they are
        when made already (the brokers' storage holds the SCRAM credentials made from them)."""
        if self.exist():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "revsync local stack CA")])
        ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, authority=True)
        write_private(self.ca, ca.public_bytes(serialization.Encoding.PEM))
        # The brokers' certificate also signs them in to their controllers (mutual TLS);
        # the other servers' only identifies a server.
        kafka_key, kafka = _server(BROKER_USER, ca, ca_key, client=True)
        write_private(self.kafka_keystore, _pkcs8(kafka_key) + kafka + _pem(ca))
        server_key, server = _server("localhost", ca, ca_key, client=False)
        write_private(self.server_key, _pkcs8(server_key))
        write_private(self.server_certificate, server + _pem(ca))
        passwords = {
            "kafka": {user: _password() for user in (BROKER_USER, *kafka_users())},
            "postgres": {
                role: _password()
                for role in (
                    POSTGRES_ADMIN,
                    POSTGRES_MIGRATOR,
                    POSTGRES_SERVICE,
                    POSTGRES_OPERATOR,
                    POSTGRES_REGISTRY,
                )
            },
            "registry": {user: _password() for user in (REGISTRY_GOVERNANCE, REGISTRY_READER)},
        }
        write_private(self.passwords_file, json.dumps(passwords, indent=2).encode())

    def passwords(self, kind: str) -> dict[str, str]:
        """``kafka``, ``postgres`` or ``registry``: each principal's password."""
        loaded: dict[str, dict[str, str]] = json.loads(self.passwords_file.read_text())
        return loaded[kind]


def kafka_users() -> list[str]:
    """Every Kafka user the secured stack knows: one per installed deployable, the operators'
    and the governance job's."""
    return [kafka_principal(name) for name in sorted(discover())] + [OPERATOR, GOVERNANCE]


def _server(
    name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, client: bool
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A key and a certificate for ``name`` that hostname verification accepts on loopback;
    with ``client``, good for client authentication too."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    certificate = _certificate(
        subject, ca.subject, key.public_key(), ca_key, authority=False, usages=usages
    )
    return key, _pem(certificate)


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    authority: bool,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
    )
    if authority:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _password() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, content: bytes) -> None:
    """Owner-only from the first byte: never readable by others, not even for a moment."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
