"""NetSuite's OAuth 2.0 machine-to-machine session: a client-credentials grant whose client
assertion is a JWT signed with the private key of the certificate uploaded to the account's
M2M setup, and the access token it yields, shared by every thread and replaced before it
expires (or once, when NetSuite answers INVALID_LOGIN)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from revsync.connectors.erp import ErpAuthFailed
from revsync.connectors.http import BoundedClient, error_code, raise_for_transient

SYSTEM = "netsuite"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"  # noqa: S105 - a path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "rest_webservices"
CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
"""The EC curve of each ECDSA algorithm."""
ALGORITHMS = frozenset({"PS256", "PS384", "PS512", "RS256", *CURVES})
"""RSA-PSS or ECDSA as NetSuite asks (RS256 is deprecated but still taken)."""
MAX_ASSERTION_LIFETIME_S = 3600
"""NetSuite refuses an assertion whose ``exp`` is more than 60 minutes after its ``iat``."""


class NetSuiteAuthFailed(ErpAuthFailed):
    """NetSuite refused revsync's assertion, its token or the role's permissions. Retried:
    a certificate may be rotated, or a role fixed, without a redeploy."""


def signing_key(
    private_key_pem: str, algorithm: str
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The certificate's private key from its PEM, checked against ``algorithm`` (an RSA key
    for PS256/384/512 and RS256, an EC key on the algorithm's curve for ES256/384/512:
    P-256, P-384, P-521); ValueError naming the mismatch otherwise, so a wrong key stops the
    service at start-up rather than at its first call."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"netsuite: algorithm must be one of {sorted(ALGORITHMS)}, not {algorithm!r}"
        )
    try:
        key = load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("netsuite: private_key is not an unencrypted PEM private key") from None
    if algorithm in CURVES:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVES[algorithm]:
            raise ValueError(f"netsuite: {algorithm} needs an EC {CURVES[algorithm]} private key")
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"netsuite: {algorithm} needs an RSA private key")
    return key


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: float
    """Monotonic clock time at which NetSuite stops taking it."""


class NetSuiteSession:
    """One integration's access token: fetched on first use, replaced ``refresh_margin_s``
    before it expires or when a call reports it refused; safe to share between threads."""

    def __init__(
        self,
        http: BoundedClient,
        token_url: str,
        client_id: str,
        certificate_id: str,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        *,
        algorithm: str = "PS256",
        assertion_lifetime_s: int = 300,
        refresh_margin_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < assertion_lifetime_s <= MAX_ASSERTION_LIFETIME_S:
            raise ValueError(
                f"netsuite: assertion_lifetime_s must be 1 to {MAX_ASSERTION_LIFETIME_S}, "
                f"got {assertion_lifetime_s}"
            )
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._certificate_id = certificate_id
        self._key = key
        self._algorithm = algorithm
        self._assertion_lifetime_s = assertion_lifetime_s
        self._refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._current: AccessToken | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """The access token to call with: the one held, unless it is about to expire."""
        current = self._current
        if current is not None and self._clock() < current.expires_at - self._refresh_margin_s:
            return current.token
        return self.refresh(current.token if current is not None else None)

    def refresh(self, stale: str | None) -> str:
        """A new access token, unless another thread already replaced ``stale`` with one
        that is not about to expire."""
        with self._lock:
            current = self._current
            if (
                current is not None
                and current.token != stale
                and self._clock() < current.expires_at - self._refresh_margin_s
            ):
                return current.token
            self._current = self._fetch()
            return self._current.token

    def assertion(self) -> str:
        """A fresh client assertion: the JWT NetSuite's token endpoint verifies with the
        certificate's public key."""
        now = int(self._wall_clock())
        claims = {
            "iss": self._client_id,
            "scope": [SCOPE],
            "aud": self._token_url,
            "iat": now,
            "exp": now + self._assertion_lifetime_s,
        }
        return jwt.encode(
            claims,
            self._key,
            algorithm=self._algorithm,
            headers={"typ": "JWT", "kid": self._certificate_id},
        )

    def _fetch(self) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        asked_at = self._clock()
        response = self._http.request("POST", self._token_url, data=form)
        raise_for_transient(SYSTEM, response)
        answer = _json(response.content)
        if response.is_success and answer.get("access_token"):
            try:
                lifetime = float(answer.get("expires_in") or 3600)
            except (TypeError, ValueError):
                lifetime = 3600.0
            return AccessToken(str(answer["access_token"]), asked_at + lifetime)
        reason = error_code(answer.get("error")) or "no error code"
        raise NetSuiteAuthFailed(
            f"{SYSTEM}: the token endpoint refused the assertion of integration "
            f"{self._client_id!r} with certificate {self._certificate_id!r} "
            f"(HTTP {response.status_code}, {reason})"
        )


def _json(content: bytes) -> Mapping[str, Any]:
    try:
        answer = json.loads(content) if content else None
    except ValueError:
        return {}
    return answer if isinstance(answer, Mapping) else {}
