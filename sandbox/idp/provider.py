"""The simulated OpenID Connect provider: discovery, the JWK set, the authorization code flow
with PKCE through an HTML sign-in form, the token endpoint (authorization code and client
credentials grants), RP-initiated logout, and the control API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from sandbox.http import CONTROL_PREFIX, HttpFailure, JsonServer, Request, Response
from sandbox.idp import pages
from sandbox.idp.keys import ALGORITHM, KeyRing, b64url
from sandbox.idp.model import Client, IdpSettings, User

SCOPES = ("openid", "profile", "email", "roles")
WRONG_AUDIENCE = "another-party"
EXPIRED_BY_S = 600
CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
"""RFC 7636 section 4.1."""
CODE_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
"""The base64url of a SHA-256 digest."""
AUTHORIZATION_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)
"""What the sign-in form carries through, in hidden fields."""
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"


def s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _with_query(uri: str, parameters: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(part for part in (parts.query, urlencode(parameters)) if part)
    return urlunsplit(parts._replace(query=query))


def _redirect(location: str) -> Response:
    return Response(302, None, {"Location": location, **NO_STORE})


def _oauth_error(status: int, error: str, description: str) -> HttpFailure:
    """An RFC 6749 section 5.2 error answer of the token endpoint."""
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="sandbox-idp"'
    return HttpFailure(status, {"error": error, "error_description": description}, headers)


def _refused_page(text: str) -> HttpFailure:
    """An authorization request refused without sending the browser anywhere, as the client
    or the place to send it to is not to be trusted."""
    return _page_failure("Sign-in refused", text)


def _page_failure(title: str, text: str) -> HttpFailure:
    page = pages.message(title, text, 400)
    return HttpFailure(page.status, page.body, page.headers)


def _control_error(error: Exception) -> HttpFailure:
    return HttpFailure(400, {"error": str(error)})


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request: its client and redirect URI are registered together."""

    client: Client
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    code_challenge: str
    parameters: dict[str, str]
    """The request as given, for the sign-in form's hidden fields."""


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    username: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str
    auth_time: int
    expires_at: float
    """``time.monotonic()``."""
    used: bool = False


