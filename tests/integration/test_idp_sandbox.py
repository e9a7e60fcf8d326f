"""The identity provider sandbox, as a relying party and a machine caller meet it: discovery,
the authorization code flow with PKCE through its sign-in form, ID and access tokens checked
against its JWK set with PyJWT, key rotation, logout, the token faults, the control API and
the provider as a process. In process and on loopback only: no Kafka, no PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt
import pytest
from sandbox.idp import IdentityProvider, IdpSandbox, User

CLIENT_ID = "exception-console"
CLIENT_SECRET = "console-secret"
REDIRECT_URI = "http://127.0.0.1:9/auth/callback"
SIGNED_OUT_URI = "http://127.0.0.1:9/signed-out"
MACHINE_ID = "erp-bridge"
MACHINE_SECRET = "bridge-secret"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
SCOPE = "openid profile email roles"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(autouse=True)
def registered(idp: IdentityProvider) -> User:
    """Every test starts from the same clients, user and default settings; the user."""
    idp.reset()
    idp.add_client(
        CLIENT_ID,
        CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
        post_logout_redirect_uris=[SIGNED_OUT_URI],
    )
    idp.add_client(
        MACHINE_ID,
        MACHINE_SECRET,
        roles=["orders.write", "orders.read"],
        scopes=["orders", "invoices"],
    )
    return idp.add_user(
        USERNAME,
        PASSWORD,
        name="Alice Example",
        email="alice@example.com",
        roles=["operator", "viewer"],
    )


@pytest.fixture
def http(idp: IdentityProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idp.url, follow_redirects=False, timeout=10) as client:
        yield client


@pytest.fixture
def jwks(idp: IdentityProvider) -> jwt.PyJWKClient:
    """As a relying party keeps it; no cooldown, so a rotated key is fetched at once."""
    return jwt.PyJWKClient(idp.jwks_uri, cooldown_duration=0)


# --- a relying party's side of the flow --------------------------------------------------------


@dataclass
class Form:
    """The sign-in page as a browser sees it."""

    action: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form = Form()
        self._text: list[str] | None = None
        self._collecting = ""
        """The list of :class:`Form` the text read goes to."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.form.action = attributes.get("action", "")
        elif tag == "input" and attributes.get("type") == "hidden":
            self.form.fields[attributes["name"]] = attributes.get("value", "")
        elif tag in ("label", "button") or (tag == "p" and attributes.get("role") == "alert"):
            self._text = []
            self._collecting = {"label": "labels", "button": "buttons"}.get(tag, "alerts")

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._text is not None and tag in ("label", "button", "p"):
            getattr(self.form, self._collecting).append("".join(self._text).strip())
            self._text = None


def read_form(page: httpx.Response) -> Form:
    reader = _FormReader()
    reader.feed(page.text)
    return reader.form


def pkce() -> tuple[str, str]:
    """A code verifier and its S256 challenge, worked out here from RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Attempt:
    """One authorization request, with what the relying party keeps to finish it."""

    state: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    verifier: str = ""
    challenge: str = ""

    def __post_init__(self) -> None:
        if not self.verifier:
            self.verifier, self.challenge = pkce()

    def parameters(self, **overrides: str) -> dict[str, str]:
        parameters = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPE,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
        }
        parameters.update(overrides)
        return {name: value for name, value in parameters.items() if value != "-"}


def sign_in(
    http: httpx.Client, page: httpx.Response, username: str, password: str
) -> httpx.Response:
    """Fill in and submit the sign-in form, as a browser would."""
    form = read_form(page)
    body = {**form.fields, "username": username, "password": password}
    return http.post(urljoin(str(page.url), form.action), data=body)


def returned(response: httpx.Response, redirect_uri: str = REDIRECT_URI) -> dict[str, str]:
    """The parameters a redirect back to ``redirect_uri`` carries."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.split("?")[0] == redirect_uri
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def code_for(http: httpx.Client, attempt: Attempt, **overrides: str) -> str:
    page = http.get("/authorize", params=attempt.parameters(**overrides))
    answer = returned(sign_in(http, page, USERNAME, PASSWORD))
    assert answer["state"] == attempt.state
    return answer["code"]


