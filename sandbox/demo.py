"""``make demo``: the order-to-cash pipeline end to end on this machine.

Starts the local stack, registers the contracts, applies the topics, starts both sandboxes
and every service, pushes orders through CRM change data capture (some invalid by design, some
for customers that exist only in the CRM until their first order masters them), shows their
progress live, and exits 0 once every order has reached its expected end state and every new
customer is mastered once, its ERP number back in the CRM.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from revsync.connectors.erp import ErpConfig, ErpRestAdapter
from revsync_devstack.settings import StackSettings
from revsync_devstack.stack import LocalStack
from sandbox import scenario
from sandbox.erp.simulator import DEFAULT_API_TOKEN
from sandbox.erps import SYSTEMS
from sandbox.harness import Outcome, Pipeline, PipelineError

console = Console()
NEW_CUSTOMER_SHARE = 0.05
"""About this share of valid orders is placed by accounts the ERP has no customer for yet."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--orders", type=int, default=1000, help="orders to push (1,000)")
    parser.add_argument("--invalid-share", type=float, default=0.1, help="share broken by design")
    parser.add_argument(
        "--new-customers",
        type=int,
        default=5,
        help="CRM-only accounts per legal entity, mastered by their first order (5)",
    )
    parser.add_argument("--invoice-delay-s", type=float, default=1.0)
    parser.add_argument("--ship-delay-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument(
        "--erp",
        choices=SYSTEMS,
        default="reference",
        help="the ERP the orders are booked in, as its simulator (reference)",
    )
    parser.add_argument("--seed", type=int, default=None, help="for a repeatable order mix")
    parser.add_argument(
        "--console",
        action="store_true",
        help="keep the pipeline and its exception console up at the end, until Ctrl-C",
    )
    parser.add_argument("--console-port", type=int, default=8090)
    options = parser.parse_args(argv)

    stack = LocalStack(StackSettings.load())
    console.print("starting the local stack (Kafka, schema registry, PostgreSQL)")
    stack.up()
    settings = stack.client_settings()
    workdir = stack.settings.dir / "demo"
    pipeline = Pipeline(
        settings=settings,
        workdir=workdir,
        schemas_dir=settings.schemas_dir,
        invoice_delay_s=options.invoice_delay_s,
        ship_delay_s=options.ship_delay_s,
        erp_system=options.erp,
    )
    rng = random.Random(options.seed)  # noqa: S311 - an order mix, not a secret
    try:
        pipeline.start(report=lambda step: console.print(step))
        try:
            planned, prospect_ids = plan_orders(
                pipeline, options.orders, options.invalid_share, options.new_customers, rng
            )
            ordering = {str(order.record["AccountId"]) for order in planned}
            newcomers = sorted(ordering & prospect_ids)
            started = time.monotonic()
            pipeline.push(planned)
            invalid = sum(order.expected != scenario.SHIPPED for order in planned)
            console.print(
                f"pushed {len(planned)} orders through CRM change data capture "
                f"({invalid} invalid by design; {len(newcomers)} customers exist only in the "
                f"CRM until their first order); logs in {workdir}"
            )
            with Live(
                _progress(pipeline, None, 0.0), console=console, refresh_per_second=4
            ) as live:
                outcome = pipeline.wait_settled(
                    options.timeout_s,
                    lambda now: live.update(_progress(pipeline, now, time.monotonic() - started)),
                )
            elapsed = time.monotonic() - started
            mastered = _mastered(pipeline, newcomers, timeout_s=60)
            console.print(_summary(pipeline, outcome, elapsed, mastered, len(newcomers)))
            password = secrets.token_urlsafe(12)
            url = pipeline.start_console(
                {"operator": ("operator", password), "admin": ("admin", password)},
                port=options.console_port if options.console else 0,
            )
            console.print(
                f"the exception console: {url} (sign in as operator or admin, password {password})",
                highlight=False,
            )
            if options.console:
                console.print("serving until Ctrl-C")
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
        finally:
            pipeline.stop()
    except PipelineError as error:
        console.print(f"[bold red]demo failed:[/] {error}", highlight=False)
        return 1
    if mastered != len(newcomers):
        console.print(
            f"[bold red]{len(newcomers) - mastered} of {len(newcomers)} new customers were not "
            f"mastered once in the ERP with their number back in the CRM[/]; see {workdir}"
        )
        return 1
    if outcome.pending or outcome.wrong:
        for line in outcome.wrong[:20]:
            console.print(f"[red]wrong end state[/] {line}", highlight=False)
        console.print(
            f"[bold red]{outcome.pending} orders did not settle, {len(outcome.wrong)} ended "
            f"wrong[/]; see the logs in {workdir}"
        )
        return 1
    console.print(
        f"[bold green]all {outcome.settled} orders reached their expected end state "
        f"in {elapsed:.1f}s; {mastered} new customers mastered once each[/]"
    )
    return 0


