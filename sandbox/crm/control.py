"""A typed client of the CRM simulator's control API, for the demo and the end-to-end tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from revsync.connectors.salesforce import decode_json, encode_json
from sandbox.http import ControlClient


class CrmSandbox(ControlClient):
    """Seeds, drives and inspects a running CRM simulator as a sales rep and an operator."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        super().__init__(url.rstrip("/") + "/__sandbox", timeout_s)

    def insert(self, sobject: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create records (Accounts, Product2, Pricebook2...) and return their ids."""
        answer = self._call("POST", f"/records/{sobject}", {"records": list(records)})
        return list(answer["ids"])

    def create_orders(
        self, orders: Sequence[Mapping[str, Any]], *, activate: bool = True
    ) -> list[str]:
        """Create Draft orders, each with its ``items``, then activate them all, as a rep
        would; one transaction: a CREATE event per order and item, then an UPDATE per order
        (one for all of them when ``merge_rate`` merges them)."""
        answer = self._call("POST", "/orders", {"orders": list(orders), "activate": activate})
        return list(answer["ids"])

    def cancel_order(self, order_id: str, reason: str) -> None:
        self._call("POST", f"/orders/{order_id}/cancel", {"reason": reason})

    def update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Edit a record as the sales rep in the UI: the change event is theirs."""
        self._call("PATCH", f"/records/{sobject}/{record_id}", dict(fields))

    def delete(self, sobject: str, record_id: str) -> None:
        self._call("DELETE", f"/records/{sobject}/{record_id}")

    def records(self, sobject: str, **equal_to: str) -> list[dict[str, Any]]:
        """Every record of ``sobject`` whose fields have these values (as text; "null")."""
        answer = self._call("GET", f"/records/{sobject}", params=equal_to)
        return list(answer["records"])

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/stats"))

    def counters(self) -> dict[str, int]:
        return dict(self._call("GET", "/counters"))

    def set_faults(self, **faults: float) -> dict[str, Any]:
        """The HTTP fault knobs (error_rate, echo_rate, throttle_rate, throttle_status, latency_ms,
        drip_ms, pad_bytes, chunked...; :class:`sandbox.http.Faults`)."""
        return dict(self._call("PUT", "/faults", faults))

    def set_cdc(
        self,
        *,
        duplicate_rate: float | None = None,
        gap_rate: float | None = None,
        merge_rate: float | None = None,
        overflow_after: int | None = None,
        overflow_off: bool = False,
    ) -> dict[str, Any]:
        """Change some change event fault knobs; ``overflow_off`` turns overflow events off
        again. Every knob afterwards, the Pub/Sub ones too."""
        changes: dict[str, Any] = _given(
            duplicate_rate=duplicate_rate, gap_rate=gap_rate, merge_rate=merge_rate
        )
        if overflow_after is not None or overflow_off:
            changes["overflow_after"] = overflow_after
        return dict(self._call("PUT", "/pubsub", changes))

    def set_pubsub(
        self,
        *,
        retention_s: float | None = None,
        keepalive_s: float | None = None,
        expired_replay: str | None = None,
        batch: int | None = None,
    ) -> dict[str, Any]:
        """Change some Pub/Sub API knobs (:class:`sandbox.crm.cdc.CdcKnobs`); every knob
        afterwards."""
        changes = _given(
            retention_s=retention_s,
            keepalive_s=keepalive_s,
            expired_replay=expired_replay,
            batch=batch,
        )
        return dict(self._call("PUT", "/pubsub", changes))

    def evolve_schema(self, entity: str, field: str) -> str:
        """Add text field ``field`` first to ``entity``'s change event schema (every other
        field's index moves); the new schema's id."""
        answer = self._call("POST", "/pubsub/schema", {"entity": entity, "field": field})
        return str(answer["schema_id"])

    def disconnect_subscribers(self) -> int:
        """End every open Subscribe stream (UNAVAILABLE); how many were open."""
        return int(self._call("POST", "/pubsub/disconnect")["disconnected"])

    def set_query_page_size(self, page_size: int) -> None:
        self._call("PUT", "/query", {"page_size": page_size})

    def set_next_records_url(self, link: str | None) -> None:
        """Every query page but the last links to ``link`` as its ``nextRecordsUrl``; None:
        to its real next page again."""
        self._call("PUT", "/query", {"next_records_url": link})

    def set_triggers(self, triggers: Sequence[Mapping[str, Any]]) -> int:
        """Replace the org's Apex triggers, each ``{"sobject", "field", "equals", "message"}``:
        an API write to a record whose ``field`` is ``equals`` is refused with ``message``,
        its ``{Field}`` placeholders filled from the record (:class:`sandbox.crm.model.Trigger`)."""
        return int(self._call("PUT", "/triggers", {"triggers": list(triggers)})["triggers"])

    def expire_sessions(self) -> int:
        """Invalidate every issued access token; the number invalidated."""
        return int(self._call("PUT", "/sessions/expire")["expired"])

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        content = None if body is None else encode_json(body)
        headers = {"Content-Type": "application/json"} if content else None
        response = self._client.request(
            method, path, content=content, headers=headers, params=params
        )
        if response.is_error:
            raise RuntimeError(
                f"CRM sandbox {method} {path}: HTTP {response.status_code}: {response.text}"
            )
        return decode_json(response.content) if response.content else None


def _given(**knobs: Any) -> dict[str, Any]:
    return {name: value for name, value in knobs.items() if value is not None}
