"""A typed client for the NetSuite simulator's own control routes
(``/__sandbox/netsuite/``): its knobs, the integrations registered for the token endpoint,
and the expiry of every issued token. The books' control API (seeding, clock, faults) is
:class:`sandbox.erp.ErpSandbox` on the same URL."""

from __future__ import annotations

from typing import Any

from sandbox.http import ControlClient

CONTROL = "/__sandbox/netsuite"


class NetSuiteSandbox(ControlClient):
    """One method per NetSuite control route of the simulator at ``url``."""

    def settings(self) -> dict[str, Any]:
        return self._call("GET", "/settings")

    def set_settings(self, **changes: Any) -> dict[str, Any]:
        """Changes NetSuite's knobs (``concurrency_limit``, ``request_limit_rate``,
        ``hold_s``, ``async_delay_s``, ``token_lifetime_s``, ``row_cap``, ``lost_answers``,
        ``lost_answer_hold_s``, ``forced_error_code``/``_status``/``_path``/``_method``; see
        :class:`sandbox.netsuite.Settings`); returns them all."""
        return self._call("PUT", "/settings", changes)

    def register_integration(
        self, client_id: str, certificate_id: str, public_key_pem: str
    ) -> None:
        """Registers an integration record's client id with a certificate (its id and public
        key), as the account's OAuth 2.0 client credentials (M2M) setup does."""
        self._call(
            "POST",
            "/integrations",
            {
                "client_id": client_id,
                "certificate_id": certificate_id,
                "public_key_pem": public_key_pem,
            },
        )

    def expire_tokens(self) -> int:
        """Ends every access token issued so far; returns how many."""
        return int(self._call("POST", "/tokens/expire")["expired"])

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._client.request(method, CONTROL + path, json=body)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer
