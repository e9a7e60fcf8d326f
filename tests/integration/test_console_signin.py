"""Signing in to the exception console, and what each role may do: the console app in process
(Starlette's test client) on the stack's PostgreSQL, the identity provider sandbox on loopback.

Signed out, pages send to the sign-in page and the API answers 401. A person signs in with the
provider (code flow with PKCE, through its sign-in form) and gets the role its roles claim maps
to; a spoiled ID token, a tampered ``state`` or no mapped role signs nobody in. Programs call
the API with the provider's access tokens. Local accounts lock after ten failures. Forms and
cookie-authenticated API calls need the CSRF token and our own Origin; every answer carries
the security headers, and the session cookie its flags. Nothing here writes to the database
but the console's own ``CREATE … IF NOT EXISTS``, so it reruns on a shared one; no Kafka
consumer is started.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import httpx2
import jwt
import pytest
from fastapi.testclient import TestClient
from sandbox.idp import IdentityProvider, TokenFault

from revsync.console.app import ConsoleConfig, create_app
from revsync.console.auth import (
    Account,
    LocalAccounts,
    OidcClient,
    OidcConfig,
    Role,
    hash_password,
    parse_role_map,
)
from revsync.contracts.catalog import load_catalog
from revsync.ops.exceptions import parse_stage_ages
from revsync.ops.operations import Operations
from revsync.settings import Settings

PUBLIC_URL = "http://testserver"
"""The test client's own address: the console's public URL, so Origin checks match it."""
SECURE_URL = "https://console.example"
CLIENT_ID = "exception-console"
CLIENT_SECRET = "console-secret"
AUDIENCE = "revsync"
"""The provider's access tokens' audience (its default), which the console expects."""
ROLE_MAP = "revsync-viewers=viewer,revsync-operators=operator,revsync-admins=admin"
IDP_PASSWORD = "correct horse battery staple"
OPERATOR = "olivia"
"""In the provider: a viewer and an operator (so an operator), and staff."""
VIEWER = "victor"
OUTSIDER = "nora"
"""In the provider, but in no group the console maps."""
VIEWER_BOT = ("reports-bot", "reports-secret")
OPERATOR_BOT = ("ops-bot", "ops-secret")
LOCAL_OPERATOR = ("lena", "a-long-local-password")
LOCAL_ADMIN = ("ada", LOCAL_OPERATOR[1])
LOCAL_HASH = hash_password(LOCAL_OPERATOR[1])
"""Of both local accounts' password, hashed once: scrypt is slow on purpose."""
EVIL_ORIGIN = "https://evil.example"
PAGES = ["/", "/exceptions?status=all", "/consumers", "/orders/801X", "/dead-letters/x"]
API_READS = [
    "/api/v1/me",
    "/api/v1/exceptions",
    "/api/v1/exceptions/x",
    "/api/v1/overview",
    "/api/v1/consumers",
    "/api/v1/orders/801X",
]
SPOILED_ID_TOKENS: list[tuple[TokenFault, str]] = [
    ("bad_signature", "InvalidSignatureError"),
    ("unknown_key", "PyJWKClientError"),
    ("wrong_audience", "InvalidAudienceError"),
    ("wrong_issuer", "InvalidIssuerError"),
    ("expired", "ExpiredSignatureError"),
    ("wrong_nonce", "nonce is not this sign-in"),
]
"""Each fault, and what the refusal says."""
SPOILED_ACCESS_TOKENS = [fault for fault, _ in SPOILED_ID_TOKENS if fault != "wrong_nonce"]
"""An access token has no nonce: the provider spoils it every other way."""
NONSENSE_ACTION = {"action": "nonsense", "refs": ["no-such-exception"]}
"""Refused by the desk (409) once past sign-in, role and CSRF checks, so it changes nothing."""