def plan_orders(
    pipeline: Pipeline, count: int, invalid_share: float, new_customers: int, rng: random.Random
) -> tuple[list[scenario.PlannedOrder], set[str]]:
    """The orders a demo run pushes: the scenario's master data seeded in both systems,
    ``count`` orders (``invalid_share`` of them invalid by design), and ``new_customers``
    accounts per legal entity that exist only in the CRM, some of whose orders are among
    them; with those accounts' ids."""
    data = scenario.seed(pipeline.crm, pipeline.erp, rng)
    prospects = {
        entity.code: scenario.crm_only_accounts(pipeline.crm, entity, new_customers, rng)
        for entity in scenario.ENTITIES
    }
    planned = scenario.for_new_customers(
        list(scenario.orders(data, count, rng, invalid_share)), prospects, NEW_CUSTOMER_SHARE, rng
    )
    return planned, {a.account_id for accounts in prospects.values() for a in accounts}


def _progress(pipeline: Pipeline, outcome: Outcome | None, elapsed: float) -> Table:
    table = Table(title=f"order-to-cash, {elapsed:5.1f}s", title_justify="left")
    for column in ("pushed", "created in ERP", "accepted", "rejected", "invoiced", "shipped"):
        table.add_column(column, justify="right")
    for column in ("retried", "dead letters", "settled"):
        table.add_column(column, justify="right")
    counts = outcome.counts if outcome else {}
    metrics = pipeline.metrics()
    stats = pipeline.erp.stats()
    table.add_row(
        str(len(pipeline.planned)),
        str(sum(stats.sales_orders.values())),
        str(counts.get("accepted", 0)),
        str(counts.get("rejected", 0)),
        str(counts.get("invoiced", 0)),
        str(counts.get("shipped", 0)),
        str(metrics["revsync_retried_total"]),
        str(metrics["revsync_dead_lettered_total"]),
        f"{outcome.settled if outcome else 0}/{len(pipeline.planned)}",
    )
    return table


def _mastered(pipeline: Pipeline, account_ids: list[str], timeout_s: float) -> int:
    """How many of these CRM accounts have their ERP customer (one per account: the ERP keys
    customers by it) with its number back on the account, waiting up to ``timeout_s`` for the
    last write-backs."""
    erp = ErpRestAdapter(ErpConfig(pipeline.erp_url, SecretStr(DEFAULT_API_TOKEN)))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done = 0
            for account_id in account_ids:
                customer = erp.customer_by_account(account_id)
                account = pipeline.crm.records("Account", Id=account_id)[0]
                if customer is not None and account["ERP_Customer_Number__c"] == customer.number:
                    done += 1
            if done == len(account_ids) or time.monotonic() > deadline:
                return done
            time.sleep(1)
    finally:
        erp.close()


def _summary(
    pipeline: Pipeline, outcome: Outcome, elapsed: float, mastered: int, newcomers: int
) -> Table:
    expected: dict[str, int] = {}
    for end_state in pipeline.planned.values():
        expected[end_state] = expected.get(end_state, 0) + 1
    stats = pipeline.erp.stats()
    metrics = pipeline.metrics()
    table = Table(title="summary", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("orders pushed", len(pipeline.planned)),
        *((f"expected {state}", count) for state, count in sorted(expected.items())),
        ("settled as expected", outcome.settled),
        ("ended in a wrong state", len(outcome.wrong)),
        ("not settled", outcome.pending),
        ("new customers mastered from the CRM", f"{mastered} / {newcomers}"),
        ("ERP sales orders", sum(stats.sales_orders.values())),
        ("ERP create requests", stats.create_requests),
        ("ERP idempotent replays", stats.idempotent_replays),
        ("ERP invoices / shipments", f"{stats.invoices} / {stats.shipments}"),
        ("events processed", metrics["revsync_processed_total"]),
        ("duplicates skipped", metrics["revsync_duplicates_skipped_total"]),
        (
            "retried (tiers) / in process",
            f"{metrics['revsync_retried_total']} / {metrics['revsync_in_process_retries_total']}",
        ),
        ("dead letters", metrics["revsync_dead_lettered_total"]),
        ("seconds", f"{elapsed:.1f}"),
        ("orders/s", f"{len(pipeline.planned) / elapsed:.0f}" if elapsed else "-"),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    return table


if __name__ == "__main__":
    sys.exit(main())
