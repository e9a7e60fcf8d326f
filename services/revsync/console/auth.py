"""Who is using the console, and what they may do.

People sign in with the company's OpenID Connect provider (authorization code flow with PKCE;
the ID token checked against the provider's published keys, issuer, audience, expiry and
nonce) or, for the demo and tests, with local accounts whose passwords are kept as scrypt
hashes. Programs call the JSON API with the provider's bearer tokens. Either way the person or
program gets one role — viewer, operator or admin — and the server checks it on every page
and every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import yaml

from revsync.oidc import OidcProvider, SignInRefused

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
TRACKED_NAMES = 10_000
"""Names with failed sign-ins kept track of before the quiet ones are forgotten."""


class Role(IntEnum):
    """Each role may do what the ones below it may."""

    VIEWER = 1
    """Sees every page and reads the API."""
    OPERATOR = 2
    """Also reads dead letters (masked) and acts on exceptions."""
    ADMIN = 3
    """Also resumes consumers and reads the audit trail."""

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"no role {name!r}; roles are viewer, operator, admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a person signed in (``via`` local or oidc) or a program (bearer)."""

    name: str
    role: Role
    via: str

    def may(self, needed: Role) -> bool:
        return self.role >= needed


# --- local accounts ----------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), for a local accounts file."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        found = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError, OverflowError):
        # A malformed hash (hashlib refuses a negative or huge N with TypeError) is no match.
        return False
    return hmac.compare_digest(found, expected)


_DECOY = hash_password(secrets.token_urlsafe(16))
"""Checked for unknown names, so a wrong name takes as long as a wrong password."""


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    password_hash: str


class LocalAccounts:
    """Accounts from a YAML file: ``users: [{name, role, password_hash}]``. Plain passwords
    are refused: the file holds hashes only (``revsync console hash-password``)."""

    def __init__(
        self,
        accounts: list[Account],
        *,
        clock: Callable[[], float] = time.monotonic,
        tracked_names: int = TRACKED_NAMES,
    ) -> None:
        """``clock``: seconds, for the lockout's window; ``tracked_names``: how many names
        with failures are kept before the quiet ones are forgotten."""
        self._accounts = {account.name: account for account in accounts}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._tracked_names = tracked_names

    @classmethod
    def load(cls, path: Path) -> LocalAccounts:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not readable as YAML ({type(error).__name__})") from None
        if not isinstance(document, dict) or not isinstance(document.get("users") or [], list):
            raise ValueError(f"{path}: needs users: a list of {{name, role, password_hash}}")
        accounts = []
        for index, entry in enumerate(document.get("users") or []):
            where = f"{path}: users[{index}]"
            if not isinstance(entry, dict) or not entry.get("name"):
                raise ValueError(f"{where}: needs name, role and password_hash")
            if "password" in entry:
                raise ValueError(f"{where}: a plain password; keep only its password_hash")
            stored = str(entry.get("password_hash", ""))
            if not stored.startswith("scrypt$") or stored.count("$") != 5:
                raise ValueError(f"{where}: password_hash is not an scrypt hash")
            try:
                role = Role.named(str(entry.get("role", "")))
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            accounts.append(Account(str(entry["name"]), role, stored))
        return cls(accounts)

    def sign_in(self, name: str, password: str) -> Principal:
        """The account's principal, or :class:`SignInRefused`; after 10 failures in 5 minutes
        a name is refused for the rest of them, whatever the password."""
        now = self._clock()
        with self._lock:
            if len(self._failures) > self._tracked_names:
                # Names tried at random must not grow this for ever: forget the quiet ones.
                self._failures = {
                    tried: times
                    for tried, times in self._failures.items()
                    if times and times[-1] >= now - 300
                }
            failures = self._failures.setdefault(name, deque())
            while failures and failures[0] < now - 300:
                failures.popleft()
            if len(failures) >= 10:
                raise SignInRefused("too many failed sign-ins for this name; wait 5 minutes")
        account = self._accounts.get(name)
        good = check_password(password, account.password_hash if account else _DECOY)
        if account is None or not good:
            with self._lock:
                self._failures.setdefault(name, deque()).append(now)
            raise SignInRefused("wrong name or password")
        return Principal(account.name, account.role, "local")


