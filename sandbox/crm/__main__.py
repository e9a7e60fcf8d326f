"""``python -m sandbox.crm``: serve the simulated org until SIGTERM or SIGINT.

Prints ``{"url": ..., "pubsub": "127.0.0.1:<port>", "org_id": ...}`` on one line once it
listens (the REST and control APIs, the Pub/Sub API in plain gRPC, and the org's id), so a
parent process can find it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from sandbox.crm.cdc import CdcKnobs
from sandbox.crm.simulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, CrmSimulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.crm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--pubsub-port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--keepalive-s",
        type=float,
        default=CdcKnobs.keepalive_s,
        help="an empty response on a quiet Subscribe stream this often",
    )
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--seed", type=int, default=None, help="fault dice seed")
    options = parser.parse_args(argv)

    simulator = CrmSimulator(
        client_id=options.client_id,
        client_secret=options.client_secret,
        host=options.host,
        port=options.port,
        pubsub_port=options.pubsub_port,
        seed=options.seed,
        knobs=CdcKnobs(keepalive_s=options.keepalive_s),
    ).start()
    stopping = threading.Event()

    def stop(_signal: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announcement = {
        "url": simulator.url,
        "pubsub": simulator.pubsub_address,
        "org_id": simulator.org_id,
    }
    sys.stdout.write(json.dumps(announcement) + "\n")
    sys.stdout.flush()
    stopping.wait()
    simulator.stop()


if __name__ == "__main__":
    main()
