"""NetSuite's M2M session without a server: the client assertion it signs, the access token
reused across calls and threads and replaced before it expires, and a refused grant."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from revsync.connectors.http import BoundedClient
from revsync.connectors.netsuite_auth import (
    ASSERTION_TYPE,
    NetSuiteAuthFailed,
    NetSuiteSession,
    signing_key,
)
from revsync.errors import ErrorClass, TransientError, classify

pytestmark = pytest.mark.unit

TOKEN_URL = "https://1234567-sb1.suitetalk.api.netsuite.com/services/rest/auth/oauth2/v1/token"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return str(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode())


class FakeTokenEndpoint:
    """Answers each token request with the next of ``answers``, recording the forms."""

    def __init__(self, *answers: tuple[int, Mapping[str, Any]]) -> None:
        self.answers = list(answers)
        self.forms: list[dict[str, str]] = []

    def request(self, method: str, url: str, *, data: Mapping[str, str]) -> httpx.Response:
        assert (method, url) == ("POST", TOKEN_URL)
        self.forms.append(dict(data))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx.Response(status, json=body, request=httpx.Request(method, url))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_session(
    endpoint: FakeTokenEndpoint, clock: Clock | None = None, **options: Any
) -> NetSuiteSession:
    return NetSuiteSession(
        cast(BoundedClient, endpoint),
        TOKEN_URL,
        "client-1",
        "cert-1",
        RSA_KEY,
        clock=clock or Clock(),
        wall_clock=lambda: 1_800_000_000.0,
        **options,
    )


def granted(token: str, expires_in: str = "3600") -> tuple[int, dict[str, str]]:
    return 200, {"access_token": token, "expires_in": expires_in, "token_type": "bearer"}


def test_the_assertion_is_a_jwt_netsuite_verifies_with_the_certificate() -> None:
    endpoint = FakeTokenEndpoint(granted("t-1"))

    a_session(endpoint, assertion_lifetime_s=600).token()

    [form] = endpoint.forms
    assert (form["grant_type"], form["client_assertion_type"]) == (
        "client_credentials",
        ASSERTION_TYPE,
    )
    header = jwt.get_unverified_header(form["client_assertion"])
    claims = jwt.decode(
        form["client_assertion"],
        RSA_KEY.public_key(),
        algorithms=["PS256"],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert (header["alg"], header["kid"], header["typ"]) == ("PS256", "cert-1", "JWT")
    assert (claims["iss"], claims["scope"]) == ("client-1", ["rest_webservices"])
    assert (claims["iat"], claims["exp"]) == (1_800_000_000, 1_800_000_600)


def test_the_token_is_reused_until_the_margin_before_it_expires() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(granted("t-1", "3600"), granted("t-2", "3600"))
    session = a_session(endpoint, clock, refresh_margin_s=300)

    first = session.token()
    clock.now += 3299
    still = session.token()
    clock.now += 2
    replaced = session.token()

    assert (first, still, replaced) == ("t-1", "t-1", "t-2")
    assert len(endpoint.forms) == 2


def test_threads_share_one_token() -> None:
    endpoint = FakeTokenEndpoint(granted("t-1"))
    session = a_session(endpoint)

    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: session.token(), range(32)))

    assert tokens == {"t-1"}
    assert len(endpoint.forms) == 1


def test_a_refresh_of_a_token_another_thread_replaced_keeps_the_new_one() -> None:
    endpoint = FakeTokenEndpoint(granted("t-1"), granted("t-2"), granted("t-3"))
    session = a_session(endpoint)
    stale = session.token()

    fresh = session.refresh(stale)
    again = session.refresh(stale)

    assert (fresh, again) == ("t-2", "t-2")
    assert len(endpoint.forms) == 2


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "secret detail"},
            NetSuiteAuthFailed,
        ),
        (400, {"error": "invalid_grant"}, NetSuiteAuthFailed),
        (200, {"token_type": "bearer"}, NetSuiteAuthFailed),
        (503, {}, TransientError),
    ],
)
def test_a_refused_grant_is_transient_and_names_the_error_not_its_description(
    status: int, body: dict[str, str], kind: type[Exception]
) -> None:
    with pytest.raises(kind) as refused:
        a_session(FakeTokenEndpoint((status, body))).token()

    assert classify(refused.value) is ErrorClass.TRANSIENT
    assert "secret detail" not in str(refused.value)
    if body.get("error"):
        assert body["error"] in str(refused.value)


def test_an_assertion_lifetime_over_60_minutes_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="assertion_lifetime_s"):
        a_session(FakeTokenEndpoint(granted("t")), assertion_lifetime_s=3601)


def test_the_signing_key_must_fit_the_algorithm() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other_curve = ec.generate_private_key(ec.SECP384R1())

    assert isinstance(signing_key(pem(RSA_KEY), "PS256"), rsa.RSAPrivateKey)
    assert isinstance(signing_key(pem(ec_key), "ES256"), ec.EllipticCurvePrivateKey)
    with pytest.raises(ValueError, match="RSA"):
        signing_key(pem(ec_key), "PS256")
    assert isinstance(signing_key(pem(other_curve), "ES384"), ec.EllipticCurvePrivateKey)
    assert isinstance(signing_key(pem(RSA_KEY), "PS512"), rsa.RSAPrivateKey)
    with pytest.raises(ValueError, match="secp256r1"):
        signing_key(pem(RSA_KEY), "ES256")
    with pytest.raises(ValueError, match="secp256r1"):
        signing_key(pem(other_curve), "ES256")
    with pytest.raises(ValueError, match="secp521r1"):
        signing_key(pem(other_curve), "ES512")
    with pytest.raises(ValueError, match="algorithm"):
        signing_key(pem(RSA_KEY), "HS256")
    with pytest.raises(ValueError, match="not an unencrypted PEM") as refused:
        signing_key("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----", "PS256")
    assert "nope" not in str(refused.value)


def test_an_es256_session_signs_with_its_ec_key() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    endpoint = FakeTokenEndpoint(granted("t-1"))
    session = NetSuiteSession(
        cast(BoundedClient, endpoint), TOKEN_URL, "client-1", "cert-ec", ec_key, algorithm="ES256"
    )

    session.token()

    assertion = endpoint.forms[0]["client_assertion"]
    claims = jwt.decode(assertion, ec_key.public_key(), algorithms=["ES256"], audience=TOKEN_URL)
    assert (jwt.get_unverified_header(assertion)["kid"], claims["iss"]) == ("cert-ec", "client-1")
