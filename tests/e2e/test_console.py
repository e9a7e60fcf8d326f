"""The exception console in a real browser (Debian's Chromium, driven by Playwright) over the
whole pipeline: an operator finds an order rejected for a pricing mismatch, an order the ERP
refused in the dead letters and a poison change event; fixes the price in the CRM and the ERP,
retries both and discards the poison; sees them resolved and the orders shipped on their
timelines. A viewer sees the same and can act on nothing, in the pages or the API. Every
action is in the audit trail under the person who signed in.

Screenshots go to ``$CONSOLE_SCREENSHOTS`` when set (the README's), else the test's
own folder.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sandbox import scenario
from sandbox.crm.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sandbox.harness import Pipeline

from revsync.contracts.catalog import TopicFormat
from revsync.settings import Settings
from runtime_support import wait_for

CHROMIUM = Path("/usr/bin/chromium")
# As this machine runs Chromium headless: no sandbox (root), and none of its background
# connections to Google's services, which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTHING = "\u2013"
"""What the order page shows for an identity not known yet."""
OPERATOR = ("olivia", "operator", "a-long-operator-password")
VIEWER = ("victor", "viewer", "a-long-viewer-password")


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: make install puts it there")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Page, str], None]:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shot


def sign_in(browser: Browser, url: str, name: str, password: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/exceptions")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("who")).to_contain_text(name)
    return page


def fix_prices(pipeline: Pipeline, data: scenario.MasterData, order_id: str) -> None:
    """The sales rep's fix: each line at the price book's price, through the CRM's API."""
    order = pipeline.crm.records("Order", Id=order_id)[0]
    entity = next(e for e in scenario.ENTITIES if e.code == order["Legal_Entity__c"])
    token = httpx.post(
        f"{pipeline.crm_url}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
    ).json()["access_token"]
    for item in pipeline.crm.records("OrderItem", OrderId=order_id):
        price = scenario.list_price(data.prices[item["SKU__c"]], entity)
        total = Decimal(str(item["Quantity"])) * price
        answer = httpx.patch(
            f"{pipeline.crm_url}/services/data/v62.0/sobjects/OrderItem/{item['Id']}",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "UnitPrice": float(price),
                "Discount__c": 0,
                "Tax__c": float((total * scenario.TAX_RATE).quantize(scenario.CENT)),
            },
        )
        assert answer.status_code == 204, answer.text


