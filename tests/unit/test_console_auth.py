"""The console's sign-in rules without a server: scrypt password hashes, the local accounts
file, the lockout after ten failures, the provider's role map, and the CSRF token helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from revsync.console.auth import (
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    Account,
    LocalAccounts,
    OidcClient,
    OidcConfig,
    Principal,
    Role,
    check_password,
    csrf_token,
    hash_password,
    parse_role_map,
    same_token,
)
from revsync.oidc import SignInRefused

PASSWORD = "a-long-operator-password"
HASH = hash_password(PASSWORD)
"""Hashed once: scrypt is slow on purpose."""
LOCKOUT_FAILURES = 10
LOCKOUT_S = 300.0


class FakeClock:
    """Seconds, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accounts(clock: FakeClock) -> LocalAccounts:
    return LocalAccounts(
        [Account("olivia", Role.OPERATOR, HASH), Account("victor", Role.VIEWER, HASH)],
        clock=clock,
    )


def fail(accounts: LocalAccounts, name: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(SignInRefused, match="wrong name or password"):
            accounts.sign_in(name, "not the password")


# --- password hashes -------------------------------------------------------------------------


def test_a_hash_names_scrypt_and_its_parameters_and_is_salted() -> None:
    scheme, n, r, p, salt, digest = HASH.split("$")

    assert (scheme, int(n), int(r), int(p)) == ("scrypt", SCRYPT_N, SCRYPT_R, SCRYPT_P)
    assert PASSWORD not in HASH
    assert hash_password(PASSWORD) != HASH
    assert (salt, digest) != ("", "")


def test_the_right_password_matches_its_hash_and_a_wrong_one_does_not() -> None:
    assert check_password(PASSWORD, HASH)
    assert not check_password(PASSWORD + "x", HASH)
    assert not check_password("", HASH)
    assert not check_password(PASSWORD, hash_password("another-long-password"))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not a hash",
        "bcrypt" + HASH.removeprefix("scrypt"),
        HASH + "$extra",
        HASH.rsplit("$", 1)[0],
        "scrypt$16384$8$1$!!not base64!!$AAAA",
        "scrypt$16384$8$1$AAAA$",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$12345$8$1$AAAA$AAAA",
        "scrypt$-16384$8$1$AAAA$AAAA",
        "scrypt$" + "9" * 40 + "$8$1$AAAA$AAAA",
        "scrypt$1048576$8$1$AAAA$AAAA",
    ],
    ids=[
        "empty",
        "text",
        "another scheme",
        "a part too many",
        "a part missing",
        "salt not base64",
        "empty digest",
        "N not a number",
        "N not a power of two",
        "negative N",
        "N past any integer",
        "N past the memory limit",
    ],
)
def test_a_malformed_hash_matches_no_password_and_raises_nothing(stored: str) -> None:
    assert check_password(PASSWORD, stored) is False


# --- the local accounts file -------------------------------------------------------------------