# --- the provider and the console --------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture(autouse=True)
def registered(idp: IdentityProvider) -> None:
    """Every test starts with the same clients and users and sound tokens."""
    idp.reset()
    idp.add_client(
        CLIENT_ID,
        CLIENT_SECRET,
        redirect_uris=[f"{url}/auth/callback" for url in (PUBLIC_URL, SECURE_URL)],
    )
    idp.add_client(*VIEWER_BOT, roles=["revsync-viewers"])
    idp.add_client(*OPERATOR_BOT, roles=["revsync-operators"])
    idp.add_user(OPERATOR, IDP_PASSWORD, roles=["revsync-viewers", "revsync-operators", "staff"])
    idp.add_user(VIEWER, IDP_PASSWORD, email="victor@example.com", roles=["revsync-viewers"])
    idp.add_user(OUTSIDER, IDP_PASSWORD, roles=["staff"])


OpenConsole = Callable[..., TestClient]


@pytest.fixture
def open_console(settings: Settings, idp: IdentityProvider) -> Iterator[OpenConsole]:
    """A console app started (its pool open) behind a test client; ``public_url`` is also the
    client's base URL. Closed after the test."""
    catalog = load_catalog(settings.schemas_dir)
    with ExitStack() as opened:

        def open_console(
            public_url: str = PUBLIC_URL, audience: str | None = AUDIENCE
        ) -> TestClient:
            to_provider = opened.enter_context(httpx.Client(timeout=10))
            oidc = OidcClient(
                OidcConfig(
                    issuer=idp.issuer,
                    client_id=CLIENT_ID,
                    client_secret=CLIENT_SECRET,
                    redirect_uri=f"{public_url}/auth/callback",
                    roles_claim="roles",
                    role_map=parse_role_map(ROLE_MAP),
                    audience=audience,
                ),
                to_provider,
            )
            config = ConsoleConfig(
                catalog=catalog,
                kafka_config=settings.kafka_config(),
                dsn=settings.postgres_dsn.get_secret_value(),
                operations=lambda name: Operations.from_settings(settings, name),
                session_secret="a-session-secret-for-these-tests-only-0123456789",
                public_url=public_url,
                accounts=LocalAccounts(
                    [
                        Account(LOCAL_OPERATOR[0], Role.OPERATOR, LOCAL_HASH),
                        Account(LOCAL_ADMIN[0], Role.ADMIN, LOCAL_HASH),
                    ]
                ),
                oidc=oidc,
                stage_ages=parse_stage_ages(""),
                mask_fields=frozenset(),
            )
            client = TestClient(create_app(config), base_url=public_url, follow_redirects=False)
            return opened.enter_context(client)

        yield open_console


@pytest.fixture
def console(open_console: OpenConsole) -> TestClient:
    return open_console()


@pytest.fixture
def idp_http() -> Iterator[httpx.Client]:
    """The browser's side of the provider: its sign-in form."""
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


# --- what a browser does -----------------------------------------------------------------------


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action = attributes.get("action", "")
        elif tag == "input" and attributes.get("type") == "hidden":
            self.hidden[attributes["name"]] = attributes.get("value", "")


def provider_sign_in(
    idp_http: httpx.Client, authorize_url: str, username: str, password: str = IDP_PASSWORD
) -> str:
    """Fill in the provider's sign-in form at ``authorize_url``; where it sends the browser
    back to."""
    page = idp_http.get(authorize_url)
    assert page.status_code == 200, page.text
    form = _FormReader()
    form.feed(page.text)
    posted = idp_http.post(
        urljoin(str(page.url), form.action),
        data={**form.hidden, "username": username, "password": password, "action": "sign_in"},
    )
    assert posted.status_code == 302, posted.text
    return posted.headers["location"]


def start_oidc(console: TestClient, idp: IdentityProvider, next: str = "/exceptions") -> str:
    """The console's redirect to the provider's authorization endpoint."""
    started = console.get("/login/oidc", params={"next": next})
    assert started.status_code == 303, started.text
    location: str = started.headers["location"]
    assert location.startswith(f"{idp.issuer}/authorize?")
    return location


def oidc_sign_in(
    console: TestClient,
    idp: IdentityProvider,
    idp_http: httpx.Client,
    username: str,
    next: str = "/exceptions",
) -> httpx2.Response:
    """The whole code flow: the console's answer at its callback."""
    callback = provider_sign_in(idp_http, start_oidc(console, idp, next), username)
    assert callback.startswith(f"{console.base_url}/auth/callback?")
    return console.get(callback)


