"""The registry's API keys: created, checked on each request, listed, revoked."""

from __future__ import annotations

from sqlalchemy import select

from schemas.registry import ApiKeyCreated, ApiKeyInfo, ApiRole, Principal
from services.registry import domain
from services.registry._queries import Queries, aware, utc_now
from services.registry.errors import ApiKeyNotFound, Unauthorized
from services.registry.tables import ApiKeyRow

__all__ = ["ApiKeys"]


class ApiKeys(Queries):
    """API keys; only a hash of each secret is stored. Each method is one transaction."""

    async def create_api_key(self, *, name: str, role: ApiRole, created_by: str) -> ApiKeyCreated:
        token = domain.new_api_token()
        now = utc_now()
        async with self._tx() as s:
            s.add(
                ApiKeyRow(
                    key_id=token.key_id,
                    name=name,
                    role=role,
                    secret_hash=domain.hash_secret(token.secret),
                    created_at=now,
                    created_by=created_by,
                )
            )
        info = ApiKeyInfo(
            key_id=token.key_id, name=name, role=role, created_at=now, created_by=created_by
        )
        return ApiKeyCreated(key=info, token=token.token)

    async def authenticate(self, token: str) -> Principal:
        parsed = domain.parse_token(token)
        if parsed is None:
            raise Unauthorized("the bearer token is not an EdgeAIForge API key")
        async with self.sessions() as s:
            row = await s.get(ApiKeyRow, parsed.key_id)
        if row is None or not domain.secret_matches(parsed.secret, row.secret_hash):
            raise Unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise Unauthorized(f"API key {row.key_id} was revoked")
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
        )

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        async with self._tx() as s:
            row = await s.get(ApiKeyRow, key_id)
            if row is None:
                raise ApiKeyNotFound(key_id)
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return self._key_info(row)
