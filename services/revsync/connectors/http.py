"""What the CRM and ERP adapters share: pooled HTTP clients, and the failures of any HTTP
dependency that may pass (timeouts, dropped connections, 429, 5xx) as transient errors."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from revsync.errors import TransientError

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def pooled_client(
    base_url: str,
    *,
    timeout_s: float,
    max_connections: int = 20,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """One keep-alive pool per adapter, shared by every call it makes."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers=headers,
    )


def retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, whether given as seconds or as an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def raise_for_transient(system: str, response: httpx.Response) -> None:
    """A status that may pass becomes a :class:`TransientError` naming the system."""
    if response.status_code in TRANSIENT_STATUSES:
        raise TransientError(
            f"{system}: HTTP {response.status_code} on {response.request.method} "
            f"{response.request.url.path}",
            retry_after=retry_after_s(response),
        )


def transport_failure(system: str, request: str, error: httpx.TransportError) -> TransientError:
    """A timeout or a dropped connection: the call may or may not have happened, so only an
    idempotent retry is safe, and every adapter call is one."""
    kind = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
    return TransientError(f"{system}: {request} {kind}: {error!r}")