def me(console: TestClient, **headers: str) -> httpx2.Response:
    return console.get("/api/v1/me", headers=headers)


def assert_signed_out(console: TestClient) -> None:
    assert me(console).status_code == 401
    assert console.get("/exceptions").headers["location"].startswith("/login?")


def csrf_of(page: httpx2.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found[1]


def local_sign_in(
    console: TestClient, name: str, password: str, next: str = "/", **headers: str
) -> httpx2.Response:
    token = csrf_of(console.get("/login"))
    return console.post(
        "/login",
        data={"csrf": token, "name": name, "password": password, "next": next},
        headers=headers,
    )


def session_csrf(console: TestClient) -> str:
    """The CSRF token of the signed-in session, as its pages carry it."""
    return csrf_of(console.get("/login"))


def bearer(idp_http: httpx.Client, idp: IdentityProvider, client: tuple[str, str]) -> str:
    """A client credentials access token."""
    answer = idp_http.post(
        f"{idp.issuer}/token", data={"grant_type": "client_credentials"}, auth=client
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def cookie_attributes(response: httpx2.Response, name: str = "revsync_console") -> dict[str, str]:
    """The attributes of the Set-Cookie for ``name``, lower case (a flag's value is "")."""
    (cookie,) = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    attributes = (part.strip().lower().partition("=") for part in cookie.split(";")[1:])
    return {attribute: value for attribute, _, value in attributes}


# --- signed out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_a_page_sends_the_signed_out_to_the_sign_in_page_and_back(
    console: TestClient, page: str
) -> None:
    answer = console.get(page)

    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query)["next"] == [page]


@pytest.mark.parametrize("path", API_READS)
def test_the_api_answers_401_without_credentials(console: TestClient, path: str) -> None:
    answer = console.get(path)

    assert answer.status_code == 401
    assert answer.json() == {"detail": "sign in, or send a bearer token"}


def test_an_api_action_answers_401_without_credentials(console: TestClient) -> None:
    answer = console.post("/api/v1/exceptions/actions", json=NONSENSE_ACTION)

    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("path", "body"), [("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", None)]
)
def test_health_and_metrics_answer_without_sign_in(
    console: TestClient, path: str, body: str | None
) -> None:
    answer = console.get(path)

    assert answer.status_code == 200
    if body is not None:
        assert answer.text == body
    else:
        assert answer.headers["content-type"].startswith("text/plain")
        assert "revsync_console_request_seconds" in answer.text


# --- OpenID Connect: the code flow with PKCE ------------------------------------------------------


def test_the_sign_in_request_carries_pkce_state_and_nonce(
    console: TestClient, idp: IdentityProvider
) -> None:
    first = parse_qs(urlsplit(start_oidc(console, idp)).query)
    second = parse_qs(urlsplit(start_oidc(console, idp)).query)

    assert first["response_type"] == ["code"]
    assert first["client_id"] == [CLIENT_ID]
    assert first["redirect_uri"] == [f"{PUBLIC_URL}/auth/callback"]
    assert first["code_challenge_method"] == ["S256"]
    assert "openid" in first["scope"][0].split()
    assert "code_verifier" not in first
    for name in ("state", "nonce", "code_challenge"):
        assert len(first[name][0]) >= 32
        assert first[name] != second[name]


def test_a_person_signs_in_with_the_provider_in_the_role_their_groups_map_to(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    answer = oidc_sign_in(console, idp, idp_http, OPERATOR, next="/exceptions?status=all")

    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/exceptions?status=all"
    assert me(console).json() == {"name": OPERATOR, "role": "operator", "via": "oidc"}
    page = console.get("/exceptions")
    assert page.status_code == 200
    assert OPERATOR in page.text


def test_a_viewer_signed_in_with_the_provider_is_a_viewer(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    assert oidc_sign_in(console, idp, idp_http, VIEWER).status_code == 303

    assert me(console).json() == {"name": VIEWER, "role": "viewer", "via": "oidc"}
    acted = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"X-CSRF-Token": session_csrf(console)},
    )
    assert acted.status_code == 403
    assert acted.json()["detail"] == "needs the operator role; you are viewer"


