"""Every action taken in the exception console is in the audit trail under the name of whoever
took it, however they signed in: an admin's resume of a tripped circuit breaker (a local
account), an operator's tag and its preview through the pages and a resolve through the API
(signed in through the identity provider), a program's assignment and its dry run (a bearer
access token). What a role may not do is refused and leaves no line.

The console app runs in process (Starlette's test client) on the stack's PostgreSQL, over the
runtime world's catalog (consumers no other test has), with the identity provider sandbox on
loopback. People and programs have names of this run's own, so the trail is read by name on a
shared database.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastapi.testclient import TestClient
from sandbox.idp import IdentityProvider
from test_console_signin import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    IDP_PASSWORD,
    LOCAL_HASH,
    LOCAL_OPERATOR,
    PUBLIC_URL,
    ROLE_MAP,
    bearer,
    csrf_of,
    local_sign_in,
    me,
    oidc_sign_in,
)

from revsync.console.app import ConsoleConfig, create_app
from revsync.console.auth import (
    Account,
    LocalAccounts,
    OidcClient,
    OidcConfig,
    Role,
    parse_role_map,
)
from revsync.contracts.catalog import CircuitBreakerSpec
from revsync.contracts.events import DuplicateCustomerSuspected
from revsync.deployables import input_decoder
from revsync.ops import exceptions as ex
from revsync.ops.ledger import Actor
from revsync.ops.operations import Operations
from revsync.runtime.breaker import CircuitBreaker
from revsync.runtime.journey import Journal, JourneyBatch
from revsync.security import kafka_identity
from revsync.settings import Settings
from runtime_support import RuntimeWorld
from samples import sample_envelope, sample_event

pytestmark = pytest.mark.integration

LOCAL_PASSWORD = LOCAL_OPERATOR[1]
"""The local accounts' password (``LOCAL_HASH`` is its hash)."""
PROGRAM_SECRET = "a-program-secret"
ACTIONS = "/api/v1/exceptions/actions"


@dataclass(frozen=True)
class People:
    """Who signs in, each under a name of this run's own."""

    admin: str
    """A local account, admin."""
    operator: str
    """A local account, operator."""
    person: str
    """In the identity provider, an operator."""
    program: str
    """A client of the identity provider, an operator."""
    reader: str
    """A client of the identity provider, a viewer."""


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture
def people(idp: IdentityProvider) -> People:
    run = uuid.uuid4().hex[:8]
    names = People(
        f"ada-{run}", f"lena-{run}", f"oona-{run}", f"ops-bot-{run}", f"reports-bot-{run}"
    )
    idp.reset()
    idp.add_client(CLIENT_ID, CLIENT_SECRET, redirect_uris=[f"{PUBLIC_URL}/auth/callback"])
    idp.add_user(names.person, IDP_PASSWORD, roles=["revsync-viewers", "revsync-operators"])
    idp.add_client(names.program, PROGRAM_SECRET, roles=["revsync-operators"])
    idp.add_client(names.reader, PROGRAM_SECRET, roles=["revsync-viewers"])
    return names


@pytest.fixture
def idp_http() -> Iterator[httpx.Client]:
    """The browser's side of the provider: its sign-in form."""
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        yield client


@pytest.fixture
def console(world: RuntimeWorld, idp: IdentityProvider, people: People) -> Iterator[TestClient]:
    """The console over the world's catalog, its actions taken by the operators' tooling for
    the person signed in, as ``revsync console`` wires it."""
    settings = world.settings
    dsn = settings.postgres_dsn.get_secret_value()
    registry = SchemaRegistryClient(settings.registry_config())
    decoder = input_decoder(world.catalog, world.serde())
    principal = kafka_identity(settings.kafka_config())

    def operations(name: str) -> Operations:
        return Operations(
            catalog=world.catalog,
            kafka_config=settings.kafka_config(),
            dsn=dsn,
            decoder=decoder,
            registry=registry,
            actor=Actor(name, principal),
        )

    with ExitStack() as opened:
        oidc = OidcClient(
            OidcConfig(
                issuer=idp.issuer,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                redirect_uri=f"{PUBLIC_URL}/auth/callback",
                roles_claim="roles",
                role_map=parse_role_map(ROLE_MAP),
                audience=AUDIENCE,
            ),
            opened.enter_context(httpx.Client(timeout=10)),
        )
        config = ConsoleConfig(
            catalog=world.catalog,
            kafka_config=settings.kafka_config(),
            dsn=dsn,
            operations=operations,
            session_secret="a-session-secret-for-these-tests-only-0123456789",
            public_url=PUBLIC_URL,
            accounts=LocalAccounts(
                [
                    Account(people.admin, Role.ADMIN, LOCAL_HASH),
                    Account(people.operator, Role.OPERATOR, LOCAL_HASH),
                ]
            ),
            oidc=oidc,
            stage_ages=ex.DEFAULT_STAGE_AGES,
            mask_fields=frozenset(),
        )
        client = TestClient(create_app(config), base_url=PUBLIC_URL, follow_redirects=False)
        yield opened.enter_context(client)


