"""A typed client of the identity provider's control API (``/__sandbox/``), for a provider
running as its own process (``python -m sandbox.idp``); in process, :class:`IdentityProvider`
has the same methods."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sandbox.http import ControlClient
from sandbox.idp.model import IdpSettings


class IdpSandbox(ControlClient):
    """One method per control route of the identity provider at ``url``."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        super().__init__(url.rstrip("/") + "/__sandbox", timeout_s)

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Register a client, or replace the one with this id; the client as registered."""
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "roles": list(roles),
            "scopes": list(scopes),
        }
        return dict(self._call("POST", "/clients", body))

    def add_user(
        self,
        username: str,
        password: str,
        *,
        name: str = "",
        email: str = "",
        roles: Iterable[str] = (),
        subject: str = "",
    ) -> dict[str, Any]:
        """Register a user, or replace the one with this username; the user as registered,
        its ``sub`` included, its password not."""
        body = {
            "username": username,
            "password": password,
            "name": name,
            "email": email,
            "roles": list(roles),
            "subject": subject,
        }
        return dict(self._call("POST", "/users", body))

    def clients(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/clients")["clients"])

    def users(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/users")["users"])

    def settings(self) -> IdpSettings:
        return IdpSettings.model_validate(self._call("GET", "/settings"))

    def configure(self, **changes: Any) -> IdpSettings:
        """Change some settings (``token_lifetime_s``, ``code_lifetime_s``, ``roles_claim``,
        ``audience``, ``token_fault``); all of them afterwards."""
        return IdpSettings.model_validate(self._call("PUT", "/settings", changes))

    def rotate_key(self, keep_previous_s: float | None = None) -> str:
        """Sign with a new key; its ``kid``. The previous one stays published until
        :meth:`drop_previous_keys` (None), for ``keep_previous_s`` seconds, or not at all (0)."""
        body = {"keep_previous_s": keep_previous_s}
        return str(self._call("POST", "/keys/rotate", body)["active"])

    def drop_previous_keys(self) -> list[str]:
        """Unpublish every rotated-out key; the ``kid`` of each key still published."""
        return list(self._call("DELETE", "/keys/previous")["published"])

    def published_kids(self) -> list[str]:
        """The active key's ``kid`` first."""
        return list(self._call("GET", "/keys")["published"])

    def logouts(self) -> list[dict[str, str]]:
        """The parameters of every ``/logout`` request, oldest first."""
        return list(self._call("GET", "/logouts")["logouts"])

    def counters(self) -> dict[str, int]:
        return dict(self._call("GET", "/counters"))

    def set_faults(self, **faults: float) -> dict[str, Any]:
        """The HTTP fault knobs of every endpoint but the control API
        (:class:`sandbox.http.Faults`)."""
        return dict(self._call("PUT", "/faults", faults))

    def reset(self) -> None:
        """Forget every client, user, code and logout, the counters, and every setting."""
        self._call("POST", "/reset")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._client.request(method, path, json=body)
        if response.is_error:
            raise RuntimeError(
                f"identity provider {method} {path}: HTTP {response.status_code}: {response.text}"
            )
        return response.json()
