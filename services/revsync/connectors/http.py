"""What the CRM and ERP adapters share: a keep-alive pool whose every call is bounded in time
and in size, the failures of any HTTP dependency that may pass (timeouts, dropped
connections, 429, 5xx, an answer too slow or too large) as transient errors, and how a failed
call is told in error text: by its status and error code, never by its body."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from revsync.errors import TransientError

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
"""What an error code or a field name in a dependency's answer looks like."""
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""The largest answer an adapter reads (8 MiB): room for a full query page of wide records,
while a service with eight calls in flight holds at most tens of MiB of answers."""


class ResponseTooLarge(TransientError):
    """An answer is larger than the adapter's cap, by its ``Content-Length`` or by the bytes
    that came; it is not read further, so it cannot fill the service's memory."""


class DeadlineExceeded(TransientError):
    """A call was not over, its whole answer read, within its deadline: an answer that stalls
    or drips in byte by byte is abandoned rather than waited for."""


class BoundedClient:
    """One dependency's keep-alive pool, shared by every call an adapter makes, each call
    bounded by the same two rules:

    - ``timeout_s`` is the deadline of one whole call: connecting, sending, waiting for the
      answer and reading every byte of its body count against it. No single wait on the
      network lasts longer than ``timeout_s`` (httpx's own timeouts), and the call's clock is
      checked once the answer's head is in and again as each part of its body arrives, so an
      answer that drips in fails with the first part that comes after the deadline. (The
      head itself, status line and headers, httpx reads whole, each wait bounded.)
    - ``max_response_bytes`` caps the answer's body (as decoded): a larger ``Content-Length``
      is refused unread, and any body is read only until it passes the cap.

    Either breach is a :class:`TransientError` naming the system, the route and the limit.
    Redirects are never followed: the pool's headers (credentials) go only where a call says.
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        timeout_s: float,
        max_response_bytes: int,
        max_connections: int = 20,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"{system}: timeout_s must be positive, got {timeout_s}")
        if max_response_bytes < 1:
            raise ValueError(
                f"{system}: max_response_bytes must be positive, got {max_response_bytes}"
            )
        self.system = system
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers=headers,
            follow_redirects=False,
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | Sequence[str]] | None = None,
        content: bytes | None = None,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request and read its answer within the bounds; the answer comes back
        complete, its body in memory. A timeout or dropped connection is transient too."""
        deadline = time.monotonic() + self.timeout_s
        request = self._client.build_request(
            method, url, params=params, content=content, json=json_body, data=data, headers=headers
        )
        route = f"{request.method} {request.url.path}"
        try:
            response = self._client.send(request, stream=True)
            try:
                body = self._read(response, route, deadline)
            finally:
                response.close()
        except httpx.TransportError as error:
            raise transport_failure(self.system, route, error) from error
        # The body is decoded already; a Content-Encoding left on it would decode it twice.
        decoded = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() != "content-encoding"
        ]
        return httpx.Response(response.status_code, headers=decoded, content=body, request=request)

    def close(self) -> None:
        self._client.close()

    def _read(self, response: httpx.Response, route: str, deadline: float) -> bytes:
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(
                f"{self.system}: {route}: the answer (HTTP {response.status_code}) declares "
                f"{int(declared)} bytes, over the {limit}-byte cap on a response; not read"
            )
        chunks: list[bytes] = []
        size = 0
        self._in_time(response, route, deadline)
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(
                    f"{self.system}: {route}: the answer (HTTP {response.status_code}) passed "
                    f"the {limit}-byte cap on a response; reading stopped"
                )
            self._in_time(response, route, deadline)
            chunks.append(chunk)
        return b"".join(chunks)

    def _in_time(self, response: httpx.Response, route: str, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                f"{self.system}: {route} timed out: the {self.timeout_s:g} s deadline of a "
                f"call (sending it and reading the whole answer) passed while the answer "
                f"(HTTP {response.status_code}) was still arriving"
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


def failed_call(system: str, response: httpx.Response, code: str | None = None) -> str:
    """A failed call as error text: the system, the status, the method and path called, and
    the dependency's error code when it gave one. Never the answer's body: it may quote back
    what was sent (an address, an email) or what the dependency holds on the customer, and
    error text ends up in dead-letter headers and logs."""
    request = response.request
    named = f" ({code})" if code else ""
    return f"{system}: HTTP {response.status_code} on {request.method} {request.url.path}{named}"


def error_code(value: object) -> str | None:
    """An error code or a field name read from a dependency's answer, if it is one: a word
    of letters, digits, ``_``, ``.`` and ``-``. Whatever else stands in its place is free
    text, which error text does not repeat."""
    return value if isinstance(value, str) and ERROR_CODE.fullmatch(value) else None


def raise_for_transient(system: str, response: httpx.Response) -> None:
    """A status that may pass becomes a :class:`TransientError` naming the system."""
    if response.status_code in TRANSIENT_STATUSES:
        raise TransientError(failed_call(system, response), retry_after=retry_after_s(response))


def transport_failure(system: str, request: str, error: httpx.TransportError) -> TransientError:
    """A timeout or a dropped connection: the call may or may not have happened, so only an
    idempotent retry is safe, and every adapter call is one."""
    kind = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
    return TransientError(f"{system}: {request} {kind}: {error!r}")
