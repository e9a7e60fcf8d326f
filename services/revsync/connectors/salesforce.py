"""The Salesforce adapter of the CRM port (:class:`revsync.ports.crm.CrmPort`): REST calls for
records, queries and upserts, with Salesforce's failures translated into revsync's error
taxonomy.

Authentication is the OAuth 2.0 client-credentials flow; the access token is shared by every
thread and refreshed once when Salesforce reports the session invalid. Numbers travel as JSON
numbers and come back as :class:`~decimal.Decimal`, so money never passes through a float.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from revsync.connectors.cdc import read_json
from revsync.connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BoundedClient,
    error_code,
    raise_for_transient,
    retry_after_s,
)
from revsync.connectors.salesforce_auth import SYSTEM, CrmAuthFailed, SalesforceSession
from revsync.errors import ErrorClass, RevsyncError
from revsync.ports.crm import (
    CrmFieldError,
    CrmPort,
    CrmRejected,
    RecordNotFound,
    RecordResult,
    UpsertResult,
    record_failure,
)

BATCH_LIMIT = 200
"""Most records one sObject Collections request may carry."""
INVALID_SESSION = "INVALID_SESSION_ID"


# --- JSON with exact numbers ----------------------------------------------------------------


def decode_json(raw: bytes | str) -> Any:
    """Salesforce JSON with every fractional number as a Decimal (never a float). What is no
    such JSON raises MalformedJson, a ValueError: see ``read_json`` for what it refuses."""
    return read_json(raw, parse_float=Decimal)


def encode_json(value: Any) -> bytes:
    """JSON in which Decimals are written as JSON numbers digit for digit, and dates and
    datetimes as ISO 8601 strings; the standard encoder can do neither."""
    return "".join(_encode(value)).encode()


def _encode(value: Any) -> Iterator[str]:
    if value is None or isinstance(value, bool | int | float | str):
        yield json.dumps(value, allow_nan=False)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        yield str(value)
    elif isinstance(value, datetime):
        yield json.dumps(iso_datetime(value))
    elif isinstance(value, date):
        yield json.dumps(value.isoformat())
    elif isinstance(value, Mapping):
        yield "{"
        for index, (name, item) in enumerate(value.items()):
            if not isinstance(name, str):
                raise TypeError(f"JSON object keys are strings, not {name!r}")
            yield ("," if index else "") + json.dumps(name) + ":"
            yield from _encode(item)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from _encode(item)
        yield "]"
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def iso_datetime(moment: datetime) -> str:
    """A timezone-aware datetime as Salesforce reads it, in UTC with milliseconds."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"{moment} has no timezone; Salesforce datetimes are absolute")
    utc = (moment - offset).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


# --- Configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SalesforceConfig:
    """Where the org is and how revsync signs in to it (a connected app's client credentials)."""

    instance_url: str
    client_id: str
    client_secret: SecretStr = field(repr=False)
    api_version: str = "v62.0"
    client_name: str = "revsync"
    """Sent as ``Sforce-Call-Options: client=<client_name>``; change events caused by revsync
    carry it in their ``changeOrigin``, which is how revsync recognises its own echoes."""
    timeout_s: float = 10.0
    """The deadline of one call, its whole answer read (see
    :class:`~revsync.connectors.http.BoundedClient`)."""
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """The largest answer read; a larger one fails as transient, unread."""
    max_connections: int = 20
    token_url: str | None = None
    """Default: ``instance_url`` + ``/services/oauth2/token``."""

    @property
    def resolved_token_url(self) -> str:
        return self.token_url or self.instance_url.rstrip("/") + "/services/oauth2/token"


# --- Errors -------------------------------------------------------------------------------


def _field_errors(body: Any) -> tuple[CrmFieldError, ...]:
    """Salesforce's REST error list ``[{"message", "errorCode", "fields"}]``: the codes and
    field names only, since the message may quote the record's values."""
    if not isinstance(body, list):
        return ()
    return tuple(
        CrmFieldError(
            error_code(item.get("errorCode"))
            or error_code(item.get("statusCode"))
            or "UNKNOWN_EXCEPTION",
            _field_names(item.get("fields")),
        )
        for item in body
        if isinstance(item, Mapping)
    )


