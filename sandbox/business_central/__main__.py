"""``python -m sandbox.business_central``: serve the Business Central simulator until SIGTERM
or SIGINT.

Prints one JSON line, ``{"url", "api_url", "token_url", "tenant_id", "environment",
"companies": {legal entity: company id}}``, once it answers requests.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from sandbox.business_central.simulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ENVIRONMENT,
    DEFAULT_TENANT_ID,
    THREE_DAYS_S,
    BusinessCentralSimulator,
)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.business_central", description=__doc__)
    parser.add_argument(
        "--dsn", required=True, help="PostgreSQL DSN; state lives in schema business_central"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tenant-id", default=DEFAULT_TENANT_ID)
    parser.add_argument("--environment", default=DEFAULT_ENVIRONMENT)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--invoice-delay-s", type=float, default=0.5)
    parser.add_argument("--ship-delay-s", type=float, default=1.0)
    parser.add_argument(
        "--payment-delay-s", type=float, default=-1.0, help="negative: invoices are never paid"
    )
    parser.add_argument("--concurrency-limit", type=int, default=5)
    parser.add_argument("--notification-interval-s", type=float, default=1.0)
    parser.add_argument("--subscription-lifetime-s", type=float, default=THREE_DAYS_S)
    parser.add_argument("--token-lifetime-s", type=float, default=3599.0)
    parser.add_argument("--reset", action="store_true", help="empty every table at start")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    options = parser.parse_args(argv)
    simulator = BusinessCentralSimulator(
        options.dsn,
        host=options.host,
        port=options.port,
        tenant_id=options.tenant_id,
        environment=options.environment,
        client_id=options.client_id,
        client_secret=options.client_secret,
        invoice_delay_s=options.invoice_delay_s,
        ship_delay_s=options.ship_delay_s,
        payment_delay_s=options.payment_delay_s,
        concurrency_limit=options.concurrency_limit,
        notification_interval_s=options.notification_interval_s,
        subscription_lifetime_s=options.subscription_lifetime_s,
        token_lifetime_s=options.token_lifetime_s,
        reset=options.reset,
        seed=options.seed,
    )
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # wait for sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    simulator.start()
    line = {
        "url": simulator.url,
        "api_url": simulator.api_url,
        "token_url": simulator.token_url,
        "tenant_id": simulator.tenant_id,
        "environment": simulator.environment,
        "companies": {c.legal_entity: c.id for c in simulator.companies.values()},
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    signal.sigwait(STOP_SIGNALS)
    simulator.stop()


if __name__ == "__main__":
    main()