# --- what the tests read and set up -----------------------------------------------------------


def trail(settings: Settings, actor: str) -> list[tuple[str, dict[str, Any], int, str]]:
    """The audit trail's lines under ``actor``: (action, selection, count, outcome)."""
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        rows = connection.execute(
            "SELECT action, filter, count, outcome FROM revsync_audit WHERE actor = %s ORDER BY id",
            (actor,),
        ).fetchall()
    return [(action, selection, count, outcome) for action, selection, count, outcome in rows]


def open_duplicate(world: RuntimeWorld) -> tuple[str, str]:
    """A steward's exception opened as customer-sync opens one (its journey written in a
    batch's transaction): its ref and its account."""
    account = f"001{uuid.uuid4().hex[:15].upper()}"
    consumer = world.catalog.consumer_of("customer_sync")
    journal = Journal(consumer, lambda: datetime.now(UTC))
    event = sample_event(
        DuplicateCustomerSuspected,
        crm_account_id=account,
        envelope=sample_envelope(DuplicateCustomerSuspected.event_type),
    )
    batch = JourneyBatch()
    journal.emitted(batch, event, world.catalog.topic_for(event.schema_name).name)
    dsn = world.settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        journal.write(cursor, batch, [])
    with psycopg.connect(dsn) as connection:
        (found,) = ex.worklist(
            connection,
            ex.Filters(order=account, consumers=frozenset({consumer})),
            ex.DEFAULT_STAGE_AGES,
            limit=5,
            offset=0,
        ).items
    return found.ref, account


def consumer_row(page: str, consumer: str) -> str:
    """The Consumers page's row of ``consumer``."""
    found = re.search(rf'<tr data-consumer="{re.escape(consumer)}">(.*?)</tr>', page, re.S)
    assert found is not None, page
    return found[1]


# --- resume: an admin, signed in with a local account ----------------------------------------


