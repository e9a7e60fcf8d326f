"""Runs the recording handler's consumer loop as a process of its own, for crash tests.

python tests/runtime_worker.py CONTRACTS_DIR DELAY_S BATCH_SIZE MAX_IDLE_S
"""

from __future__ import annotations

import sys
from pathlib import Path

from revsync.contracts.catalog import load_catalog
from revsync.settings import Settings
from runtime_support import RuntimeWorld


def main(contracts: str, delay_s: str, batch_size: str, max_idle_s: str) -> None:
    folder = Path(contracts)
    world = RuntimeWorld(Settings.load(), folder, load_catalog(folder))
    # A short rebalance timeout, so a killed predecessor's partitions come free quickly.
    loop = world.loop(
        world.handler(delay_s=float(delay_s)),
        batch_size=int(batch_size),
        max_poll_interval_ms=10_000,
    )
    loop.run(max_idle_s=float(max_idle_s))


if __name__ == "__main__":
    main(*sys.argv[1:])
