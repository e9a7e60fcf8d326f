"""Runs one benchmark scenario against the live stack and writes bench/results/<name>.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import passthrough, runtime
from revsync.settings import Settings

SCENARIOS = {"passthrough": passthrough.run, "runtime": runtime.run}
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--events", type=int, default=100_000, help="events to move")
    arguments = parser.parse_args()
    figures = SCENARIOS[arguments.scenario](Settings.load(), arguments.events)
    RESULTS.mkdir(exist_ok=True)
    output = RESULTS / f"{arguments.scenario}.json"
    output.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        print(f"{name:>28}: {value}")
    print(f"{'written to':>28}: {output}")


if __name__ == "__main__":
    main()