def redeem(
    http: httpx.Client,
    code: str,
    verifier: str,
    *,
    redirect_uri: str = REDIRECT_URI,
    auth: tuple[str, str] = (CLIENT_ID, CLIENT_SECRET),
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return http.post("/token", data=form, auth=auth)


def verify(
    jwks: jwt.PyJWKClient, token: str, idp: IdentityProvider, audience: str
) -> dict[str, Any]:
    """What a relying party does with a token: key from the JWK set by kid, then RS256,
    audience, issuer and expiry checked."""
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )


def id_token(http: httpx.Client, attempt: Attempt | None = None) -> tuple[str, Attempt]:
    attempt = attempt or Attempt()
    answer = redeem(http, code_for(http, attempt), attempt.verifier)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id_token"]), attempt


def machine_token(http: httpx.Client, **form: str) -> httpx.Response:
    return http.post(
        "/token",
        data={"grant_type": "client_credentials", **form},
        auth=(MACHINE_ID, MACHINE_SECRET),
    )


# --- discovery and keys -------------------------------------------------------------------------


def test_the_discovery_document_names_the_endpoints_and_what_they_support(
    http: httpx.Client, idp: IdentityProvider
) -> None:
    document = http.get("/.well-known/openid-configuration").json()

    issuer = idp.url
    assert document["issuer"] == issuer == idp.issuer
    assert document["authorization_endpoint"] == f"{issuer}/authorize"
    assert document["token_endpoint"] == f"{issuer}/token"
    assert document["jwks_uri"] == f"{issuer}/jwks"
    assert document["end_session_endpoint"] == f"{issuer}/logout"
    assert document["response_types_supported"] == ["code"]
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert document["scopes_supported"] == ["openid", "profile", "email", "roles"]
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert document["code_challenge_methods_supported"] == ["S256"]


def test_the_jwk_set_publishes_a_2048_bit_rsa_signing_key(
    http: httpx.Client, idp: IdentityProvider
) -> None:
    (key,) = http.get("/jwks").json()["keys"]

    assert {name: key[name] for name in ("kty", "use", "alg", "e")} == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "e": "AQAB",
    }
    modulus = base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4))
    assert len(modulus) * 8 == 2048
    assert key["kid"] == idp.published_kids()[0]


# --- the authorization endpoint --------------------------------------------------------------


def test_the_sign_in_form_carries_the_authorization_request(http: httpx.Client) -> None:
    attempt = Attempt(state='"><script>alert(1)</script>')
    page = http.get("/authorize", params=attempt.parameters())

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    form = read_form(page)
    assert form.labels == ["Username", "Password"]
    assert form.buttons[0] == "Sign in"
    assert form.fields == attempt.parameters()
    assert "<script>" not in page.text
    assert urlsplit(urljoin(str(page.url), form.action)).path == "/authorize"


