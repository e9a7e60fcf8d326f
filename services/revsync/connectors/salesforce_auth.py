"""The org's OAuth 2.0 session (a connected app's client credentials), shared by the REST
adapter and the Pub/Sub API client: one access token for every thread, refreshed once when
Salesforce refuses it, and the org id the token was issued for (the Pub/Sub API's tenant)."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from revsync.connectors.cdc import read_json
from revsync.connectors.http import BoundedClient, raise_for_transient
from revsync.errors import TransientError

SYSTEM = "salesforce"
REFUSED_CREDENTIALS = frozenset({"invalid_client", "invalid_grant", "invalid_client_id"})
IDENTITY_URL = re.compile(r"/id/(?P<org>00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?)/")
"""The token answer's ``id``: ``https://login.salesforce.com/id/<org id>/<user id>``."""


class CrmAuthFailed(TransientError):
    """Salesforce refused revsync's credentials or its fresh session. Retried: credentials may
    be rotated, or a connected app re-enabled, without a redeploy."""


@dataclass(frozen=True)
class AccessToken:
    token: str
    org_id: str | None
    """The org the token belongs to, from the answer's identity URL (None if it names none)."""


class SalesforceSession:
    """One org's access token, fetched on first use and replaced when a call reports it
    invalid; safe to share between threads and between the REST and Pub/Sub API clients."""

    def __init__(
        self, http: BoundedClient, token_url: str, client_id: str, client_secret: str
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._current: AccessToken | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        current = self._current
        return current.token if current is not None else self.refresh(None)

    def org_id(self) -> str:
        """The org id the session's token was issued for (fetching a token if none is held)."""
        self.token()
        current = self._current
        if current is None or current.org_id is None:
            raise CrmAuthFailed(
                f"{SYSTEM}: the token answer for connected app {self._client_id!r} names no "
                "org (its 'id' is not an identity URL)"
            )
        return current.org_id

    def refresh(self, stale: str | None) -> str:
        """A new access token, unless another thread already replaced ``stale``."""
        with self._lock:
            if self._current is not None and self._current.token != stale:
                return self._current.token
            self._current = self._fetch()
            return self._current.token

    def _fetch(self) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        response = self._http.request("POST", self._token_url, data=form)
        raise_for_transient(SYSTEM, response)
        try:
            answer = read_json(response.content) if response.content else None
        except ValueError:
            answer = None
        if response.is_success and isinstance(answer, Mapping) and answer.get("access_token"):
            identity = IDENTITY_URL.search(str(answer.get("id") or ""))
            return AccessToken(str(answer["access_token"]), identity["org"] if identity else None)
        reason = answer.get("error") if isinstance(answer, Mapping) else None
        refused = "were refused" if reason in REFUSED_CREDENTIALS else "were not accepted"
        raise CrmAuthFailed(
            f"{SYSTEM}: the client credentials of connected app {self._client_id!r} {refused} "
            f"(HTTP {response.status_code}, {reason or 'no error code'})"
        )