# --- OpenID Connect ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_uri: str
    roles_claim: str
    role_map: dict[str, Role]
    audience: str | None
    """What programs' access tokens must be for; None: the API takes no bearer tokens."""


def parse_role_map(text: str) -> dict[str, Role]:
    """``provider-role=console-role,…``."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        theirs, _, ours = part.partition("=")
        if not theirs.strip() or not ours.strip():
            raise ValueError(f"role map entry {part!r}: write <provider role>=<console role>")
        mapping[theirs.strip()] = Role.named(ours)
    return mapping


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the console keeps between sending a person to the provider and their return."""

    url: str
    state: str
    nonce: str
    verifier: str


class OidcClient:
    """The console as an OpenID Connect relying party."""

    def __init__(self, config: OidcConfig, http: httpx.Client | None = None) -> None:
        self.config = config
        self._http = http or httpx.Client(timeout=10)
        self.provider = OidcProvider(config.issuer, self._http)

    def authorization(self) -> AuthorizationRequest:
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self.config.redirect_uri,
                "scope": "openid profile email roles",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(self.provider.discovery()["authorization_endpoint"])
        return AuthorizationRequest(f"{endpoint}?{query}", state, nonce, verifier)

    def finish(self, code: str, nonce: str, verifier: str) -> Principal:
        """Exchange the code for tokens; the ID token's person, or :class:`SignInRefused`."""
        token_endpoint = str(self.provider.discovery()["token_endpoint"])
        secret = self.config.client_secret
        answer = self._http.post(
            token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.redirect_uri,
                "code_verifier": verifier,
                **({} if secret else {"client_id": self.config.client_id}),
            },
            auth=(self.config.client_id, secret) if secret else httpx.USE_CLIENT_DEFAULT,
        )
        if answer.status_code != 200:
            error = answer.json().get("error", "?") if _is_json(answer) else "?"
            raise SignInRefused(f"the identity provider refused the code ({error})")
        id_token = answer.json().get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("the identity provider sent no ID token")
        claims = self.provider.verified(id_token, self.config.client_id, from_provider=True)
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInRefused("the ID token's nonce is not this sign-in's")
        return self._principal(claims, "oidc")

    def bearer(self, token: str) -> Principal:
        """A program's access token: the provider's signature, issuer, audience and expiry.
        Only with an API audience of its own: were it the client id, a person's ID token
        (whose audience that is) would pass for an access token."""
        if self.config.audience is None:
            raise SignInRefused("bearer tokens need REVSYNC_CONSOLE_OIDC_AUDIENCE set")
        return self._principal(self.provider.verified(token, self.config.audience), "bearer")

    def _principal(self, claims: dict[str, Any], via: str) -> Principal:
        granted = claims.get(self.config.roles_claim) or []
        if isinstance(granted, str):
            granted = granted.split()
        if not isinstance(granted, list):
            granted = []  # a claim of another shape grants nothing
        roles = [
            self.config.role_map[r]
            for r in granted
            if isinstance(r, str) and r in self.config.role_map
        ]
        if not roles:
            raise SignInRefused("signed in, but given no revsync role by the identity provider")
        name = str(
            claims.get("preferred_username") or claims.get("email") or claims.get("sub", "?")
        )
        return Principal(name, max(roles), via)


def _is_json(answer: httpx.Response) -> bool:
    content_type: str = answer.headers.get("content-type", "")
    return content_type.startswith("application/json")


def csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, kept: str | None) -> bool:
    if not given or not kept:
        return False
    # As bytes: compare_digest raises TypeError on a str with a non-ASCII character.
    return hmac.compare_digest(given.encode(), kept.encode())
