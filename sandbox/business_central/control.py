"""A typed client for the Business Central simulator's own control routes
(``/__sandbox/business-central/``): its knobs, its subscriptions, the notifications it
delivered, and expiring its tokens. The books' control API is :class:`sandbox.erp.ErpSandbox`
on the same URL."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.http import ControlClient

CONTROL = "/__sandbox/business-central"


class BusinessCentralSandbox(ControlClient):
    """One method per control route of the simulator at ``url``."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        super().__init__(url, timeout_s)

    def settings(self) -> dict[str, Any]:
        return self._ok(self._client.get(f"{CONTROL}/settings"))

    def configure(self, **changes: float | int) -> dict[str, Any]:
        """Changes knobs (see :class:`sandbox.business_central.Settings`): ``concurrency_limit``,
        ``retry_after_s``, ``token_lifetime_s``, ``page_size``, ``subscription_lifetime_s``,
        ``notification_interval_s``, ``collapse_threshold``, ``notification_attempts``,
        ``notification_timeout_s``, ``drop_next_notifications``,
        ``duplicate_next_notifications``. Returns them all."""
        return self._ok(self._client.put(f"{CONTROL}/settings", json=changes))

    def drop_next_notifications(self, count: int) -> None:
        """The next ``count`` notifications are never sent: missed notifications."""
        self.configure(drop_next_notifications=count)

    def duplicate_next_notifications(self, count: int) -> None:
        """The next ``count`` notifications are sent twice."""
        self.configure(duplicate_next_notifications=count)

    def subscriptions(self) -> list[dict[str, Any]]:
        """Every live subscription, with ``pendingChanges`` and ``failedAttempts``."""
        return list(self._ok(self._client.get(f"{CONTROL}/subscriptions"))["value"])

    def deliveries(self) -> list[dict[str, Any]]:
        """The last deliveries of notifications, oldest first: ``subscriptionId``, ``at``,
        ``notifications``, ``status``, ``result`` (``delivered``, ``retrying``,
        ``given_up``, ``subscription_deleted``, ``dropped``) and, when delivered, ``value``."""
        return list(self._ok(self._client.get(f"{CONTROL}/notifications"))["value"])

    def flush_notifications(self) -> list[dict[str, Any]]:
        """Delivers what waits now, not at the next interval: this round's deliveries."""
        return list(self._ok(self._client.post(f"{CONTROL}/notifications/flush"))["deliveries"])

    def expire_tokens(self) -> int:
        """Every access token issued so far expires now."""
        return int(self._ok(self._client.post(f"{CONTROL}/tokens/expire"))["expired"])

    def companies(self) -> list[dict[str, Any]]:
        return list(self._ok(self._client.get(f"{CONTROL}/companies"))["value"])

    @staticmethod
    def _ok(response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        body = response.json()
        assert isinstance(body, dict)
        return body