class IdentityProvider:
    """An OpenID Connect provider on ``host:port`` (0: any free port). Its issuer is its own
    base URL unless ``issuer`` names another (the address a browser reaches it by, say).

    Start it with :meth:`start` (or ``with``), register clients and users, and point the
    relying party at :attr:`issuer`; :attr:`server` has the HTTP fault knobs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        issuer: str | None = None,
        settings: IdpSettings | None = None,
        seed: int | None = None,
    ) -> None:
        self.server = JsonServer(host, port, seed=seed)
        self._issuer = issuer.rstrip("/") if issuer else None
        self.keys = KeyRing()
        self._lock = threading.Lock()
        self._settings = settings or IdpSettings()
        self._clients: dict[str, Client] = {}
        self._users: dict[str, User] = {}
        self._codes: dict[str, _Code] = {}
        self._logouts: list[dict[str, str]] = []
        self._started = False
        self._routes()

    # --- lifecycle and in-process control ----------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def issuer(self) -> str:
        return self._issuer or self.server.url

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def start(self) -> IdentityProvider:
        """Serve from a background thread."""
        if not self._started:
            self.server.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self.server.stop()
            self._started = False

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
    ) -> Client:
        """Register a client, or replace the one with this id."""
        return self.register_client(
            Client(
                client_id=client_id,
                client_secret=client_secret,
                redirect_uris=tuple(redirect_uris),
                post_logout_redirect_uris=tuple(post_logout_redirect_uris),
                roles=tuple(roles),
                scopes=tuple(scopes),
            )
        )

    def register_client(self, client: Client) -> Client:
        with self._lock:
            self._clients[client.client_id] = client
        return client

    def add_user(
        self,
        username: str,
        password: str,
        *,
        name: str = "",
        email: str = "",
        roles: Iterable[str] = (),
        subject: str = "",
    ) -> User:
        """Register a user, or replace the one with this username; ``subject`` is its
        ``sub`` (empty: one derived from the username)."""
        return self.register_user(
            User(
                username=username,
                password=password,
                name=name,
                email=email,
                roles=tuple(roles),
                subject=subject,
            )
        )

    def register_user(self, user: User) -> User:
        with self._lock:
            self._users[user.username] = user
        return user

    @property
    def settings(self) -> IdpSettings:
        return self._settings

    def configure(self, **changes: Any) -> IdpSettings:
        """Change some settings (``token_lifetime_s``, ``code_lifetime_s``, ``roles_claim``,
        ``audience``, ``token_fault``: :class:`IdpSettings`); all of them afterwards.
        ``token_fault=None`` issues sound tokens again."""
        with self._lock:
            self._settings = self._settings.changed(changes)
            return self._settings

    def rotate_key(self, keep_previous_s: float | None = None) -> str:
        """Sign with a new key; its ``kid``. The previous key stays in the JWK set until
        :meth:`drop_previous_keys` (None), for ``keep_previous_s`` seconds, or not at all (0)."""
        return self.keys.rotate(keep_previous_s).kid

    def drop_previous_keys(self) -> list[str]:
        """Unpublish every rotated-out key; the ``kid`` of each key still published."""
        self.keys.drop_previous()
        return self.published_kids()

    def published_kids(self) -> list[str]:
        """The active key's ``kid`` first."""
        return [key.kid for key in self.keys.published()]

    def logouts(self) -> list[dict[str, str]]:
        """The parameters of every ``/logout`` request, oldest first."""
        with self._lock:
            return [dict(logout) for logout in self._logouts]

    def reset(self) -> None:
        """Forget every client, user, code and logout, the counters, and every setting; the
        keys and the HTTP fault knobs stay."""
        with self._lock:
            self._clients.clear()
            self._users.clear()
            self._codes.clear()
            self._logouts.clear()
            self._settings = IdpSettings()
        self.server.counters.clear()

    # --- routes ------------------------------------------------------------------------------

    def _routes(self) -> None:
        route = self.server.route
        route("GET", r"/\.well-known/openid-configuration", self._discovery)
        route("GET", r"/jwks", lambda _: Response(body=self.keys.jwks()))
        route("GET", r"/authorize", self._authorize_form)
        route("POST", r"/authorize", self._sign_in)
        route("POST", r"/token", self._token)
        route("GET", r"/logout", self._logout)
        route("POST", r"/logout", self._logout)
        control = CONTROL_PREFIX
        route("GET", control + "settings", lambda _: Response(body=self._settings.model_dump()))
        route("PUT", control + "settings", self._set_settings)
        route("GET", control + "clients", self._list_clients)
        route("POST", control + "clients", self._post_client)
        route("GET", control + "users", self._list_users)
        route("POST", control + "users", self._post_user)
        route("GET", control + "keys", lambda _: Response(body=self._keys_body()))
        route("POST", control + "keys/rotate", self._rotate)
        route("DELETE", control + "keys/previous", self._drop_previous)
        route("GET", control + "logouts", lambda _: Response(body={"logouts": self.logouts()}))
        route("POST", control + "reset", self._reset)

    def _discovery(self, _: Request) -> Response:
        issuer = self.issuer
        claims = [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "at_hash",
            "name",
            "preferred_username",
            "email",
            "email_verified",
            self._settings.roles_claim,
        ]
        return Response(
            body={
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
                "end_session_endpoint": f"{issuer}/logout",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [ALGORITHM],
                "scopes_supported": list(SCOPES),
                "claims_supported": claims,
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    # --- the authorization endpoint ----------------------------------------------------------

    def _authorize_form(self, request: Request) -> Response:
        repeated = sorted(name for name, values in request.query.items() if len(values) > 1)
        if repeated:
            raise _refused_page(f"Parameters given more than once: {', '.join(repeated)}.")
        authorization = self._authorization_request(
            {name: values[0] for name, values in request.query.items()}
        )
        self.server.count("authorize.forms")
        return pages.sign_in(authorization.parameters, client_id=authorization.client.client_id)

    def _sign_in(self, request: Request) -> Response:
        form = request.body
        if not isinstance(form, dict):
            raise _refused_page("The sign-in form must be posted form-encoded.")
        authorization = self._authorization_request(form)
        if form.get("action") == "cancel":
            self.server.count("authorize.cancelled")
            raise self._error_redirect(authorization, "access_denied", "the user cancelled")
        username = str(form.get("username", ""))
        with self._lock:
            user = self._users.get(username)
        if user is None or not _same(str(form.get("password", "")), user.password):
            self.server.count("authorize.wrong_credentials")
            return pages.sign_in(
                authorization.parameters,
                client_id=authorization.client.client_id,
                username=username,
                error=pages.INVALID_CREDENTIALS,
            )
        code = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._codes = {
                value: kept
                for value, kept in self._codes.items()
                if kept.expires_at > now - 300  # a used or expired code is still told apart
            }
            self._codes[code] = _Code(
                client_id=authorization.client.client_id,
                redirect_uri=authorization.redirect_uri,
                username=user.username,
                scopes=authorization.scopes,
                nonce=authorization.nonce,
                code_challenge=authorization.code_challenge,
                auth_time=int(time.time()),
                expires_at=now + self._settings.code_lifetime_s,
            )
        self.server.count("authorize.signed_in")
        answer = {"code": code}
        if authorization.state is not None:
            answer["state"] = authorization.state
        return _redirect(_with_query(authorization.redirect_uri, answer))

    def _authorization_request(self, given: Mapping[str, Any]) -> AuthorizationRequest:
        """Checks an authorization request: an unknown client or redirect URI is answered
        with a page, anything else wrong by sending the browser back with an error."""
        parameters = {name: str(given[name]) for name in AUTHORIZATION_PARAMETERS if name in given}
        client_id = parameters.get("client_id", "")
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            self.server.count("authorize.refused")
            raise _refused_page(f"No client is registered as {client_id!r}.")
        redirect_uri = parameters.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            self.server.count("authorize.refused")
            raise _refused_page(
                f"The redirect_uri {redirect_uri!r} is not registered for {client_id!r}."
            )
        scopes = tuple(parameters.get("scope", "").split())
        request = AuthorizationRequest(
            client=client,
            redirect_uri=redirect_uri,
            scopes=scopes,
            state=parameters.get("state"),
            nonce=parameters.get("nonce"),
            code_challenge=parameters.get("code_challenge", ""),
            parameters=parameters,
        )
        if parameters.get("response_type") != "code":
            raise self._error_redirect(
                request, "unsupported_response_type", "only response_type=code is supported"
            )
        if "openid" not in scopes:
            raise self._error_redirect(request, "invalid_scope", "the openid scope is required")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise self._error_redirect(
                request, "invalid_scope", f"unsupported scopes: {' '.join(unknown)}"
            )
        if not request.code_challenge:
            raise self._error_redirect(request, "invalid_request", "PKCE is required")
        if parameters.get("code_challenge_method") != "S256":
            raise self._error_redirect(
                request, "invalid_request", "code_challenge_method must be S256"
            )
        if not CODE_CHALLENGE.fullmatch(request.code_challenge):
            raise self._error_redirect(
                request, "invalid_request", "code_challenge is not a base64url SHA-256 digest"
            )
        return request

    def _error_redirect(
        self, request: AuthorizationRequest, error: str, description: str
    ) -> HttpFailure:
        """RFC 6749 section 4.1.2.1: the error, sent back to the (registered) redirect URI."""
        self.server.count("authorize.errors")
        answer = {"error": error, "error_description": description}
        if request.state is not None:
            answer["state"] = request.state
        redirect = _redirect(_with_query(request.redirect_uri, answer))
        return HttpFailure(redirect.status, redirect.body, redirect.headers)

    # --- the token endpoint ------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.body
        if not request.headers.get("content-type", "").startswith(FORM) or not isinstance(
            form, dict
        ):
            raise self._token_error(
                400, "invalid_request", "the token request must be form-encoded"
            )
        client = self._authenticate(request, form)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._redeem(client, form)
        if grant_type == "client_credentials":
            return self._client_credentials(client, form)
        if not grant_type:
            raise self._token_error(400, "invalid_request", "grant_type is required")
        raise self._token_error(
            400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported"
        )

    def _token_error(self, status: int, error: str, description: str) -> HttpFailure:
        self.server.count("token.refused")
        return _oauth_error(status, error, description)

    def _authenticate(self, request: Request, form: dict[str, Any]) -> Client:
        """client_secret_basic or client_secret_post, never both."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            if "client_secret" in form:
                raise self._token_error(
                    400, "invalid_request", "more than one client authentication method"
                )
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise self._token_error(
                    401, "invalid_client", "malformed Basic credentials"
                ) from None
            client_id, colon, secret = decoded.partition(":")
            if not colon:
                raise self._token_error(401, "invalid_client", "malformed Basic credentials")
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
            if form.get("client_id", client_id) != client_id:
                raise self._token_error(
                    401, "invalid_client", "client_id differs from the Basic one"
                )
        else:
            client_id = str(form.get("client_id", ""))
            secret = str(form.get("client_secret", ""))
            if not client_id or not secret:
                raise self._token_error(401, "invalid_client", "client authentication is required")
        with self._lock:
            client = self._clients.get(client_id)
        if client is None or not _same(secret, client.client_secret):
            raise self._token_error(401, "invalid_client", "unknown client or wrong secret")
        return client

    def _redeem(self, client: Client, form: dict[str, Any]) -> Response:
        """The authorization code grant: the code is spent by any attempt to redeem it."""
        value = str(form.get("code", ""))
        if not value:
            raise self._token_error(400, "invalid_request", "code is required")
        with self._lock:
            code = self._codes.get(value)
            used = code is not None and code.used
            if code is not None:
                code.used = True
        if code is None:
            raise self._token_error(400, "invalid_grant", "unknown authorization code")
        if used:
            raise self._token_error(400, "invalid_grant", "the authorization code was already used")
        if code.expires_at <= time.monotonic():
            raise self._token_error(400, "invalid_grant", "the authorization code has expired")
        if code.client_id != client.client_id:
            raise self._token_error(400, "invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != code.redirect_uri:
            raise self._token_error(
                400, "invalid_grant", "redirect_uri differs from the authorization request's"
            )
        verifier = str(form.get("code_verifier", ""))
        if not CODE_VERIFIER.fullmatch(verifier) or not _same(s256(verifier), code.code_challenge):
            raise self._token_error(
                400, "invalid_grant", "code_verifier does not match the challenge"
            )
        with self._lock:
            user = self._users.get(code.username)
        if user is None:
            raise self._token_error(400, "invalid_grant", "the user is no longer registered")
        settings = self._settings
        scope = " ".join(code.scopes)
        access_token = self._issue(
            {
                "sub": user.sub,
                "aud": settings.audience,
                "client_id": client.client_id,
                "scope": scope,
                settings.roles_claim: list(user.roles),
            },
            settings,
            typ="at+jwt",
        )
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        id_claims: dict[str, Any] = {
            "sub": user.sub,
            "aud": client.client_id,
            "auth_time": code.auth_time,
            "at_hash": b64url(digest[: len(digest) // 2]),
        }
        if code.nonce is not None:
            id_claims["nonce"] = code.nonce
        id_claims.update(_scoped_claims(user, code.scopes, settings.roles_claim))
        id_token = self._issue(id_claims, settings, typ="JWT", id_token=True)
        self.server.count("token.authorization_code")
        return Response(
            body={
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": settings.token_lifetime_s,
                "id_token": id_token,
                "scope": scope,
            },
            headers=dict(NO_STORE),
        )

    def _client_credentials(self, client: Client, form: dict[str, Any]) -> Response:
        requested = tuple(str(form.get("scope", "")).split())
        if client.scopes:
            refused = sorted(set(requested) - set(client.scopes))
            if refused:
                raise self._token_error(
                    400, "invalid_scope", f"not granted to this client: {' '.join(refused)}"
                )
        scope = " ".join(requested or client.scopes)
        settings = self._settings
        access_token = self._issue(
            {
                "sub": client.client_id,
                "aud": settings.audience,
                "client_id": client.client_id,
                "scope": scope,
                settings.roles_claim: list(client.roles),
            },
            settings,
            typ="at+jwt",
        )
        self.server.count("token.client_credentials")
        return Response(
            body={
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": settings.token_lifetime_s,
                "scope": scope,
            },
            headers=dict(NO_STORE),
        )

    def _issue(
        self, claims: dict[str, Any], settings: IdpSettings, *, typ: str, id_token: bool = False
    ) -> str:
        """Signs ``claims`` with ``iss``, ``iat``, ``exp`` and ``jti`` added, spoiled as the
        token fault says."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            **claims,
            "iat": now,
            "exp": now + settings.token_lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        fault = settings.token_fault
        if fault == "wrong_audience":
            claims["aud"] = WRONG_AUDIENCE
        elif fault == "wrong_issuer":
            claims["iss"] = f"{self.issuer}/impostor"
        elif fault == "expired":
            claims["exp"] = now - EXPIRED_BY_S
            claims["iat"] = claims["exp"] - settings.token_lifetime_s
            if "auth_time" in claims:
                claims["auth_time"] = min(claims["auth_time"], claims["iat"])
        elif fault == "wrong_nonce" and id_token:
            claims["nonce"] = secrets.token_urlsafe(16)
        if fault in ("wrong_audience", "wrong_issuer", "expired", "wrong_nonce"):
            self.server.count(f"token.faults.{fault}")
        if fault == "bad_signature":
            self.server.count("token.faults.bad_signature")
            return self.keys.stranger.sign(claims, kid=self.keys.active.kid, typ=typ)
        if fault == "unknown_key":
            self.server.count("token.faults.unknown_key")
            return self.keys.stranger.sign(claims, typ=typ)
        return self.keys.active.sign(claims, typ=typ)

    # --- logout ------------------------------------------------------------------------------

    def _logout(self, request: Request) -> Response:
        """RP-initiated logout: ``post_logout_redirect_uri`` (with ``state``) must be
        registered, for ``client_id`` if given; without one, a "signed out" page."""
        given = request.body if isinstance(request.body, dict) else {}
        parameters = {name: values[0] for name, values in request.query.items()}
        parameters.update({name: str(value) for name, value in given.items()})
        with self._lock:
            self._logouts.append(dict(parameters))
            clients = list(self._clients.values())
        self.server.count("logout")
        target = parameters.get("post_logout_redirect_uri")
        if target is None:
            return pages.message("Signed out", "You are signed out.")
        client_id = parameters.get("client_id")
        if not any(
            target in client.post_logout_redirect_uris
            for client in clients
            if client_id is None or client.client_id == client_id
        ):
            raise _page_failure(
                "Sign-out refused",
                f"The post_logout_redirect_uri {target!r} is not registered.",
            )
        state = parameters.get("state")
        return _redirect(_with_query(target, {"state": state}) if state is not None else target)

    # --- the control API ---------------------------------------------------------------------

    def _set_settings(self, request: Request) -> Response:
        if not isinstance(request.body, dict):
            raise HttpFailure(400, {"error": "a JSON object of settings is required"})
        try:
            return Response(body=self.configure(**request.body).model_dump())
        except ValueError as error:  # pydantic's ValidationError is one
            raise _control_error(error) from None

    def _list_clients(self, _: Request) -> Response:
        with self._lock:
            clients = [client.model_dump() for client in self._clients.values()]
        return Response(body={"clients": clients})

    def _post_client(self, request: Request) -> Response:
        try:
            client = self.register_client(Client.model_validate(request.body))
        except ValidationError as error:
            raise _control_error(error) from None
        return Response(201, client.model_dump())

    def _list_users(self, _: Request) -> Response:
        with self._lock:
            users = [user.public() for user in self._users.values()]
        return Response(body={"users": users})

    def _post_user(self, request: Request) -> Response:
        try:
            user = self.register_user(User.model_validate(request.body))
        except ValidationError as error:
            raise _control_error(error) from None
        return Response(201, user.public())

    def _keys_body(self) -> dict[str, Any]:
        kids = self.published_kids()
        return {"active": kids[0], "published": kids}

    def _rotate(self, request: Request) -> Response:
        body = request.body if request.body is not None else {}
        if not isinstance(body, dict) or set(body) - {"keep_previous_s"}:
            raise HttpFailure(400, {"error": 'the body is {"keep_previous_s": seconds or null}'})
        keep = body.get("keep_previous_s")
        number = isinstance(keep, int | float) and not isinstance(keep, bool)
        if keep is not None and (not number or keep < 0):
            raise HttpFailure(400, {"error": "keep_previous_s must be a number >= 0, or null"})
        self.rotate_key(None if keep is None else float(keep))
        return Response(body=self._keys_body())

    def _drop_previous(self, _: Request) -> Response:
        self.drop_previous_keys()
        return Response(body=self._keys_body())

    def _reset(self, _: Request) -> Response:
        self.reset()
        return Response(body={"reset": True})


def _scoped_claims(user: User, scopes: tuple[str, ...], roles_claim: str) -> dict[str, Any]:
    """The ID token's claims about the user that the granted scopes ask for (OpenID Connect
    Core section 5.4; ``roles`` is this provider's own)."""
    claims: dict[str, Any] = {}
    if "profile" in scopes:
        claims["preferred_username"] = user.username
        if user.name:
            claims["name"] = user.name
    if "email" in scopes and user.email:
        claims["email"] = user.email
        claims["email_verified"] = True
    if "roles" in scopes:
        claims[roles_claim] = list(user.roles)
    return claims
