"""A simulated OpenID Connect provider: discovery, a JWK set of RS256 keys rotated on demand,
the authorization code flow with PKCE (S256) through an HTML sign-in form, client credentials
tokens for machine callers, RP-initiated logout, faults that spoil the tokens it issues, and a
control API (with :class:`IdpSandbox`, its client).

Run it with ``python -m sandbox.idp``, or in process with :class:`IdentityProvider`.
"""

from sandbox.idp.control import IdpSandbox
from sandbox.idp.model import DEFAULT_AUDIENCE, TOKEN_FAULTS, Client, IdpSettings, TokenFault, User
from sandbox.idp.provider import SCOPES, IdentityProvider, s256

__all__ = [
    "DEFAULT_AUDIENCE",
    "SCOPES",
    "TOKEN_FAULTS",
    "Client",
    "IdentityProvider",
    "IdpSandbox",
    "IdpSettings",
    "TokenFault",
    "User",
    "s256",
]
