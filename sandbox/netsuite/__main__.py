"""``python -m sandbox.netsuite``: serve the NetSuite simulator until SIGTERM or SIGINT.

Prints one JSON line, ``{"url": "http://127.0.0.1:PORT"}``, once it answers requests.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from sandbox.netsuite.simulator import NetSuiteSimulator

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.netsuite", description=__doc__)
    parser.add_argument(
        "--dsn", required=True, help="PostgreSQL DSN; state lives in schema netsuite"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--account-id", default="1234567_SB1")
    parser.add_argument("--invoice-delay-s", type=float, default=0.5)
    parser.add_argument("--ship-delay-s", type=float, default=1.0)
    parser.add_argument(
        "--payment-delay-s", type=float, default=-1.0, help="negative: invoices are never paid"
    )
    parser.add_argument("--reset", action="store_true", help="empty every table at start")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    parser.add_argument("--concurrency-limit", type=int, default=15)
    parser.add_argument("--timezone", default="America/Los_Angeles")
    parser.add_argument("--token-lifetime-s", type=int, default=3600)
    parser.add_argument("--client-id", help="an integration's client id to register")
    parser.add_argument("--certificate-id", help="its certificate id (the JWT's kid)")
    parser.add_argument(
        "--public-key", type=Path, help="a PEM file with the certificate's public key"
    )
    options = parser.parse_args(argv)
    given = [options.client_id, options.certificate_id, options.public_key]
    if any(given) and not all(given):
        parser.error("--client-id, --certificate-id and --public-key go together")
    integration = None
    if all(given):
        integration = (
            options.client_id,
            options.certificate_id,
            options.public_key.read_text(),
        )
    simulator = NetSuiteSimulator(
        options.dsn,
        host=options.host,
        port=options.port,
        account_id=options.account_id,
        invoice_delay_s=options.invoice_delay_s,
        ship_delay_s=options.ship_delay_s,
        payment_delay_s=options.payment_delay_s,
        reset=options.reset,
        seed=options.seed,
        concurrency_limit=options.concurrency_limit,
        timezone=options.timezone,
        token_lifetime_s=options.token_lifetime_s,
        integration=integration,
    )
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # wait for sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    simulator.start()
    sys.stdout.write(json.dumps({"url": simulator.url}) + "\n")
    sys.stdout.flush()
    signal.sigwait(STOP_SIGNALS)
    simulator.stop()


if __name__ == "__main__":
    main()
