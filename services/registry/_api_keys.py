"""The registry's API keys: created, checked on each request, listed, revoked.

A key expires ``lifetime_days`` after its creation (``api.key_lifetime_days`` unless its
creator says otherwise; 0: never). Keys without an expiry (made before keys expired, or
with lifetime 0) are accepted until ``api.unexpiring_key_max_age_days`` after their
creation when that is set.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from schemas.registry import ApiKeyCreated, ApiKeyInfo, ApiRole, Principal
from services.registry import domain
from services.registry._queries import Queries, aware, utc_now
from services.registry.errors import ApiKeyExpired, ApiKeyNotFound, Unauthorized
from services.registry.tables import ApiKeyRow

__all__ = ["ApiKeys"]


class ApiKeys(Queries):
    """API keys; only a hash of each secret is stored. Each method is one transaction."""

    async def create_api_key(
        self, *, name: str, role: ApiRole, created_by: str, lifetime_days: int = 0
    ) -> ApiKeyCreated:
        """A new key that expires after ``lifetime_days`` (0: never)."""
        token = domain.new_api_token()
        now = utc_now()
        expires_at = now + timedelta(days=lifetime_days) if lifetime_days > 0 else None
        async with self._tx() as s:
            row = ApiKeyRow(
                key_id=token.key_id,
                name=name,
                role=role,
                secret_hash=domain.hash_secret(token.secret),
                created_at=now,
                created_by=created_by,
                expires_at=expires_at,
            )
            s.add(row)
        return ApiKeyCreated(key=self._key_info(row), token=token.token)

    async def authenticate(self, token: str, *, unexpiring_max_age_days: int = 0) -> Principal:
        parsed = domain.parse_token(token)
        if parsed is None:
            raise Unauthorized("the bearer token is not an EdgeAIForge API key")
        async with self.sessions() as s:
            row = await s.get(ApiKeyRow, parsed.key_id)
        if row is None or not domain.secret_matches(parsed.secret, row.secret_hash):
            raise Unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise Unauthorized(f"API key {row.key_id} was revoked")
        expiry = _expiry(row, unexpiring_max_age_days)
        if expiry is not None and expiry <= utc_now():
            raise ApiKeyExpired(row.key_id, expiry.isoformat(timespec="seconds"))
        return Principal(key_id=row.key_id, name=row.name, role=row.role)

    async def list_api_keys(self, include_revoked: bool) -> list[ApiKeyInfo]:
        async with self.sessions() as s:
            q = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if not include_revoked:
                q = q.where(ApiKeyRow.revoked_at.is_(None))
            rows = list(await s.scalars(q))
        return [self._key_info(r) for r in rows]

    @staticmethod
    def _key_info(r: ApiKeyRow) -> ApiKeyInfo:
        return ApiKeyInfo(
            key_id=r.key_id,
            name=r.name,
            role=r.role,
            created_at=aware(r.created_at),
            created_by=r.created_by,
            revoked_at=aware(r.revoked_at) if r.revoked_at else None,
            expires_at=aware(r.expires_at) if r.expires_at else None,
        )

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        async with self._tx() as s:
            row = await s.get(ApiKeyRow, key_id)
            if row is None:
                raise ApiKeyNotFound(key_id)
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return self._key_info(row)


def _expiry(row: ApiKeyRow, unexpiring_max_age_days: int) -> datetime | None:
    if row.expires_at is not None:
        return aware(row.expires_at)
    if unexpiring_max_age_days > 0:
        return aware(row.created_at) + timedelta(days=unexpiring_max_age_days)
    return None