def test_an_admins_resume_of_a_tripped_breaker_is_audited_under_the_admins_name(
    world: RuntimeWorld, console: TestClient, people: People
) -> None:
    # The consumer's breaker trips on its third dead letter in a row, and the batch saves it.
    breaker = CircuitBreaker(
        world.consumer,
        CircuitBreakerSpec(window=100, consecutive_dead_letters=3, cool_down=3_600_000),
    )
    assert [breaker.observe(dead_lettered=True) for _ in range(3)] == [False, False, True]
    dsn = world.settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as connection:
        breaker.save(connection)

    # An operator sees the open breaker, without a way to resume it; posted anyway, refused.
    assert local_sign_in(console, people.operator, LOCAL_PASSWORD).status_code == 303
    page = console.get("/consumers")
    assert page.status_code == 200, page.text
    row = consumer_row(page.text, world.consumer)
    assert "3 records in a row were dead-lettered" in row
    assert "/resume" not in row
    refused = console.post(f"/consumers/{world.consumer}/resume", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403
    assert "needs the admin role; you are operator" in refused.text

    # The admin resumes it with the page's own form.
    console.cookies.clear()
    assert local_sign_in(console, people.admin, LOCAL_PASSWORD).status_code == 303
    row = consumer_row(console.get("/consumers").text, world.consumer)
    form = re.search(r'action="([^"]+)"><input type="hidden" name="csrf" value="([^"]+)"', row)
    assert form is not None, row
    action, token = form[1], form[2]
    assert action == f"/consumers/{world.consumer}/resume"
    resumed = console.post(action, data={"csrf": token})
    assert resumed.status_code == 303, resumed.text
    assert resumed.headers["location"] == "/consumers"
    assert f"{world.consumer}: circuit breaker closed." in console.get("/consumers").text

    # The consumer's breaker follows the resume: closed, its row gone.
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert connection.execute(
            "SELECT resumed_by FROM revsync_circuit_breakers WHERE consumer = %s",
            (world.consumer,),
        ).fetchall() == [(people.admin,)]
        assert breaker.check(connection)
        assert not breaker.is_open
        assert (
            connection.execute(
                "SELECT 1 FROM revsync_circuit_breakers WHERE consumer = %s", (world.consumer,)
            ).fetchall()
            == []
        )

    # Nothing is open now: a second resume is refused and writes nothing.
    again = console.post(action, data={"csrf": token})
    assert again.status_code == 409
    assert f"{world.consumer}'s circuit breaker is not open" in html.unescape(again.text)

    assert trail(world.settings, people.admin) == [
        ("resume consumer", {"consumer": world.consumer}, 1, "resumed")
    ]
    assert trail(world.settings, people.operator) == []


# --- a person signed in through the identity provider ----------------------------------------


def test_an_operator_signed_in_with_the_provider_acts_under_their_provider_name(
    world: RuntimeWorld,
    console: TestClient,
    idp: IdentityProvider,
    idp_http: httpx.Client,
    people: People,
) -> None:
    ref, account = open_duplicate(world)
    assert oidc_sign_in(console, idp, idp_http, people.person).status_code == 303
    assert me(console).json() == {"name": people.person, "role": "operator", "via": "oidc"}

    # Through the pages, as a browser does: the worklist, the preview, the action.
    page = console.get("/exceptions", params={"order": account})
    assert page.status_code == 200, page.text
    assert f'data-ref="{ref}"' in page.text
    form = {"csrf": csrf_of(page), "action": "tag", "refs": ref, "value": "steward"}
    preview = console.post("/exceptions/preview", data=form)
    assert preview.status_code == 200, preview.text
    assert "tag steward" in preview.text
    acted = console.post("/exceptions/act", data={**form, "back": f"/exceptions?order={account}"})
    assert acted.status_code == 303, acted.text
    assert console.get(f"/api/v1/exceptions/{ref}").json()["tags"] == ["steward"]
    # Through the API with the session's cookie and its CSRF token.
    resolved = console.post(
        ACTIONS,
        json={"action": "resolve", "refs": [ref], "value": "linked in the ERP"},
        headers={"X-CSRF-Token": csrf_of(console.get("/exceptions"))},
    )
    assert resolved.status_code == 200, resolved.text
    item = console.get(f"/api/v1/exceptions/{ref}").json()
    assert (item["status"], item["resolved_by"], item["resolution"]) == (
        "resolved",
        people.person,
        "linked in the ERP",
    )

    assert trail(world.settings, people.person) == [
        ("tag exceptions dry run", {"refs": [ref], "value": "steward"}, 1, "read"),
        ("tag exceptions", {"refs": [ref], "value": "steward"}, 1, "tag done"),
        ("resolve exceptions", {"refs": [ref], "value": "linked in the ERP"}, 1, "resolve done"),
    ]


# --- a program with a bearer access token ------------------------------------------------------


def test_a_program_with_a_bearer_token_acts_under_its_client_name(
    world: RuntimeWorld,
    console: TestClient,
    idp: IdentityProvider,
    idp_http: httpx.Client,
    people: People,
) -> None:
    ref, _ = open_duplicate(world)
    token = bearer(idp_http, idp, (people.program, PROGRAM_SECRET))
    headers = {"authorization": f"Bearer {token}"}
    assert me(console, **headers).json() == {
        "name": people.program,
        "role": "operator",
        "via": "bearer",
    }

    body = {"action": "assign", "refs": [ref], "value": "sam"}
    planned = console.post(ACTIONS, json={**body, "dry_run": True}, headers=headers)
    done = console.post(ACTIONS, json=body, headers=headers)

    for answer in (planned, done):
        assert answer.status_code == 200, answer.text
        assert answer.json()["effects"] == [
            {"ref": ref, "change": "assign to sam", "why_not": None}
        ]
    assert console.get(f"/api/v1/exceptions/{ref}", headers=headers).json()["assignee"] == "sam"
    assert trail(world.settings, people.program) == [
        ("assign exceptions dry run", {"refs": [ref], "value": "sam"}, 1, "read"),
        ("assign exceptions", {"refs": [ref], "value": "sam"}, 1, "assign done"),
    ]

    # A viewer's program may not act: refused before the desk, no line in the trail.
    reader = bearer(idp_http, idp, (people.reader, PROGRAM_SECRET))
    refused = console.post(
        ACTIONS,
        json={"action": "assign", "refs": [ref], "value": "eve"},
        headers={"authorization": f"Bearer {reader}"},
    )
    assert refused.status_code == 403
    assert console.get(f"/api/v1/exceptions/{ref}", headers=headers).json()["assignee"] == "sam"
    assert trail(world.settings, people.reader) == []
