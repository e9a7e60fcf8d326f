"""Toxiproxy for fault tests: its server process (built from source by ``make toxiproxy``) and a
typed client of its HTTP API: proxies between a client and a server, and the toxics on them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from revsync_devstack.settings import REPO_ROOT

TOXIPROXY_SERVER = REPO_ROOT / ".tools" / "bin" / "toxiproxy-server"
"""Where ``make toxiproxy`` puts the server (the Makefile's TOXIPROXY_SERVER)."""


class ToxiproxyError(RuntimeError):
    """Toxiproxy refused a call or could not be started; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Stream(StrEnum):
    """Which direction of a proxied connection a toxic acts on."""

    UPSTREAM = "upstream"
    """Client to server: what the client sends."""
    DOWNSTREAM = "downstream"
    """Server to client: what the client receives (Toxiproxy's default)."""


class ToxicType(StrEnum):
    """The toxics this client names; others go through :meth:`Toxiproxy.add_toxic`."""

    LATENCY = "latency"
    """Every chunk of data waits ``latency`` ms, give or take up to ``jitter`` ms."""
    RESET_PEER = "reset_peer"
    """The connection is reset (TCP RST), at once or after ``timeout`` ms."""
    TIMEOUT = "timeout"
    """No data passes; the connection is closed after ``timeout`` ms, or never when 0 (a
    black hole)."""
    BANDWIDTH = "bandwidth"
    """At most ``rate`` KB/s pass."""


@dataclass(frozen=True)
class Toxic:
    name: str
    type: str
    stream: Stream
    toxicity: float
    attributes: dict[str, Any]

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Toxic:
        return cls(
            name=body["name"],
            type=body["type"],
            stream=Stream(body["stream"]),
            toxicity=float(body["toxicity"]),
            attributes=dict(body.get("attributes") or {}),
        )


@dataclass(frozen=True)
class Proxy:
    name: str
    listen: str
    """The address clients connect to (the port Toxiproxy chose when asked for port 0)."""
    upstream: str
    enabled: bool
    toxics: list[Toxic] = field(default_factory=list)

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Proxy:
        return cls(
            name=body["name"],
            listen=body["listen"],
            upstream=body["upstream"],
            enabled=bool(body["enabled"]),
            toxics=[Toxic.from_api(toxic) for toxic in body.get("toxics") or []],
        )


class Toxiproxy:
    """A client of one Toxiproxy server's HTTP API."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def version(self) -> str:
        response = self._call("GET", "/version")
        try:
            return str(response.json()["version"])
        except ValueError:
            return response.text.strip()

    # --- proxies ---------------------------------------------------------------------------

    def proxies(self) -> dict[str, Proxy]:
        body = self._call("GET", "/proxies").json()
        return {name: Proxy.from_api(proxy) for name, proxy in body.items()}

    def proxy(self, name: str) -> Proxy:
        return Proxy.from_api(self._call("GET", f"/proxies/{name}").json())

    def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """Listen on ``listen`` (``host:port``; port 0 lets Toxiproxy choose) and forward every
        connection to ``upstream``."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy.from_api(self._call("POST", "/proxies", json=body).json())

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def disable(self, name: str) -> Proxy:
        """Take the proxy down: open connections are closed and new ones refused."""
        return self._set_enabled(name, False)

    def enable(self, name: str) -> Proxy:
        return self._set_enabled(name, True)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

    # --- toxics ----------------------------------------------------------------------------

    def add_toxic(
        self,
        proxy: str,
        toxic_type: str,
        attributes: dict[str, Any],
        *,
        name: str | None = None,
        stream: Stream = Stream.DOWNSTREAM,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Add a toxic to ``proxy``; its name defaults to ``<type>_<stream>``. ``toxicity``
        is the share of connections it acts on."""
        if not 0.0 <= toxicity <= 1.0:
            raise ValueError(f"toxicity is a share of connections, 0..1; got {toxicity}")
        body = {
            "name": name or f"{toxic_type}_{stream}",
            "type": str(toxic_type),
            "stream": str(stream),
            "toxicity": toxicity,
            "attributes": attributes,
        }
        return Toxic.from_api(self._call("POST", f"/proxies/{proxy}/toxics", json=body).json())

    def add_latency(
        self,
        proxy: str,
        latency_ms: int,
        jitter_ms: int = 0,
        *,
        name: str | None = None,
        stream: Stream = Stream.DOWNSTREAM,
        toxicity: float = 1.0,
    ) -> Toxic:
        return self.add_toxic(
            proxy,
            ToxicType.LATENCY,
            {"latency": latency_ms, "jitter": jitter_ms},
            name=name,
            stream=stream,
            toxicity=toxicity,
        )

    def add_reset_peer(
        self,
        proxy: str,
        after_ms: int = 0,
        *,
        name: str | None = None,
        stream: Stream = Stream.DOWNSTREAM,
        toxicity: float = 1.0,
    ) -> Toxic:
        return self.add_toxic(
            proxy,
            ToxicType.RESET_PEER,
            {"timeout": after_ms},
            name=name,
            stream=stream,
            toxicity=toxicity,
        )

    def add_timeout(
        self,
        proxy: str,
        close_after_ms: int = 0,
        *,
        name: str | None = None,
        stream: Stream = Stream.DOWNSTREAM,
        toxicity: float = 1.0,
    ) -> Toxic:
        """Let no data through; close the connection after ``close_after_ms``, or with 0 keep
        it open and silent until the toxic is removed (a black hole)."""
        return self.add_toxic(
            proxy,
            ToxicType.TIMEOUT,
            {"timeout": close_after_ms},
            name=name,
            stream=stream,
            toxicity=toxicity,
        )

    def add_bandwidth(
        self,
        proxy: str,
        rate_kb_per_s: int,
        *,
        name: str | None = None,
        stream: Stream = Stream.DOWNSTREAM,
        toxicity: float = 1.0,
    ) -> Toxic:
        return self.add_toxic(
            proxy,
            ToxicType.BANDWIDTH,
            {"rate": rate_kb_per_s},
            name=name,
            stream=stream,
            toxicity=toxicity,
        )

    def toxics(self, proxy: str) -> list[Toxic]:
        return [Toxic.from_api(t) for t in self._call("GET", f"/proxies/{proxy}/toxics").json()]

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    # ---------------------------------------------------------------------------------------

    def _set_enabled(self, name: str, enabled: bool) -> Proxy:
        body = {"enabled": enabled}
        return Proxy.from_api(self._call("POST", f"/proxies/{name}", json=body).json())

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as error:
            raise ToxiproxyError(
                f"toxiproxy at {self.url}: {method} {path} failed: {error}"
            ) from error
        if response.is_success:
            return response
        try:
            reason = response.json().get("error") or response.text
        except ValueError:
            reason = response.text
        raise ToxiproxyError(
            f"toxiproxy at {self.url}: {method} {path} refused ({response.status_code}): "
            f"{str(reason).strip()}",
            status=response.status_code,
        )


class ToxiproxyServer:
    """A ``toxiproxy-server`` process on loopback, started and stopped by whoever holds it.

    ``with ToxiproxyServer(29474) as toxiproxy:`` starts it, hands back a client once its API
    answers, and stops it on the way out.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        executable: Path = TOXIPROXY_SERVER,
        log: Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.port = port
        self.host = host
        self.executable = executable
        self.log = log
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Toxiproxy | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Toxiproxy:
        """Start the server and wait until its API answers; the client to use it with."""
        if self._client is not None:
            return self._client
        if not os.access(self.executable, os.X_OK):
            raise ToxiproxyError(
                f"no toxiproxy server at {self.executable}; build it with `make toxiproxy`"
            )
        command = [str(self.executable), "-host", self.host, "-port", str(self.port)]
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as log:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        else:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        client = Toxiproxy(self.url)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                client.version()
                break
            except ToxiproxyError:
                if self._process.poll() is not None:
                    client.close()
                    self._process = None
                    where = f"; see {self.log}" if self.log else ""
                    raise ToxiproxyError(
                        f"toxiproxy-server exited at start-up (port {self.port} taken?){where}"
                    ) from None
                if time.monotonic() > deadline:
                    client.close()
                    self.stop()
                    raise ToxiproxyError(
                        f"toxiproxy-server did not answer on {self.url} within "
                        f"{self.start_timeout_s:.0f}s"
                    ) from None
                time.sleep(0.05)
        self._client = client
        return client

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Toxiproxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