def _field_names(fields: Any) -> tuple[str, ...]:
    if not isinstance(fields, list):
        return ()
    return tuple(name for name in fields if error_code(name))


class CrmProtocolViolation(RevsyncError):
    """Salesforce answered outside its REST API's contract, e.g. a query page whose next-page
    link (``nextRecordsUrl``) leaves the instance's API. Nothing is sent where it points (the
    session token stays with the instance); permanent, so it is looked at."""

    error_class = ErrorClass.UNKNOWN


# --- The client -------------------------------------------------------------------------------


class SalesforceClient(CrmPort):
    """The CRM port over Salesforce's REST API, for one org; safe to share between threads."""

    def __init__(self, config: SalesforceConfig) -> None:
        self._config = config
        self._api = f"/services/data/{config.api_version}"
        # Salesforce's query locators, e.g. /services/data/v62.0/query/01gD0000002HU6KIAW-2000:
        # a path under this API only, no scheme, host, dot segments or escapes.
        self._next_page = re.compile(re.escape(self._api) + r"/query/[A-Za-z0-9][A-Za-z0-9-]*")
        self._http = BoundedClient(
            SYSTEM,
            config.instance_url,
            timeout_s=config.timeout_s,
            max_response_bytes=config.max_response_bytes,
            max_connections=config.max_connections,
            headers={
                "Accept": "application/json",
                "Sforce-Call-Options": f"client={config.client_name}",
            },
        )
        self.session = SalesforceSession(
            self._http,
            config.resolved_token_url,
            config.client_id,
            config.client_secret.get_secret_value(),
        )
        """The org's OAuth session, which the Pub/Sub API client shares."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # The calls the services make.

    def get(
        self, sobject: str, record_id: str, fields: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """One record by id, all fields unless ``fields`` names some."""
        params = {"fields": ",".join(fields)} if fields else None
        body = self._call(
            "GET",
            f"{self._api}/sobjects/{sobject}/{quote(record_id, safe='')}",
            subject=f"{sobject} {record_id}",
            not_found=RecordNotFound(sobject, record_id),
            params=params,
        )
        return _without_attributes(body)

    def related(self, sobject: str, record_id: str, relationship: str) -> list[dict[str, Any]]:
        """The records of a child relationship, e.g. an Order's ``OrderItems``, every page."""
        return self._all_pages(
            f"{self._api}/sobjects/{sobject}/{quote(record_id, safe='')}/{relationship}",
            None,
            subject=f"{sobject} {record_id} {relationship}",
            not_found=RecordNotFound(sobject, record_id),
        )

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query selects, following ``nextRecordsUrl`` page by page."""
        return self._all_pages(
            f"{self._api}/query", {"q": soql}, subject=f"query {soql!r}", not_found=None
        )

    def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Change some fields of an existing record."""
        self._call(
            "PATCH",
            f"{self._api}/sobjects/{sobject}/{quote(record_id, safe='')}",
            subject=f"{sobject} {record_id}",
            not_found=RecordNotFound(sobject, record_id),
            body=dict(fields),
        )

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        external_id: str,
        fields: Mapping[str, Any],
    ) -> UpsertResult:
        """Create or update the record whose ``external_id_field`` is ``external_id``."""
        body = {name: value for name, value in fields.items() if name != external_id_field}
        answer = self._call(
            "PATCH",
            f"{self._api}/sobjects/{sobject}/{external_id_field}/{quote(external_id, safe='')}",
            subject=f"{sobject} {external_id_field}={external_id}",
            not_found=RecordNotFound(sobject, external_id) if external_id_field == "Id" else None,
            body=body,
        )
        if not isinstance(answer, Mapping) or not answer.get("id"):
            raise CrmRejected(
                f"{sobject} {external_id_field}={external_id}",
                "UNKNOWN_EXCEPTION",
                detail="the upsert answer names no record id",
            )
        return UpsertResult(str(answer["id"]), bool(answer.get("created")))

    def upsert_many(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
    ) -> list[RecordResult]:
        """Upsert records by ``external_id_field`` in sObject Collections requests of at most
        :data:`BATCH_LIMIT`, each record on its own (``allOrNone`` false). The results are in
        input order; a failed record's :meth:`RecordResult.error` says what to do about it."""
        results: list[RecordResult] = []
        path = f"{self._api}/composite/sobjects/{sobject}/{external_id_field}"
        for start in range(0, len(records), BATCH_LIMIT):
            chunk = records[start : start + BATCH_LIMIT]
            keys = [str(record.get(external_id_field, "")) for record in chunk]
            answer = self._call(
                "PATCH",
                path,
                subject=f"{len(chunk)} {sobject} records",
                not_found=None,
                body={
                    "allOrNone": False,
                    "records": [{"attributes": {"type": sobject}, **record} for record in chunk],
                },
            )
            if not isinstance(answer, list) or len(answer) != len(chunk):
                got = len(answer) if isinstance(answer, list) else f"a {type(answer).__name__}"
                raise CrmRejected(
                    f"{len(chunk)} {sobject} records",
                    "UNKNOWN_EXCEPTION",
                    detail=f"expected {len(chunk)} results, got {got}",
                )
            results += [
                RecordResult(
                    id=item.get("id"),
                    success=bool(item.get("success")),
                    created=bool(item.get("created")),
                    errors=_field_errors(item.get("errors")),
                    sobject=sobject,
                    external_id_field=external_id_field,
                    external_id=key,
                )
                for item, key in zip(answer, keys, strict=True)
            ]
        return results

    # Plumbing.

    def _all_pages(
        self,
        path: str,
        params: dict[str, str] | None,
        *,
        subject: str,
        not_found: RevsyncError | None,
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        next_path = path
        while True:
            page = self._call("GET", next_path, subject=subject, not_found=not_found, params=params)
            records += [_without_attributes(record) for record in page.get("records", ())]
            if page.get("done", True):
                break
            next_path = self._next_page_path(page.get("nextRecordsUrl"), next_path)
            params = None
        return records

    def _next_page_path(self, link: Any, page_path: str) -> str:
        """The path of the page after the one read from ``page_path``, if Salesforce's link
        to it is a query locator of this instance's API; refused otherwise, unfollowed."""
        if isinstance(link, str) and self._next_page.fullmatch(link):
            return link
        where = "no next page" if link is None else f"a next page outside {self._api}/query/"
        raise CrmProtocolViolation(
            f"{SYSTEM}: a page of GET {page_path} is not the last, yet its nextRecordsUrl "
            f"names {where}; not followed"
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        subject: str,
        not_found: RevsyncError | None,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one API request with the shared token; an invalid session is refreshed and
        the request sent once more."""
        token = self.session.token()
        response = self._send(method, path, token, params, body)
        if _is_invalid_session(response):
            response = self._send(method, path, self.session.refresh(token), params, body)
            if _is_invalid_session(response):
                raise CrmAuthFailed(
                    f"{SYSTEM}: a freshly issued session was refused on {method} {path}"
                )
        if response.is_success:
            return decode_json(response.content) if response.content else None
        raise_for_transient(SYSTEM, response)
        errors = _field_errors(_decoded_or_none(response))
        if not errors:
            # Not Salesforce's error list (a gateway's answer, say): its status stands for a code.
            errors = (CrmFieldError(f"HTTP_{response.status_code}"),)
        raise record_failure(subject, errors, not_found, retry_after_s(response))

    def _send(
        self,
        method: str,
        path: str,
        token: str,
        params: dict[str, str] | None,
        body: Any,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        content = None
        if body is not None:
            content = encode_json(body)
            headers["Content-Type"] = "application/json"
        return self._http.request(method, path, params=params, content=content, headers=headers)


def _is_invalid_session(response: httpx.Response) -> bool:
    return response.status_code == 401 and any(
        error.status_code == INVALID_SESSION for error in _field_errors(_decoded_or_none(response))
    )


def _decoded_or_none(response: httpx.Response) -> Any:
    try:
        return decode_json(response.content) if response.content else None
    except ValueError:
        return None


def _without_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "attributes"}


__all__ = [
    "BATCH_LIMIT",
    "CrmAuthFailed",
    "CrmProtocolViolation",
    "SalesforceClient",
    "SalesforceConfig",
    "decode_json",
    "encode_json",
    "iso_datetime",
]
