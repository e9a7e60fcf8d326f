"""``python -m sandbox.erp``: serve the ERP simulator until SIGTERM or SIGINT.

Prints one JSON line, ``{"url": "http://127.0.0.1:PORT"}``, once it answers requests.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from sandbox.erp.simulator import DEFAULT_API_TOKEN, ErpSimulator

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.erp", description=__doc__)
    parser.add_argument("--dsn", required=True, help="PostgreSQL DSN; state lives in schema erp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-token", default=DEFAULT_API_TOKEN)
    parser.add_argument("--invoice-delay-s", type=float, default=0.5)
    parser.add_argument("--ship-delay-s", type=float, default=1.0)
    parser.add_argument(
        "--payment-delay-s", type=float, default=-1.0, help="negative: invoices are never paid"
    )
    parser.add_argument("--reset", action="store_true", help="empty every table at start")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    options = parser.parse_args(argv)
    simulator = ErpSimulator(
        options.dsn,
        host=options.host,
        port=options.port,
        api_token=options.api_token,
        invoice_delay_s=options.invoice_delay_s,
        ship_delay_s=options.ship_delay_s,
        payment_delay_s=options.payment_delay_s,
        reset=options.reset,
        seed=options.seed,
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
