"""Business Central's Entra ID session: the OAuth 2.0 client-credentials grant of the app
registration revsync runs as (``scope=https://api.businesscentral.dynamics.com/.default``),
and the access token it yields, shared by every thread, replaced a margin before it expires
and once when Business Central answers 401; and the wire every call to the environment
goes over with that token."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx

from revsync.connectors.cdc import read_json
from revsync.connectors.erp import ErpAuthFailed
from revsync.connectors.http import BoundedClient, error_code, failed_call, raise_for_transient

SYSTEM = "business-central"
SCOPE = "https://api.businesscentral.dynamics.com/.default"
REFUSED_CREDENTIALS = frozenset({"invalid_client", "unauthorized_client", "invalid_scope"})
"""Entra's error codes for an app registration or secret it does not take."""


class BusinessCentralAuthFailed(ErpAuthFailed):
    """Entra refused revsync's client credentials, or Business Central refused its token or
    the app's permissions. Retried: a secret may be rotated, or a permission granted, without
    a redeploy."""


@dataclass(frozen=True)
class AccessToken:
    token: str
    refresh_at: float
    """The monotonic time after which the token is replaced before it is used again."""


class EntraSession:
    """One app registration's access token for Business Central: fetched on first use,
    replaced ``refresh_margin_s`` before it expires (or once a call reports it invalid), safe
    to share between threads."""

    def __init__(
        self,
        http: BoundedClient,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = SCOPE,
        refresh_margin_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._margin_s = refresh_margin_s
        self._clock = clock
        self._current: AccessToken | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """The current token, a fresh one when none is held or it is about to expire."""
        current = self._current
        if current is not None and self._clock() < current.refresh_at:
            return current.token
        return self.refresh(current.token if current is not None else None)

    def refresh(self, stale: str | None) -> str:
        """A new access token, unless another thread already replaced ``stale`` with one
        that is still good."""
        with self._lock:
            current = self._current
            if (
                current is not None
                and current.token != stale
                and self._clock() < current.refresh_at
            ):
                return current.token
            self._current = self._fetch()
            return self._current.token

    def _fetch(self) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": self._scope,
        }
        asked_at = self._clock()
        response = self._http.request("POST", self._token_url, data=form)
        raise_for_transient(SYSTEM, response)
        try:
            answer = read_json(response.content) if response.content else None
        except ValueError:
            answer = None
        if response.is_success and isinstance(answer, Mapping) and answer.get("access_token"):
            seconds = _seconds(answer.get("expires_in"))
            # A short-lived token is replaced after half its life, a long one a margin early.
            early = min(self._margin_s, seconds / 2)
            return AccessToken(str(answer["access_token"]), asked_at + seconds - early)
        reason = error_code(answer.get("error")) if isinstance(answer, Mapping) else None
        refused = "were refused" if reason in REFUSED_CREDENTIALS else "were not accepted"
        raise BusinessCentralAuthFailed(
            f"{SYSTEM}: the client credentials of app {self._client_id!r} {refused} by Entra "
            f"(HTTP {response.status_code}, {reason or 'no error code'})"
        )


class BearerSession(Protocol):
    """An access token: the one held, and a new one when a call found ``stale`` refused
    (:class:`EntraSession`)."""

    def token(self) -> str: ...

    def refresh(self, stale: str | None) -> str: ...


class BusinessCentralWire:
    """The environment's API as revsync's app calls it: each call on one keep-alive pool with
    the session's bearer token (replaced once when Business Central answers 401), at most
    ``max_calls`` at once (the rest wait their turn), JSON bodies with exact decimals;
    throttling, timeouts and 5xx raised as :class:`TransientError`, a token or permission
    refused even when fresh as :class:`BusinessCentralAuthFailed`. Any other answer is the
    caller's to read. The ERP adapter and the inbound side share one, so together they stay
    within the environment's limit of concurrent requests."""

    def __init__(self, http: BoundedClient, session: BearerSession, max_calls: int) -> None:
        self._http = http
        self._session = session
        self._slots = threading.BoundedSemaphore(max_calls)

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One call, ``url`` absolute or relative to the pool's base."""
        token = self._session.token()
        for attempt in range(2):
            with self._slots:
                response = self._http.request(
                    method,
                    url,
                    params=params,
                    content=None if json_body is None else exact_json(json_body),
                    headers={
                        "Accept": "application/json",
                        **(headers or {}),
                        "Authorization": f"Bearer {token}",
                        **({"Content-Type": "application/json"} if json_body is not None else {}),
                    },
                )
            if response.status_code == 401 and attempt == 0:
                token = self._session.refresh(token)
                continue
            break
        raise_for_transient(SYSTEM, response)
        if response.status_code in (401, 403):
            raise BusinessCentralAuthFailed(
                f"{failed_call(SYSTEM, response, answered_code(response))}: the app's token or "
                "permissions were refused"
            )
        return response

    def close(self) -> None:
        self._http.close()


def answered_error(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of Business Central's answer, empty when it has none."""
    try:
        document = read_json(response.content)
    except ValueError:
        return {}
    inner = document.get("error") if isinstance(document, dict) else None
    return inner if isinstance(inner, dict) else {}


def answered_code(response: httpx.Response) -> str | None:
    """The error code of Business Central's answer (as :func:`error_code` bounds it)."""
    return error_code(answered_error(response).get("code"))


def exact_json(body: Any) -> bytes:
    """JSON with decimals written as exact numbers."""

    def mark(value: object) -> str:
        if isinstance(value, Decimal):
            return f"\x00decimal:{value:f}"
        raise TypeError(f"{type(value).__name__} is not JSON")

    text = json.dumps(body, default=mark)
    return re.sub(r'"\\u0000decimal:(-?[0-9.]+)"', r"\1", text).encode()


def _seconds(value: object) -> float:
    """``expires_in`` as seconds; 0 (replace at next use) when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0