def worklist(url: str, cookies: httpx.Cookies, **filters: Any) -> dict[str, Any]:
    answer = httpx.get(f"{url}/api/v1/exceptions", params=filters, cookies=cookies)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def api_session(url: str, name: str, password: str) -> tuple[httpx.Cookies, str]:
    """A signed-in session for the JSON API, and its CSRF token."""
    with httpx.Client(base_url=url) as client:
        form = client.get("/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        assert token is not None
        answer = client.post(
            "/login", data={"csrf": token[1], "name": name, "password": password, "next": "/"}
        )
        assert answer.status_code == 303, answer.text
        page = client.get("/exceptions").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        return client.cookies, csrf[1]


def test_an_operator_fixes_and_retries_in_the_browser_and_a_viewer_only_looks(
    start_pipeline: Callable[..., Pipeline],
    rng: random.Random,
    settings: Settings,
    browser: Browser,
    shots: Callable[[Page, str], None],
) -> None:
    pipeline = start_pipeline()
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    url = pipeline.start_console(
        {name: (role, password) for name, role, password in (OPERATOR, VIEWER)}
    )
    good = list(scenario.orders(data, 3, rng, invalid_share=0))
    flawed = scenario.orders(data, 200, rng, invalid_share=1)
    mismatch = next(order for order in flawed if order.expected == "PRICING_MISMATCH")
    pipeline.push([*good, mismatch])
    assert pipeline.wait_settled(120).pending == 0
    # The ERP refuses one order's create outright (an answer it never changes its mind on).
    pipeline.erp.set_faults(echo_rate=1)
    refused_id = pipeline.crm.create_orders([good[0].record | {"PoNumber": "PO-REFUSED"}])[0]
    pipeline.planned[refused_id] = scenario.SHIPPED
    # A change event nothing can read.
    tag = uuid.uuid4().hex[:8]
    cdc_topic = next(
        t.name for t in pipeline.catalog.topics if t.format is TopicFormat.SALESFORCE_CDC
    )
    producer = Producer(settings.kafka_config())
    producer.produce(cdc_topic, key=f"801POISON{tag}", value=b'{"payload": {}} trailing bytes')
    assert producer.flush(10) == 0
    cookies, _ = api_session(url, OPERATOR[0], OPERATOR[2])
    # This test's own consumer (the stack's database is shared with other tests).
    consumer = pipeline.catalog.consumer_of("order_sync")
    wait_for(lambda: worklist(url, cookies, consumer=consumer)["total"] >= 3, timeout_s=120)
    pipeline.erp.set_faults(echo_rate=0)
    mismatch_id = next(
        key for key, expected in pipeline.planned.items() if expected == "PRICING_MISMATCH"
    )

    # The operator finds all three in the worklist.
    page = sign_in(browser, url, OPERATOR[0], OPERATOR[2])
    page.goto(f"{url}/exceptions?consumer={consumer}")
    shots(page, "exceptions")
    rows = page.locator("tbody tr[data-ref]")
    expect(rows.filter(has_text="PRICING_MISMATCH")).to_have_count(1)
    expect(rows.filter(has_text="deserialization")).to_have_count(1)
    refused_row = rows.filter(has_text="HTTP 400")
    expect(refused_row).to_have_count(1)
    # Its dead letter, masked as dlt show masks it.
    refused_row.get_by_role("link", name="dead letter").click()
    expect(page.get_by_test_id("payload")).to_contain_text('"street": "***"')
    page.go_back()

    # The fix in the CRM, then retry both: the bulk action says what it will do first.
    fix_prices(pipeline, data, mismatch_id)
    rows.filter(has_text="PRICING_MISMATCH").get_by_role("checkbox").check()
    refused_row.get_by_role("checkbox").check()
    page.get_by_label("Action").select_option("retry")
    page.get_by_role("button", name="Show what it will do").click()
    expect(
        page.get_by_role("cell", name=re.compile("read order .* from the CRM again"))
    ).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile("replay dead letter"))).to_be_visible()
    shots(page, "retry-preview")
    page.get_by_role("button", name="Confirm retry").click()
    expect(page.get_by_role("status")).to_contain_text("retry: done for 2 of 2")

    # The poison is discarded with a note.
    poison = page.locator("tbody tr[data-ref]").filter(has_text="deserialization")
    poison.get_by_role("checkbox").check()
    page.get_by_label("Action").select_option("discard")
    page.get_by_label("Note, assignee or tags").fill("malformed upstream; reported to CRM team")
    page.get_by_role("button", name="Show what it will do").click()
    page.get_by_role("button", name="Confirm discard").click()
    expect(page.get_by_role("status")).to_contain_text("discard: done for 1 of 1")

    # Both fixed orders go all the way; every exception is dealt with.
    pipeline.planned[mismatch_id] = scenario.SHIPPED
    outcome = pipeline.wait_settled(180)
    assert (outcome.pending, outcome.wrong) == (0, [])
    wait_for(lambda: worklist(url, cookies, consumer=consumer)["total"] == 0, timeout_s=120)
    dealt_with = worklist(url, cookies, status="all", consumer=consumer)["items"]
    rejection = next(i for i in dealt_with if i["reason"] == "PRICING_MISMATCH")
    refusal = next(i for i in dealt_with if "HTTP 400" in i["summary"])
    poison_item = next(i for i in dealt_with if i["reason"] == "deserialization")
    assert (rejection["status"], rejection["resolution"]) == ("resolved", "accepted by the ERP")
    assert (refusal["status"], refusal["resolved_by"]) == ("resolved", "revsync")
    assert (poison_item["status"], poison_item["resolved_by"]) == ("discarded", OPERATOR[0])
    page.goto(f"{url}/exceptions?status=all&consumer={consumer}")
    shots(page, "exceptions-resolved")

    for order_id in (mismatch_id, refused_id):
        page.goto(f"{url}/orders/{order_id}")
        for stage in ("activated", "accepted", "invoiced", "shipped"):
            expect(page.locator(f'[data-stage="{stage}"]')).to_have_class("done")
        expect(page.get_by_test_id("erp-order")).not_to_have_text(NOTHING)
    page.goto(f"{url}/orders/{mismatch_id}")
    journey = page.locator("table.journey tbody tr")
    expect(journey.filter(has_text="io.revsync.order.rejected")).to_have_count(1)
    expect(journey.filter(has_text="io.revsync.shipment.confirmed")).to_have_count(1)
    shots(page, "order")
    page.goto(url)
    shots(page, "overview")

    # A viewer sees the same, and can do nothing with it.
    viewing = sign_in(browser, url, VIEWER[0], VIEWER[2])
    viewing.goto(f"{url}/exceptions?status=all&consumer={consumer}")
    expect(viewing.locator("tbody tr[data-ref]").first).to_be_visible()
    expect(viewing.get_by_role("button", name="Show what it will do")).to_have_count(0)
    expect(viewing.get_by_role("link", name="dead letter")).to_have_count(0)
    viewer_cookies, viewer_csrf = api_session(url, VIEWER[0], VIEWER[2])
    refused = httpx.post(
        f"{url}/api/v1/exceptions/actions",
        json={"action": "resolve", "refs": [refusal["ref"]]},
        headers={"X-CSRF-Token": viewer_csrf},
        cookies=viewer_cookies,
    )
    assert refused.status_code == 403
    form = httpx.post(
        f"{url}/exceptions/act",
        data={"csrf": viewer_csrf, "action": "resolve", "refs": refusal["ref"]},
        cookies=viewer_cookies,
    )
    assert form.status_code == 403
    # And the operator's own API call needs its session's CSRF token.
    no_token = httpx.post(
        f"{url}/api/v1/exceptions/actions",
        json={"action": "tag", "refs": [refusal["ref"]], "value": "x"},
        cookies=cookies,
    )
    assert no_token.status_code == 403

    # Everything the operator did is on the audit trail, under their name.
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as connection:
        actions = {
            action
            for (action,) in connection.execute(
                "SELECT action FROM revsync_audit WHERE actor = %s", (OPERATOR[0],)
            )
        }
        by_viewer = connection.execute(
            "SELECT count(*) FROM revsync_audit WHERE actor = %s AND action NOT LIKE '%%read%%' "
            "AND outcome <> 'read'",
            (VIEWER[0],),
        ).fetchone()
    assert {"retry exceptions", "discard exceptions", "replay", "show"} <= actions
    assert {"retry exceptions dry run", "discard exceptions dry run"} <= actions
    assert by_viewer == (0,)
