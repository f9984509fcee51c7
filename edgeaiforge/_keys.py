"""The access part of ``ModelManager``: API keys (admin) and ``whoami``."""

from __future__ import annotations

from edgeaiforge._http import HttpClient
from schemas.api import NewApiKey
from schemas.registry import ApiKeyCreated, ApiKeyInfo, ApiKeyList, ApiRole, Principal

__all__ = ["KeysMixin"]


class KeysMixin:
    """Methods of ``ModelManager`` on ``/api/v1/keys`` and ``/api/v1/whoami``."""

    _http: HttpClient

    def whoami(self) -> Principal:
        """The key this manager calls with: its id, name and role."""
        out = self._http.call("GET", "/api/v1/whoami", Principal)
        return out

    def create_api_key(
        self, name: str, role: ApiRole, *, lifetime_days: int | None = None
    ) -> ApiKeyCreated:
        """A new key (admin only). Its ``token`` is in this answer only: keep it.

        It expires after ``lifetime_days`` (0: never; ``None``: the platform's default).
        """
        body = NewApiKey(name=name, role=role, lifetime_days=lifetime_days).model_dump(
            mode="json", exclude_none=True
        )
        out = self._http.call("POST", "/api/v1/keys", ApiKeyCreated, json=body)
        return out

    def list_api_keys(self, *, include_revoked: bool = False) -> list[ApiKeyInfo]:
        """Every key (admin only), without tokens; revoked ones on request."""
        params = {"include_revoked": str(include_revoked).lower()}
        page = self._http.call("GET", "/api/v1/keys", ApiKeyList, params=params)
        return list(page.items)

    def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (admin only): its next request is refused with 401."""
        out = self._http.call("DELETE", f"/api/v1/keys/{key_id}", ApiKeyInfo)
        return out