def test_a_wrong_password_shows_the_form_again_with_an_error(http: httpx.Client) -> None:
    attempt = Attempt()
    page = http.get("/authorize", params=attempt.parameters())

    refused = sign_in(http, page, USERNAME, "not the password")
    unknown = sign_in(http, page, "mallory", PASSWORD)

    for answer in (refused, unknown):
        assert answer.status_code == 200
        assert "location" not in answer.headers
        again = read_form(answer)
        assert again.alerts == ["Invalid username or password."]
        assert again.fields == attempt.parameters()
    assert returned(sign_in(http, refused, USERNAME, PASSWORD))["state"] == attempt.state


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
        ("redirect_uri", REDIRECT_URI + "/"),
        ("redirect_uri", "-"),
        ("client_id", "unknown-client"),
    ],
)
def test_an_unregistered_redirect_uri_or_client_gets_a_page_never_a_redirect(
    http: httpx.Client, override: str, value: str
) -> None:
    attempt = Attempt()
    shown = http.get("/authorize", params=attempt.parameters(**{override: value}))

    page = http.get("/authorize", params=attempt.parameters())
    tampered = {**read_form(page).fields, override: value, "username": USERNAME}
    posted = http.post("/authorize", data={**tampered, "password": PASSWORD})

    for answer in (shown, posted):
        assert answer.status_code == 400
        assert "location" not in answer.headers
        assert answer.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "profile email"}, "invalid_scope"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"code_challenge": "-"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
    ],
)
def test_a_bad_request_from_a_registered_client_is_sent_back_with_its_error(
    http: httpx.Client, overrides: dict[str, str], error: str
) -> None:
    attempt = Attempt()
    answer = returned(http.get("/authorize", params=attempt.parameters(**overrides)))

    assert answer["error"] == error
    assert answer["state"] == attempt.state
    assert "code" not in answer


def test_cancelling_the_sign_in_sends_access_denied_back(http: httpx.Client) -> None:
    attempt = Attempt()
    page = http.get("/authorize", params=attempt.parameters())

    answer = returned(http.post("/authorize", data={**read_form(page).fields, "action": "cancel"}))

    assert answer == {
        "error": "access_denied",
        "error_description": "the user cancelled",
        "state": attempt.state,
    }


# --- the authorization code grant ---------------------------------------------------------------


def test_the_code_flow_gives_an_id_token_that_verifies_against_the_jwk_set(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient, registered: User
) -> None:
    attempt = Attempt()
    before = int(time.time())
    answer = redeem(http, code_for(http, attempt), attempt.verifier)

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == idp.settings.token_lifetime_s
    assert tokens["scope"] == SCOPE
    claims = verify(jwks, tokens["id_token"], idp, audience=CLIENT_ID)
    assert claims["nonce"] == attempt.nonce
    assert claims["roles"] == ["operator", "viewer"]
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice Example"
    assert claims["preferred_username"] == USERNAME
    assert claims["sub"] == registered.sub
    assert before <= claims["auth_time"] <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == idp.settings.token_lifetime_s
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == idp.published_kids()[0]
    access = verify(jwks, tokens["access_token"], idp, audience="revsync")
    assert (access["sub"], access["client_id"]) == (claims["sub"], CLIENT_ID)
    assert access["roles"] == ["operator", "viewer"]