def test_a_person_given_no_console_role_is_refused(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    answer = oidc_sign_in(console, idp, idp_http, OUTSIDER)

    assert answer.status_code == 403
    assert "given no revsync role" in answer.text
    assert_signed_out(console)


@pytest.mark.parametrize(
    ("fault", "says"), SPOILED_ID_TOKENS, ids=[f for f, _ in SPOILED_ID_TOKENS]
)
def test_a_spoiled_id_token_signs_nobody_in(
    console: TestClient,
    idp: IdentityProvider,
    idp_http: httpx.Client,
    fault: TokenFault,
    says: str,
) -> None:
    idp.configure(token_fault=fault)

    answer = oidc_sign_in(console, idp, idp_http, OPERATOR)

    assert answer.status_code == 403
    assert says in answer.text
    assert_signed_out(console)
    # The same console signs the person in once the provider's tokens are sound again.
    idp.configure(token_fault=None)
    assert oidc_sign_in(console, idp, idp_http, OPERATOR).status_code == 303
    assert me(console).json()["role"] == "operator"


@pytest.mark.parametrize("state", ["", "another-state", "é-not-ascii"])
def test_a_tampered_state_signs_nobody_in_and_spends_the_sign_in(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client, state: str
) -> None:
    callback = provider_sign_in(idp_http, start_oidc(console, idp), OPERATOR)
    returned = parse_qs(urlsplit(callback).query)

    tampered = console.get("/auth/callback", params={"code": returned["code"][0], "state": state})

    assert tampered.status_code == 400
    assert "state differs" in tampered.text
    assert_signed_out(console)
    # The sign-in under way is spent: its true state no longer finishes it.
    again = console.get(callback)
    assert again.status_code == 400
    assert "no sign-in is under way" in again.text
    assert_signed_out(console)


def test_an_error_from_the_provider_signs_nobody_in(
    console: TestClient, idp: IdentityProvider
) -> None:
    state = parse_qs(urlsplit(start_oidc(console, idp)).query)["state"][0]

    answer = console.get("/auth/callback", params={"error": "access_denied", "state": state})

    assert answer.status_code == 400
    assert "access_denied" in answer.text
    assert_signed_out(console)


def test_a_callback_without_a_sign_in_under_way_is_refused(console: TestClient) -> None:
    answer = console.get("/auth/callback", params={"code": "x", "state": "y"})

    assert answer.status_code == 400
    assert_signed_out(console)


def test_signing_in_still_works_after_the_provider_rotates_its_key(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    assert oidc_sign_in(console, idp, idp_http, OPERATOR).status_code == 303
    console.cookies.clear()
    before = bearer(idp_http, idp, OPERATOR_BOT)

    idp.rotate_key()  # the old key stays published

    answer = oidc_sign_in(console, idp, idp_http, VIEWER)
    assert answer.status_code == 303, answer.text
    assert me(console).json() == {"name": VIEWER, "role": "viewer", "via": "oidc"}
    after = bearer(idp_http, idp, OPERATOR_BOT)
    for token in (before, after):
        assert me(console, authorization=f"Bearer {token}").json()["role"] == "operator"


def test_a_token_under_a_key_the_provider_no_longer_publishes_is_refused(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    """A provider drops a key that leaked; the console must stop trusting it once it has
    fetched the key set again (here: when the next sign-in brings the new key)."""
    before = bearer(idp_http, idp, OPERATOR_BOT)
    assert me(console, authorization=f"Bearer {before}").status_code == 200

    idp.rotate_key(keep_previous_s=0)  # the old key leaves the JWK set at once
    assert oidc_sign_in(console, idp, idp_http, VIEWER).status_code == 303

    answer = me(console, authorization=f"Bearer {before}")
    assert answer.status_code == 401
    assert answer.json()["detail"] == "token refused: PyJWKClientError"


@pytest.mark.parametrize(
    "next", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "exceptions"]
)
def test_signing_in_never_sends_anyone_off_the_site(console: TestClient, next: str) -> None:
    answer = local_sign_in(console, *LOCAL_OPERATOR, next=next)

    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/")
    assert not location.startswith(("//", "/\\"))
    assert urlsplit(location).netloc == ""


# --- bearer tokens ------------------------------------------------------------------------------


def test_a_programs_access_token_reads_the_api_in_its_mapped_role(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    token = bearer(idp_http, idp, VIEWER_BOT)
    headers = {"authorization": f"Bearer {token}"}

    assert me(console, **headers).json() == {
        "name": VIEWER_BOT[0],
        "role": "viewer",
        "via": "bearer",
    }
    worklist = console.get("/api/v1/exceptions", params={"limit": 1}, headers=headers)
    assert worklist.status_code == 200, worklist.text
    assert {"total", "counts", "items"} <= worklist.json().keys()
    # A bearer token is for the API: it sets no session cookie.
    assert "set-cookie" not in worklist.headers
    assert me(console).status_code == 401


def test_a_viewers_access_token_may_not_act(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    token = bearer(idp_http, idp, VIEWER_BOT)

    answer = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"authorization": f"Bearer {token}"},
    )

    assert answer.status_code == 403
    assert answer.json()["detail"] == "needs the operator role; you are viewer"


def test_an_operators_access_token_acts_without_a_csrf_token(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    """A bearer token is never sent by a browser on its own, so it needs no CSRF token."""
    token = bearer(idp_http, idp, OPERATOR_BOT)

    answer = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"authorization": f"Bearer {token}"},
    )

    assert answer.status_code == 409, answer.text
    assert "no action 'nonsense'" in answer.json()["detail"]


@pytest.mark.parametrize("fault", SPOILED_ACCESS_TOKENS)
def test_a_spoiled_access_token_is_refused(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client, fault: TokenFault
) -> None:
    idp.configure(token_fault=fault)
    token = bearer(idp_http, idp, OPERATOR_BOT)

    for answer in (
        me(console, authorization=f"Bearer {token}"),
        console.get("/api/v1/exceptions", headers={"authorization": f"Bearer {token}"}),
    ):
        assert answer.status_code == 401
        assert answer.json()["detail"].startswith("token refused: ")


@pytest.mark.parametrize(
    "token", ["", "not-a-jwt", "a.b.c"], ids=["empty", "not a JWT", "three garbage parts"]
)
def test_a_malformed_bearer_token_is_refused(console: TestClient, token: str) -> None:
    answer = me(console, authorization=f"Bearer {token}")

    assert answer.status_code == 401


def test_an_id_token_is_not_an_access_token(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    """An ID token is for the console (its audience is the client id), not for the API."""
    id_token, access_token = tokens_of_a_code_flow(idp, idp_http, OPERATOR)

    answer = me(console, authorization=f"Bearer {id_token}")

    assert answer.status_code == 401
    assert answer.json()["detail"] == "token refused: InvalidAudienceError"
    # The person's access token is one: an access token names its subject only.
    subject = jwt.decode(access_token, options={"verify_signature": False})["sub"]
    assert me(console, authorization=f"Bearer {access_token}").json() == {
        "name": subject,
        "role": "operator",
        "via": "bearer",
    }


def test_without_an_api_audience_the_api_takes_no_bearer_tokens(
    open_console: OpenConsole, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    """Were the client id the API's audience, a person's ID token would pass for an access
    token; so without an audience of its own the API takes none."""
    console = open_console(audience=None)
    id_token, _ = tokens_of_a_code_flow(idp, idp_http, OPERATOR)

    for token in (bearer(idp_http, idp, OPERATOR_BOT), id_token):
        answer = me(console, authorization=f"Bearer {token}")
        assert answer.status_code == 401
        assert "REVSYNC_CONSOLE_OIDC_AUDIENCE" in answer.json()["detail"]


def tokens_of_a_code_flow(
    idp: IdentityProvider, idp_http: httpx.Client, username: str
) -> tuple[str, str]:
    """The ID and access tokens of ``username``, from a code flow run here with its own PKCE
    (as another relying party of the same client would)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    parameters: dict[str, Any] = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": f"{PUBLIC_URL}/auth/callback",
        "scope": "openid profile roles",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    authorize = str(httpx.URL(f"{idp.issuer}/authorize", params=parameters))
    code = parse_qs(urlsplit(provider_sign_in(idp_http, authorize, username)).query)["code"][0]
    tokens = idp_http.post(
        f"{idp.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": parameters["redirect_uri"],
            "code_verifier": verifier,
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert tokens.status_code == 200, tokens.text
    return str(tokens.json()["id_token"]), str(tokens.json()["access_token"])


# --- local accounts -------------------------------------------------------------------------------


def test_a_local_account_signs_in_with_its_password(console: TestClient) -> None:
    answer = local_sign_in(console, *LOCAL_OPERATOR, next="/consumers")

    assert answer.status_code == 303
    assert answer.headers["location"] == "/consumers"
    assert me(console).json() == {"name": LOCAL_OPERATOR[0], "role": "operator", "via": "local"}


def test_a_wrong_password_shows_the_form_again(console: TestClient) -> None:
    answer = local_sign_in(console, LOCAL_OPERATOR[0], "not the password")

    assert answer.status_code == 401
    assert "wrong name or password" in answer.text
    assert 'name="password"' in answer.text
    assert_signed_out(console)


def test_ten_wrong_passwords_lock_the_account(console: TestClient) -> None:
    for _ in range(10):
        assert local_sign_in(console, LOCAL_OPERATOR[0], "not the password").status_code == 401

    answer = local_sign_in(console, *LOCAL_OPERATOR)

    assert answer.status_code == 401
    assert "too many failed sign-ins" in answer.text
    assert_signed_out(console)


def test_signing_out_ends_the_session(console: TestClient) -> None:
    assert local_sign_in(console, *LOCAL_OPERATOR).status_code == 303

    answer = console.post("/logout", data={"csrf": session_csrf(console)})

    assert answer.status_code == 303
    assert_signed_out(console)


def test_signing_in_gives_the_session_a_new_csrf_token(console: TestClient) -> None:
    """A token seen before signing in (planted, say) is not the signed-in session's."""
    before = csrf_of(console.get("/login"))

    assert local_sign_in(console, *LOCAL_OPERATOR).status_code == 303

    assert session_csrf(console) != before


# --- CSRF and Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["stale", "é-not-ascii"])
def test_a_sign_in_form_with_a_wrong_csrf_token_is_refused(console: TestClient, token: str) -> None:
    console.get("/login")

    answer = console.post(
        "/login",
        data={"csrf": token, "name": LOCAL_OPERATOR[0], "password": LOCAL_OPERATOR[1]},
    )

    assert answer.status_code == 403
    assert "CSRF token" in answer.text
    assert_signed_out(console)


@pytest.mark.parametrize("form", [{}, {"csrf": ""}], ids=["no csrf field", "an empty one"])
def test_a_sign_in_form_without_a_csrf_token_is_refused(
    console: TestClient, form: dict[str, str]
) -> None:
    console.get("/login")

    answer = console.post(
        "/login", data={**form, "name": LOCAL_OPERATOR[0], "password": LOCAL_OPERATOR[1]}
    )

    # The form's validation refuses a required field missing (422) before the CSRF check
    # would (403): either way, nobody is signed in.
    assert answer.status_code in (403, 422)
    assert_signed_out(console)


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/logout", {}),
        ("/exceptions/act", {"action": "nonsense", "refs": "no-such-exception"}),
        ("/exceptions/preview", {"action": "resolve", "refs": "no-such-exception"}),
        ("/consumers/order-sync/resume", {}),
    ],
)
def test_a_signed_in_form_post_with_a_wrong_csrf_token_is_refused(
    console: TestClient, path: str, form: dict[str, str]
) -> None:
    assert local_sign_in(console, *LOCAL_ADMIN).status_code == 303

    answer = console.post(path, data={**form, "csrf": "stale"})

    assert answer.status_code == 403
    assert "CSRF token" in answer.text
    assert me(console).json()["name"] == LOCAL_ADMIN[0]


def test_a_cookie_api_action_needs_the_sessions_csrf_token(console: TestClient) -> None:
    assert local_sign_in(console, *LOCAL_OPERATOR).status_code == 303

    missing = console.post("/api/v1/exceptions/actions", json=NONSENSE_ACTION)
    wrong = console.post(
        "/api/v1/exceptions/actions", json=NONSENSE_ACTION, headers={"X-CSRF-Token": "stale"}
    )
    right = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"X-CSRF-Token": session_csrf(console)},
    )

    for refused in (missing, wrong):
        assert refused.status_code == 403
        assert "CSRF token" in refused.json()["detail"]
    assert right.status_code == 409, right.text  # past the checks, to the desk's refusal


