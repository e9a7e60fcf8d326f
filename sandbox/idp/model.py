"""What the provider knows: its clients, its users and its settings, each a strict model, so a
typo in a control call is an error rather than a default."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

TokenFault = Literal[
    "bad_signature", "unknown_key", "wrong_audience", "wrong_issuer", "expired", "wrong_nonce"
]
"""How every token issued is spoiled while the fault is set:

- ``bad_signature``: signed by a key never published, under the active key's ``kid``
- ``unknown_key``: signed by a key never published, under that key's own ``kid``
- ``wrong_audience``: ``aud`` is another party's
- ``wrong_issuer``: ``iss`` is the issuer with a path appended (so a prefix match passes it)
- ``expired``: ``exp`` ten minutes past
- ``wrong_nonce``: the ID token's ``nonce`` is not the one the relying party sent
"""
TOKEN_FAULTS: tuple[str, ...] = get_args(TokenFault)
DEFAULT_AUDIENCE = "revsync"
RESERVED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "azp", "at_hash"}
    | {"scope", "client_id", "name", "preferred_username", "email", "email_verified"}
)
_SUBJECTS = uuid.UUID("38c69965-92a7-4918-9aa0-d0aff97d0b83")
"""The namespace of users' subjects: the same username is the same ``sub`` in every run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute_uris(uris: tuple[str, ...]) -> tuple[str, ...]:
    for uri in uris:
        if not urlsplit(uri).scheme or "#" in uri:
            raise ValueError(f"{uri!r}: an absolute URI without a fragment is required")
    return uris


AbsoluteUris = Annotated[tuple[str, ...], AfterValidator(_absolute_uris)]


class Client(_Strict):
    """A registered relying party (authorization code flow) or machine caller (client
    credentials), or both."""

    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    redirect_uris: AbsoluteUris = ()
    """Where sign-ins may return to; a request's ``redirect_uri`` must be one exactly."""
    post_logout_redirect_uris: AbsoluteUris = ()
    """Where ``/logout`` may send the browser afterwards."""
    roles: tuple[str, ...] = ()
    """The roles in its client credentials tokens."""
    scopes: tuple[str, ...] = ()
    """The scopes it may ask for with client credentials; none named: any."""


class User(_Strict):
    username: str = Field(min_length=1)
    password: str
    name: str = ""
    email: str = ""
    roles: tuple[str, ...] = ()
    subject: str = ""
    """Its ``sub``; empty: one derived from the username, the same in every run."""

    @property
    def sub(self) -> str:
        return self.subject or str(uuid.uuid5(_SUBJECTS, self.username))

    def public(self) -> dict[str, object]:
        """Everything but the password."""
        return {**self.model_dump(exclude={"password"}), "sub": self.sub}


class IdpSettings(_Strict):
    token_lifetime_s: int = Field(default=300, gt=0)
    """Of ID and access tokens (their ``exp - iat``, and ``expires_in``)."""
    code_lifetime_s: float = Field(default=60.0, gt=0)
    """Of an authorization code, from the sign-in until it is redeemed."""
    roles_claim: str = Field(default="roles", min_length=1)
    """The claim that carries the roles, a list of strings, in every token."""
    audience: str = Field(default=DEFAULT_AUDIENCE, min_length=1)
    """The ``aud`` of access tokens (an ID token's is its client's id)."""
    token_fault: TokenFault | None = None

    @field_validator("roles_claim")
    @classmethod
    def _unreserved(cls, claim: str) -> str:
        if claim in RESERVED_CLAIMS:
            raise ValueError(f"{claim!r} is a claim the provider sets itself")
        return claim

    def changed(self, changes: dict[str, object]) -> IdpSettings:
        """These settings with ``changes``, all validated, or ValueError."""
        return IdpSettings.model_validate({**self.model_dump(), **changes})