def test_the_id_token_claims_follow_the_scopes_granted(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    attempt = Attempt()
    answer = redeem(http, code_for(http, attempt, scope="openid"), attempt.verifier)

    claims = verify(jwks, answer.json()["id_token"], idp, audience=CLIENT_ID)

    assert claims["nonce"] == attempt.nonce
    assert {"roles", "email", "name", "preferred_username"}.isdisjoint(claims)


def test_the_roles_claim_and_the_token_lifetime_are_settings(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    idp.configure(roles_claim="https://revsync.example/roles", token_lifetime_s=60)

    token, _ = id_token(http)
    claims = verify(jwks, token, idp, audience=CLIENT_ID)

    assert claims["https://revsync.example/roles"] == ["operator", "viewer"]
    assert "roles" not in claims
    assert claims["exp"] - claims["iat"] == 60


def test_client_secret_post_authenticates_a_client_too(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    attempt = Attempt()
    form = {
        "grant_type": "authorization_code",
        "code": code_for(http, attempt),
        "redirect_uri": REDIRECT_URI,
        "code_verifier": attempt.verifier,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }

    answer = http.post("/token", data=form)

    assert answer.status_code == 200, answer.text
    assert verify(jwks, answer.json()["id_token"], idp, CLIENT_ID)["nonce"] == attempt.nonce


def test_a_code_is_good_for_one_redemption_only(http: httpx.Client) -> None:
    attempt = Attempt()
    code = code_for(http, attempt)

    first = redeem(http, code, attempt.verifier)
    second = redeem(http, code, attempt.verifier)

    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


def test_a_verifier_that_does_not_match_the_challenge_is_refused(http: httpx.Client) -> None:
    attempt = Attempt()
    code = code_for(http, attempt)

    answer = redeem(http, code, pkce()[0])

    assert answer.status_code == 400
    assert answer.json() == {
        "error": "invalid_grant",
        "error_description": "code_verifier does not match the challenge",
    }


@pytest.mark.parametrize(
    "mismatch", ["redirect_uri", "client", "expired", "unknown code", "no verifier"]
)
def test_a_code_is_bound_to_its_client_redirect_uri_and_lifetime(
    http: httpx.Client, idp: IdentityProvider, mismatch: str
) -> None:
    idp.add_client(
        "other-app", "other-secret", redirect_uris=[REDIRECT_URI, "http://127.0.0.1:9/other"]
    )
    if mismatch == "expired":
        idp.configure(code_lifetime_s=0.2)
    attempt = Attempt()
    code = code_for(http, attempt)
    verifier = attempt.verifier
    redirect_uri, auth = REDIRECT_URI, (CLIENT_ID, CLIENT_SECRET)
    if mismatch == "redirect_uri":
        redirect_uri = "http://127.0.0.1:9/other"
    elif mismatch == "client":
        auth = ("other-app", "other-secret")
    elif mismatch == "expired":
        time.sleep(0.3)
    elif mismatch == "unknown code":
        code = secrets.token_urlsafe(32)
    elif mismatch == "no verifier":
        verifier = ""

    answer = redeem(http, code, verifier, redirect_uri=redirect_uri, auth=auth)

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("auth", "form"),
    [
        ((CLIENT_ID, "wrong-secret"), {}),
        (("nobody", CLIENT_SECRET), {}),
        ((CLIENT_ID, CLIENT_SECRET), {"client_id": MACHINE_ID}),
        (None, {}),
        (None, {"client_id": CLIENT_ID, "client_secret": "wrong-secret"}),
    ],
)
def test_a_client_that_fails_to_authenticate_is_refused_401(
    http: httpx.Client, auth: tuple[str, str] | None, form: dict[str, str]
) -> None:
    attempt = Attempt()
    body = {
        "grant_type": "authorization_code",
        "code": code_for(http, attempt),
        "redirect_uri": REDIRECT_URI,
        "code_verifier": attempt.verifier,
        **form,
    }

    answer = http.post("/token", data=body, auth=auth or httpx.USE_CLIENT_DEFAULT)

    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["www-authenticate"].startswith("Basic")


def test_an_unsupported_grant_type_is_refused(http: httpx.Client) -> None:
    answer = http.post(
        "/token",
        data={"grant_type": "password", "username": USERNAME, "password": PASSWORD},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )

    assert answer.status_code == 400
    assert answer.json()["error"] == "unsupported_grant_type"


def test_a_user_keeps_the_subject_it_is_given(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient, registered: User
) -> None:
    first, _ = id_token(http)
    idp.add_user(USERNAME, PASSWORD, subject="00u-alice", roles=["operator"])
    second, _ = id_token(http)

    assert verify(jwks, first, idp, CLIENT_ID)["sub"] == registered.sub != "00u-alice"
    assert verify(jwks, second, idp, CLIENT_ID)["sub"] == "00u-alice"


# --- client credentials -----------------------------------------------------------------------


def test_client_credentials_give_a_machine_caller_an_access_token(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    idp.configure(audience="https://api.revsync.example")

    answer = machine_token(http, scope="orders")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["token_type"], body["scope"]) == ("Bearer", "orders")
    assert "id_token" not in body
    claims = verify(jwks, body["access_token"], idp, audience="https://api.revsync.example")
    assert claims["sub"] == MACHINE_ID
    assert claims["scope"] == "orders"
    assert claims["roles"] == ["orders.write", "orders.read"]
    assert claims["exp"] - claims["iat"] == body["expires_in"]


def test_client_credentials_grant_only_the_scopes_a_client_has(http: httpx.Client) -> None:
    everything = machine_token(http)
    refused = machine_token(http, scope="orders admin")

    assert everything.json()["scope"] == "orders invoices"
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "rejection"),
    [
        ("bad_signature", jwt.InvalidSignatureError),
        ("unknown_key", jwt.PyJWKClientError),
        ("wrong_audience", jwt.InvalidAudienceError),
        ("wrong_issuer", jwt.InvalidIssuerError),
        ("expired", jwt.ExpiredSignatureError),
    ],
)
def test_a_token_fault_spoils_id_and_access_tokens_so_pyjwt_rejects_them(
    http: httpx.Client,
    idp: IdentityProvider,
    jwks: jwt.PyJWKClient,
    fault: str,
    rejection: type[Exception],
) -> None:
    sound, _ = id_token(http)
    verify(jwks, sound, idp, CLIENT_ID)
    idp.configure(token_fault=fault)

    spoiled, _ = id_token(http)
    machine = machine_token(http).json()["access_token"]

    with pytest.raises(rejection):
        verify(jwks, spoiled, idp, CLIENT_ID)
    with pytest.raises(rejection):
        verify(jwks, machine, idp, "revsync")
    idp.configure(token_fault=None)
    verify(jwks, id_token(http)[0], idp, CLIENT_ID)