def write(path: Path, document: object) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def test_accounts_load_from_the_file_each_with_its_role(tmp_path: Path) -> None:
    path = write(
        tmp_path / "users.yaml",
        {
            "users": [
                {"name": "olivia", "role": "operator", "password_hash": HASH},
                {"name": "ada", "role": "Admin", "password_hash": HASH},
            ]
        },
    )

    loaded = LocalAccounts.load(path)

    assert loaded.sign_in("olivia", PASSWORD) == Principal("olivia", Role.OPERATOR, "local")
    assert loaded.sign_in("ada", PASSWORD) == Principal("ada", Role.ADMIN, "local")


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("users: [", "not readable as YAML"),
        ("- name: olivia\n", "needs users: a list"),
        ("just some text\n", "needs users: a list"),
        ({"users": {"olivia": HASH}}, "needs users: a list"),
        ({"users": 5}, "needs users: a list"),
        ({"users": ["olivia"]}, r"users\[0\]: needs name, role and password_hash"),
        ({"users": [{"role": "viewer", "password_hash": HASH}]}, r"users\[0\]: needs name"),
        (
            {"users": [{"name": "olivia", "role": "viewer"}]},
            r"users\[0\]: password_hash is not an scrypt hash",
        ),
        (
            {"users": [{"name": "olivia", "role": "viewer", "password_hash": "hunter2"}]},
            r"users\[0\]: password_hash is not an scrypt hash",
        ),
        (
            {"users": [{"name": "olivia", "role": "viewer", "password": PASSWORD}]},
            r"users\[0\]: a plain password",
        ),
        (
            {
                "users": [
                    {"name": "olivia", "role": "viewer", "password_hash": HASH},
                    {"name": "mallory", "role": "superuser", "password_hash": HASH},
                ]
            },
            r"users\[1\]: no role 'superuser'; roles are viewer, operator, admin",
        ),
        (
            {"users": [{"name": "olivia", "password_hash": HASH}]},
            r"users\[0\]: no role ''",
        ),
    ],
    ids=[
        "bad YAML",
        "a list, not a mapping",
        "plain text",
        "users a mapping",
        "users a number",
        "an entry not a mapping",
        "no name",
        "no hash",
        "a hash not scrypt",
        "a plain password",
        "an unknown role",
        "no role",
    ],
)
def test_a_bad_accounts_file_is_refused_naming_the_file_and_the_entry(
    tmp_path: Path, document: object, says: str
) -> None:
    path = write(tmp_path / "users.yaml", document)

    with pytest.raises(ValueError, match=says) as refused:
        LocalAccounts.load(path)

    assert str(refused.value).startswith(f"{path}: ")
    assert PASSWORD not in str(refused.value)


def test_a_missing_accounts_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ValueError, match=f"{path}: not readable as YAML"):
        LocalAccounts.load(path)


# --- signing in and the lockout ----------------------------------------------------------------


def test_a_wrong_password_or_an_unknown_name_is_refused_alike() -> None:
    signed = accounts(FakeClock())

    with pytest.raises(SignInRefused, match=r"^wrong name or password$"):
        signed.sign_in("olivia", "not the password")
    with pytest.raises(SignInRefused, match=r"^wrong name or password$"):
        signed.sign_in("nobody", PASSWORD)
    assert signed.sign_in("victor", PASSWORD) == Principal("victor", Role.VIEWER, "local")


def test_nine_failures_still_let_the_right_password_in() -> None:
    signed = accounts(FakeClock())

    fail(signed, "olivia", LOCKOUT_FAILURES - 1)

    assert signed.sign_in("olivia", PASSWORD).role is Role.OPERATOR


def test_ten_failures_lock_the_name_for_five_minutes_whatever_the_password() -> None:
    clock = FakeClock()
    signed = accounts(clock)
    locked_at = clock.now
    fail(signed, "olivia", LOCKOUT_FAILURES)

    for later in (0.0, 60.0, LOCKOUT_S - 1):
        clock.now = locked_at + later
        with pytest.raises(SignInRefused, match="too many failed sign-ins"):
            signed.sign_in("olivia", PASSWORD)
    # Another name is not locked with it.
    assert signed.sign_in("victor", PASSWORD).name == "victor"

    clock.now = locked_at + LOCKOUT_S + 1
    assert signed.sign_in("olivia", PASSWORD) == Principal("olivia", Role.OPERATOR, "local")


def test_failures_older_than_five_minutes_do_not_count_towards_the_lockout() -> None:
    clock = FakeClock()
    signed = accounts(clock)
    fail(signed, "olivia", LOCKOUT_FAILURES - 1)

    clock.now += LOCKOUT_S + 1
    fail(signed, "olivia", 1)

    assert signed.sign_in("olivia", PASSWORD).name == "olivia"


def test_an_unknown_name_locks_as_a_known_one_does() -> None:
    """So the lockout does not tell which names exist."""
    signed = accounts(FakeClock())

    fail(signed, "nobody", LOCKOUT_FAILURES)

    with pytest.raises(SignInRefused, match="too many failed sign-ins"):
        signed.sign_in("nobody", PASSWORD)


