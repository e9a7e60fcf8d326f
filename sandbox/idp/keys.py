"""The provider's signing keys: RSA 2048, published as a JWK set (RFC 7517), rotated on demand.

A rotated-out key stays published for as long as asked (for ever, a while, or not at all), so
a relying party's key cache can be tested against both ways a provider rotates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
KEY_SIZE = 2048


def b64url(data: bytes) -> str:
    """Base64url without padding, as JOSE writes binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    private_key: rsa.RSAPrivateKey
    kid: str
    """The RFC 7638 thumbprint of the public key."""

    @classmethod
    def generate(cls, size: int = KEY_SIZE) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        numbers = private_key.public_key().public_numbers()
        required = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
        return cls(private_key, b64url(hashlib.sha256(canonical).digest()))

    def jwk(self) -> dict[str, str]:
        """The public half, as a JWK."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None, typ: str = "JWT") -> str:
        """A compact JWS of ``claims``; ``kid`` names another key in the header than this one."""
        headers = {"kid": kid or self.kid, "typ": typ}
        return jwt.encode(dict(claims), self.private_key, algorithm=ALGORITHM, headers=headers)


@dataclass
class _Retired:
    key: SigningKey
    until: float | None
    """``time.monotonic()`` when it leaves the JWK set; None: when dropped."""


class KeyRing:
    """The active signing key, the rotated-out keys still published, and a stranger: a key
    never published, for the tokens a relying party must refuse."""

    def __init__(self, size: int = KEY_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._active = SigningKey.generate(size)
        self._retired: list[_Retired] = []
        self._stranger: SigningKey | None = None

    @property
    def active(self) -> SigningKey:
        return self._active

    @property
    def stranger(self) -> SigningKey:
        with self._lock:
            if self._stranger is None:
                self._stranger = SigningKey.generate(self._size)
            return self._stranger

    def published(self) -> list[SigningKey]:
        """The active key first, then the rotated-out keys still published, newest first."""
        now = time.monotonic()
        with self._lock:
            self._retired = [r for r in self._retired if r.until is None or r.until > now]
            return [self._active, *(retired.key for retired in self._retired)]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.jwk() for key in self.published()]}

    def rotate(self, keep_previous_s: float | None = None) -> SigningKey:
        """Sign with a new key from now on. The previous one stays published until
        :meth:`drop_previous` when ``keep_previous_s`` is None, ``keep_previous_s`` seconds
        otherwise (0: it leaves the JWK set at once)."""
        new = SigningKey.generate(self._size)
        with self._lock:
            previous, self._active = self._active, new
            if keep_previous_s is None or keep_previous_s > 0:
                until = None if keep_previous_s is None else time.monotonic() + keep_previous_s
                self._retired.insert(0, _Retired(previous, until))
        return new

    def drop_previous(self) -> None:
        """Unpublish every rotated-out key."""
        with self._lock:
            self._retired.clear()
