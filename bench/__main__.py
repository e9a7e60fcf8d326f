"""Runs one benchmark scenario against the live stack and writes bench/results/<name>.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import (
    cdc_bridge,
    chaos,
    console,
    growth,
    order_to_cash,
    passthrough,
    process_api,
    relay,
    replay,
    runtime,
)
from revsync.settings import Settings

SCENARIOS = {
    "passthrough": passthrough.run,
    "runtime": runtime.run,
    "growth": growth.run,
    "order-to-cash": order_to_cash.run,
    "replay": replay.run,
    "chaos": chaos.run,
    "cdc-bridge": cdc_bridge.run,
    "console": console.run,
    "process-api": process_api.run,
    "relay": relay.run,
}
RESULTS = Path(__file__).parent / "results"
DEFAULT_EVENTS = {
    "order-to-cash": 2_000,
    "growth": 30_000,
    "replay": 20_000,
    "chaos": 10_000,
    "cdc-bridge": 2_000,
    "console": 10_000,
    "process-api": 6_000,
    "relay": 50_000,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events (orders, for order-to-cash; open exceptions, for console; timed "
        "requests, for process-api; outbox rows per run, for relay) to move",
    )
    arguments = parser.parse_args()
    events = arguments.events or DEFAULT_EVENTS.get(arguments.scenario, 100_000)
    figures = SCENARIOS[arguments.scenario](Settings.load(), events)
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / f"{arguments.scenario}.json"
    output.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        print(f"{name:>28}: {value}")
    print(f"{'written to':>28}: {output}")
    if str(figures.get("verdict", "passed")) != "passed":
        raise SystemExit(f"{arguments.scenario}: {figures['verdict']}")


if __name__ == "__main__":
    main()