def test_names_tried_at_random_are_forgotten_but_a_lockout_is_not() -> None:
    clock = FakeClock()
    signed = LocalAccounts([Account("olivia", Role.OPERATOR, HASH)], clock=clock, tracked_names=3)
    fail(signed, "olivia", LOCKOUT_FAILURES)
    fail(signed, "guess-1", 1)
    fail(signed, "guess-2", 1)
    clock.now += 60
    fail(signed, "guess-3", 1)  # over the limit, but every name is recent: all kept

    with pytest.raises(SignInRefused, match="too many failed sign-ins"):
        signed.sign_in("olivia", PASSWORD)
    clock.now += LOCKOUT_S - 30
    fail(signed, "guess-4", 1)  # the first ones are quiet now, and forgotten

    assert sorted(signed._failures) == ["guess-3", "guess-4"]
    assert signed.sign_in("olivia", PASSWORD).name == "olivia"


# --- roles and the provider's role map -----------------------------------------------------------


def test_each_role_may_do_what_the_ones_below_it_may() -> None:
    operator = Principal("olivia", Role.OPERATOR, "oidc")

    assert operator.may(Role.VIEWER)
    assert operator.may(Role.OPERATOR)
    assert not operator.may(Role.ADMIN)
    assert Role.named(" Admin ") is Role.ADMIN
    assert Role.ADMIN.label == "admin"
    with pytest.raises(ValueError, match="no role 'root'"):
        Role.named("root")


def test_the_role_map_reads_provider_roles_to_console_roles() -> None:
    mapped = parse_role_map(" revsync-ops = operator,revsync-admins=ADMIN ,, readers=viewer")

    assert mapped == {
        "revsync-ops": Role.OPERATOR,
        "revsync-admins": Role.ADMIN,
        "readers": Role.VIEWER,
    }
    assert parse_role_map("") == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("revsync-ops", "write <provider role>=<console role>"),
        ("=operator", "write <provider role>=<console role>"),
        ("revsync-ops=", "write <provider role>=<console role>"),
        ("revsync-ops=root", "no role 'root'"),
    ],
)
def test_a_malformed_role_map_is_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_role_map(text)


# --- CSRF tokens ---------------------------------------------------------------------------------


def test_csrf_tokens_are_long_random_and_url_safe() -> None:
    tokens = {csrf_token() for _ in range(100)}

    assert len(tokens) == 100
    for token in tokens:
        assert len(token) >= 43
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_only_the_same_token_matches() -> None:
    kept = csrf_token()

    assert same_token(kept, kept)
    assert not same_token(csrf_token(), kept)
    assert not same_token(kept[:-1], kept)
    assert not same_token(None, kept)
    assert not same_token("", kept)
    assert not same_token(kept, None)
    assert not same_token("", "")


def test_a_token_with_characters_outside_ascii_is_refused_not_an_error() -> None:
    """hmac.compare_digest raises TypeError on such a str: a forged form answered 500."""
    kept = csrf_token()

    assert not same_token("é" + kept[1:], kept)
    assert not same_token(kept, "ü" * len(kept))


@pytest.mark.parametrize(
    ("claim", "role"),
    [
        (["revsync-operators", "staff"], Role.OPERATOR),
        ("revsync-viewers revsync-operators", Role.OPERATOR),
        (5, None),
        ({"revsync-operators": True}, None),
        ([["revsync-operators"], 7], None),
        (None, None),
    ],
    ids=["list", "space-separated", "a number", "an object", "not names", "missing"],
)
def test_a_roles_claim_grants_only_the_mapped_names_it_lists(claim: Any, role: Role | None) -> None:
    """A claim of another shape grants nothing (and is no server error)."""
    config = OidcConfig(
        issuer="https://idp.example.com",
        client_id="revsync-console",
        client_secret=None,
        redirect_uri="https://console.example.com/auth/callback",
        roles_claim="roles",
        role_map=parse_role_map("revsync-viewers=viewer,revsync-operators=operator"),
        audience="revsync",
    )
    with httpx.Client() as http:
        client = OidcClient(config, http)
        claims = {"sub": "u1", "preferred_username": "olivia", "roles": claim}
        if role is None:
            with pytest.raises(SignInRefused, match="no revsync role"):
                client._principal(claims, "oidc")
        else:
            assert client._principal(claims, "oidc").role is role
