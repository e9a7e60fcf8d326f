"""An HTTP deployable's server: an ASGI app served by uvicorn until stopped, with any loops of
its own running beside it (the ERP inbound sources' polls beside their webhook receiver).
While the server and every loop run, the process is alive; one ending by itself ends it, so
the process exits and is restarted rather than serving half its work."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

from revsync.errors import RevsyncError
from revsync.runtime.observability import Liveness

Loop = Callable[[threading.Event], None]
"""A loop beside the server: runs until the event it is given is set."""


class ServerStopped(RevsyncError):
    """The server, or a loop beside it, stopped by itself: it could not start (a port taken,
    the database or the registry out at start-up), or failed, which its log says."""


class AppServer:
    """``app`` on ``host:port`` and ``beside`` in threads of their own, until :meth:`stop`."""

    def __init__(
        self,
        name: str,
        app: Any,
        host: str,
        port: int,
        liveness: Liveness,
        migrated: threading.Event,
        beside: Sequence[Loop] = (),
    ) -> None:
        self.name = name
        self.liveness = liveness
        self.migrated = migrated
        self._beside = beside
        self._stopping = threading.Event()
        self._asked_to_stop = False
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                proxy_headers=True,
                server_header=False,
                log_level="warning",
            )
        )

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Serve until stopped (a server is never idle: ``max_idle_s`` does not apply)."""
        threads = [threading.Thread(target=self._serve, name=self.name)]
        threads += [
            threading.Thread(target=loop, args=(self._stopping,), name=f"{self.name}-{n}")
            for n, loop in enumerate(self._beside)
        ]
        for thread in threads:
            thread.start()
        try:
            while all(thread.is_alive() for thread in threads):
                self.liveness.beat()
                threads[0].join(1.0)
        finally:
            self._halt()
            for thread in threads:
                thread.join(timeout=30)
        if not self._asked_to_stop:
            raise ServerStopped(f"{self.name} stopped serving by itself; see its log")

    def _serve(self) -> None:
        # uvicorn says its start failed with SystemExit; run() tells it on.
        with contextlib.suppress(SystemExit):
            self._server.run()

    def stop(self) -> None:
        self._asked_to_stop = True
        self._halt()

    def _halt(self) -> None:
        self._stopping.set()
        self._server.should_exit = True