def test_the_wrong_nonce_fault_sends_an_id_token_for_another_sign_in(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    idp.configure(token_fault="wrong_nonce")

    token, attempt = id_token(http)

    claims = verify(jwks, token, idp, CLIENT_ID)
    assert claims["nonce"] != attempt.nonce


def test_http_faults_reach_the_provider_endpoints_but_not_its_control_api(
    http: httpx.Client, idp: IdentityProvider
) -> None:
    with IdpSandbox(idp.url) as control:
        control.set_faults(error_rate=1.0)
        try:
            assert http.get("/jwks").status_code == 503
            assert control.published_kids() == idp.published_kids()
        finally:
            control.set_faults(error_rate=0.0)
    assert http.get("/jwks").status_code == 200


# --- key rotation -----------------------------------------------------------------------------


def test_after_a_rotation_both_keys_verify_until_the_old_one_is_dropped(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    before, _ = id_token(http)
    old_kid = jwt.get_unverified_header(before)["kid"]
    verify(jwks, before, idp, CLIENT_ID)

    new_kid = idp.rotate_key()
    after, _ = id_token(http)

    assert new_kid != old_kid
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert [key["kid"] for key in http.get("/jwks").json()["keys"]] == [new_kid, old_kid]
    verify(jwks, after, idp, CLIENT_ID)
    verify(jwt.PyJWKClient(idp.jwks_uri), before, idp, CLIENT_ID)

    assert idp.drop_previous_keys() == [new_kid]
    with pytest.raises(jwt.PyJWKClientError):
        verify(jwt.PyJWKClient(idp.jwks_uri), before, idp, CLIENT_ID)
    verify(jwt.PyJWKClient(idp.jwks_uri), after, idp, CLIENT_ID)


def test_a_rotated_out_key_can_leave_the_jwk_set_at_once_or_after_a_while(
    http: httpx.Client, idp: IdentityProvider
) -> None:
    first = idp.published_kids()[0]
    second = idp.rotate_key(keep_previous_s=0)
    assert [key["kid"] for key in http.get("/jwks").json()["keys"]] == [second]

    third = idp.rotate_key(keep_previous_s=0.3)
    assert [key["kid"] for key in http.get("/jwks").json()["keys"]] == [third, second]
    time.sleep(0.4)
    assert [key["kid"] for key in http.get("/jwks").json()["keys"]] == [third]
    assert first not in (second, third)


# --- logout -----------------------------------------------------------------------------------


def test_logout_sends_the_browser_to_a_registered_uri_with_its_state(
    http: httpx.Client, idp: IdentityProvider
) -> None:
    token, _ = id_token(http)
    parameters = {
        "post_logout_redirect_uri": SIGNED_OUT_URI,
        "state": "bye",
        "id_token_hint": token,
        "client_id": CLIENT_ID,
    }

    answer = http.get("/logout", params=parameters)

    assert returned(answer, SIGNED_OUT_URI) == {"state": "bye"}
    assert idp.logouts() == [parameters]


@pytest.mark.parametrize(
    ("target", "client_id", "status"),
    [
        ("http://127.0.0.1:9/phishing", CLIENT_ID, 400),
        (REDIRECT_URI, CLIENT_ID, 400),
        (SIGNED_OUT_URI, MACHINE_ID, 400),
        (SIGNED_OUT_URI, None, 302),
        (None, None, 200),
    ],
)
def test_logout_redirects_only_to_a_uri_registered_for_the_client(
    http: httpx.Client, target: str | None, client_id: str | None, status: int
) -> None:
    parameters = {"post_logout_redirect_uri": target, "client_id": client_id}

    answer = http.get(
        "/logout", params={name: value for name, value in parameters.items() if value}
    )

    assert answer.status_code == status
    assert ("location" in answer.headers) == (status == 302)


# --- the control API and the provider as a process ------------------------------------------


def test_the_control_api_registers_clients_and_users_over_http(
    http: httpx.Client, idp: IdentityProvider, jwks: jwt.PyJWKClient
) -> None:
    with IdpSandbox(idp.url) as control:
        control.reset()
        control.add_client(CLIENT_ID, CLIENT_SECRET, redirect_uris=[REDIRECT_URI])
        user = control.add_user("bob", "hunter2", name="Bob", roles=["auditor"])
        settings = control.configure(roles_claim="groups")
        with pytest.raises(RuntimeError, match="400"):
            control.configure(token_fault="no-such-fault")
        with pytest.raises(RuntimeError, match="400"):
            control.add_client("x", "y", redirect_uris=["/relative"])

        attempt = Attempt()
        page = http.get("/authorize", params=attempt.parameters())
        code = returned(sign_in(http, page, "bob", "hunter2"))["code"]
        answer = redeem(http, code, attempt.verifier)

        claims = verify(jwks, answer.json()["id_token"], idp, CLIENT_ID)
        assert (claims["sub"], claims["groups"]) == (user["sub"], ["auditor"])
        assert "password" not in user
        assert settings == control.settings()
        assert [client["client_id"] for client in control.clients()] == [CLIENT_ID]
        assert control.counters()["token.authorization_code"] == 1


def test_the_provider_runs_as_a_process_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.idp",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            REDIRECT_URI,
            "--user",
            f"{USERNAME}:{PASSWORD}:operator,viewer",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        with httpx.Client(base_url=announced["url"], follow_redirects=False) as http:
            document = http.get("/.well-known/openid-configuration").json()
            attempt = Attempt()
            page = http.get("/authorize", params=attempt.parameters())
            code = returned(sign_in(http, page, USERNAME, PASSWORD))["code"]
            tokens = redeem(http, code, attempt.verifier).json()
        claims = jwt.decode(
            tokens["id_token"],
            jwt.PyJWKClient(document["jwks_uri"]).get_signing_key_from_jwt(tokens["id_token"]),
            algorithms=["RS256"],
            audience=CLIENT_ID,
            issuer=announced["issuer"],
        )
        assert document["issuer"] == announced["issuer"] == announced["url"]
        assert claims["roles"] == ["operator", "viewer"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
