"""NetSuite's OAuth 2.0 machine-to-machine grant as the simulator answers it: the integrations
registered with their certificates, the client-credentials token endpoint that verifies a
JWT assertion signed with a certificate's private key, and the access tokens it issues."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sandbox.http import HttpFailure

TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"  # noqa: S105 - a path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "rest_webservices"
MAX_ASSERTION_LIFETIME_S = 3600
"""An assertion's ``exp`` may be at most 60 minutes after its ``iat``."""
RSA_ALGORITHMS = ("PS256", "PS384", "PS512", "RS256")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
"""The ECDSA algorithm of each curve."""
ALGORITHMS = (*RSA_ALGORITHMS, *EC_ALGORITHMS.values())
"""RSA-PSS and ECDSA as NetSuite asks; RS256 still accepted (deprecated)."""


@dataclass(frozen=True)
class Certificate:
    client_id: str
    certificate_id: str
    public_key: Any
    """An RSA or EC public key."""


@dataclass(frozen=True)
class IssuedToken:
    client_id: str
    expires_at: float


def refusal(status: int, error: str, description: str) -> HttpFailure:
    return HttpFailure(status, {"error": error, "error_description": description})


class TokenIssuer:
    """The account's M2M setup (certificates by client id and certificate id) and the access
    tokens it has issued; thread-safe."""

    def __init__(self, token_lifetime_s: int = 3600) -> None:
        self.token_lifetime_s = token_lifetime_s
        self._certificates: dict[tuple[str, str], Certificate] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._lock = threading.Lock()

    def register(self, client_id: str, certificate_id: str, public_key_pem: str) -> None:
        """Registers (or replaces) an integration's certificate; ValueError when the PEM is
        not an RSA or EC public key."""
        key = load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError("the certificate's key is neither RSA nor EC")
        with self._lock:
            self._certificates[(client_id, certificate_id)] = Certificate(
                client_id, certificate_id, key
            )

    def expire_all(self) -> int:
        """Ends every issued token now (as a revoked integration or a lapsed session would);
        returns how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count

    def valid(self, authorization: str) -> IssuedToken | None:
        """The token a ``Bearer`` header carries, if it is one issued and not expired."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            issued = self._tokens.get(token.strip())
            if issued is None:
                return None
            if issued.expires_at <= time.time():
                del self._tokens[token.strip()]
                return None
            return issued

    def grant(self, form: Mapping[str, Any], audience: str) -> dict[str, Any]:
        """The token answer to a client-credentials request ``form``, or the refusal (400
        ``invalid_request``/``invalid_scope``, 401 ``invalid_client``/``invalid_grant``)."""
        if not isinstance(form, Mapping) or form.get("grant_type") != "client_credentials":
            raise refusal(400, "invalid_request", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise refusal(400, "invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion")
        if not isinstance(assertion, str) or not assertion:
            raise refusal(400, "invalid_request", "client_assertion is required")
        certificate = self._certificate(assertion)
        claims = self._verified(assertion, certificate, audience)
        scope = claims.get("scope")
        scopes = scope if isinstance(scope, list) else str(scope or "").split(",")
        if SCOPE not in [str(s).strip() for s in scopes]:
            raise refusal(400, "invalid_scope", f"scope must include {SCOPE}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            lifetime = self.token_lifetime_s
            self._tokens[token] = IssuedToken(certificate.client_id, time.time() + lifetime)
        return {"access_token": token, "expires_in": str(lifetime), "token_type": "bearer"}

    def _certificate(self, assertion: str) -> Certificate:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise refusal(400, "invalid_request", "client_assertion is not a JWT") from None
        kid, issuer = header.get("kid"), unverified.get("iss")
        with self._lock:
            certificate = self._certificates.get((str(issuer), str(kid)))
        if certificate is None:
            raise refusal(401, "invalid_client", "no certificate with this kid for this client")
        if header.get("alg") not in ALGORITHMS:
            raise refusal(401, "invalid_client", f"alg must be one of {', '.join(ALGORITHMS)}")
        return certificate

    @staticmethod
    def _verified(assertion: str, certificate: Certificate, audience: str) -> dict[str, Any]:
        key = certificate.public_key
        algorithms = (
            [EC_ALGORITHMS.get(key.curve.name, "")]
            if isinstance(key, ec.EllipticCurvePublicKey)
            else list(RSA_ALGORITHMS)
        )
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                certificate.public_key,
                algorithms=algorithms,
                audience=audience,
                issuer=certificate.client_id,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidAudienceError:
            raise refusal(401, "invalid_grant", "aud must be the token endpoint's URL") from None
        except jwt.ExpiredSignatureError:
            raise refusal(401, "invalid_grant", "the assertion has expired") from None
        except jwt.InvalidSignatureError:
            raise refusal(401, "invalid_client", "the assertion's signature is invalid") from None
        except jwt.PyJWTError as error:
            raise refusal(401, "invalid_grant", f"the assertion is invalid: {error}") from None
        if float(claims["exp"]) - float(claims["iat"]) > MAX_ASSERTION_LIFETIME_S:
            raise refusal(401, "invalid_grant", "exp may be at most 60 minutes after iat")
        return claims