def test_a_post_from_another_site_is_refused_whatever_it_carries(console: TestClient) -> None:
    signing_in = local_sign_in(console, *LOCAL_OPERATOR, origin=EVIL_ORIGIN)
    assert signing_in.status_code == 403
    assert "cross-site request refused" in signing_in.text
    assert_signed_out(console)

    assert local_sign_in(console, *LOCAL_OPERATOR, origin=PUBLIC_URL).status_code == 303
    token = session_csrf(console)
    foreign = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"X-CSRF-Token": token, "origin": EVIL_ORIGIN},
    )
    ours = console.post(
        "/api/v1/exceptions/actions",
        json=NONSENSE_ACTION,
        headers={"X-CSRF-Token": token, "origin": PUBLIC_URL},
    )
    assert foreign.status_code == 403
    assert foreign.json()["detail"] == "cross-site request refused"
    assert ours.status_code == 409


# --- headers and the session cookie -------------------------------------------------------------


def test_every_answer_carries_the_security_headers(
    console: TestClient, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    answers = {
        "sign-in page": console.get("/login"),
        "redirect to sign in": console.get("/exceptions"),
        "API refusal": console.get("/api/v1/me"),
        "not found": console.get("/no-such-page"),
        "health": console.get("/healthz"),
        "metrics": console.get("/metrics"),
        "API description": console.get("/api/openapi.json"),
        "stylesheet": console.get("/static/console.css"),
        "CSRF refusal": console.post("/login", data={"csrf": "x", "name": "a", "password": "b"}),
        "signed in": local_sign_in(console, *LOCAL_OPERATOR),
        "bearer": me(console, authorization=f"Bearer {bearer(idp_http, idp, VIEWER_BOT)}"),
    }

    for what, answer in answers.items():
        headers = answer.headers
        policy = headers.get("content-security-policy", "")
        assert "default-src 'none'" in policy, what
        assert "frame-ancestors 'none'" in policy, what
        assert "form-action 'self'" in policy, what
        assert headers.get("x-frame-options") == "DENY", what
        assert headers.get("x-content-type-options") == "nosniff", what
        assert headers.get("referrer-policy") == "no-referrer", what
        assert "strict-transport-security" not in headers, what
        if what == "stylesheet":
            assert headers.get("cache-control") != "no-store", what
        else:
            assert headers.get("cache-control") == "no-store", what


def test_the_session_cookie_is_http_only_and_same_site_but_not_secure_over_http(
    console: TestClient,
) -> None:
    for answer in (console.get("/login"), local_sign_in(console, *LOCAL_OPERATOR)):
        attributes = cookie_attributes(answer)
        assert "httponly" in attributes
        assert attributes["samesite"] == "lax"
        assert attributes["path"] == "/"
        assert "secure" not in attributes


def test_behind_an_https_url_the_cookie_is_secure_and_hsts_is_sent(
    open_console: OpenConsole, idp: IdentityProvider, idp_http: httpx.Client
) -> None:
    console = open_console(SECURE_URL)

    page = console.get("/login")
    signed_in = local_sign_in(console, *LOCAL_OPERATOR, origin=SECURE_URL)

    for answer in (page, signed_in):
        attributes = cookie_attributes(answer)
        assert {"httponly", "secure"} <= attributes.keys()
        assert attributes["samesite"] == "lax"
        assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert me(console).json()["via"] == "local"
    # The provider's sign-in comes back to the https address too.
    console.cookies.clear()
    answer = oidc_sign_in(console, idp, idp_http, VIEWER)
    assert answer.status_code == 303, answer.text
    assert "secure" in cookie_attributes(answer)
    assert me(console).json()["name"] == VIEWER
