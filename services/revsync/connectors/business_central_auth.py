"""Business Central's Entra ID session: the OAuth 2.0 client-credentials grant of the app
registration revsync runs as (``scope=https://api.businesscentral.dynamics.com/.default``),
and the access token it yields, shared by every thread, replaced a margin before it expires
and once when Business Central answers 401."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from revsync.connectors.cdc import read_json
from revsync.connectors.erp import ErpAuthFailed
from revsync.connectors.http import BoundedClient, error_code, raise_for_transient

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


def _seconds(value: object) -> float:
    """``expires_in`` as seconds; 0 (replace at next use) when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0
