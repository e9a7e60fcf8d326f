"""The company's OpenID Connect provider as revsync's HTTP surfaces trust it (the console, the
process API): its discovery document, and tokens verified against the keys it publishes, with
their issuer, audience and expiry."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import jwt

from revsync.errors import RevsyncError

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]


class SignInRefused(RevsyncError):
    """Credentials or a token that do not sign anyone in; the message says why, never what
    was sent."""


class ProviderUnreachable(SignInRefused):
    """The identity provider (its discovery document or its keys) could not be reached: the
    token may be sound, and no one can tell now."""


class OidcProvider:
    """One issuer. Its discovery document is fetched once; its key set is cached (five
    minutes), not each key for ever: a key the provider stops publishing stops signing anyone
    in once the set is fetched again."""

    def __init__(self, issuer: str, http: httpx.Client | None = None) -> None:
        self.issuer = issuer
        self._http = http or httpx.Client(timeout=10)
        self._discovery: dict[str, Any] | None = None
        self._keys: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            if self._discovery is None:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    answer = self._http.get(url)
                except httpx.TransportError as error:
                    raise ProviderUnreachable(
                        f"the identity provider's discovery failed ({type(error).__name__})"
                    ) from None
                if answer.status_code != 200:
                    raise SignInRefused(
                        f"the identity provider's discovery answered {answer.status_code}"
                    )
                document = answer.json()
                if document.get("issuer") != self.issuer:
                    raise SignInRefused("the identity provider names another issuer")
                self._discovery = document
                self._keys = jwt.PyJWKClient(str(document["jwks_uri"]))
            return self._discovery

    def verified(self, token: str, audience: str, *, from_provider: bool = False) -> dict[str, Any]:
        """The token's claims once its signature (by a published key), issuer, audience
        (``audience``) and expiry hold, with ``exp``, ``iat``, ``iss``, ``aud`` and ``sub``
        present; :class:`SignInRefused` naming why otherwise.

        ``from_provider``: the token came straight from the provider's token endpoint, so a key
        not known yet means the provider rotated its keys, and they are fetched again at once;
        PyJWT would wait out its cool-down, which stays for tokens anyone may send."""
        self.discovery()
        assert self._keys is not None
        try:
            try:
                key = self._keys.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError:
                raise
            except jwt.PyJWKClientError:
                if not from_provider:
                    raise
                self._keys.get_jwk_set(refresh=True)
                key = self._keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.PyJWKClientConnectionError:
            raise ProviderUnreachable("the identity provider's keys could not be fetched") from None
        except jwt.PyJWTError as error:
            raise SignInRefused(f"token refused: {type(error).__name__}") from None
        return claims
