"""API keys: create (token shown once), list, revoke; and who am I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from schemas.api import NewApiKey
from schemas.registry import (
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyList,
    CreateApiKeyRequest,
    ListApiKeysRequest,
    Principal,
    RegistryRpc,
    RevokeApiKeyRequest,
)
from services.api.auth import Admin, Viewer
from services.api.deps import Ctx

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["auth"])
S = RegistryRpc


@router.get("/whoami", response_model=Principal)
async def whoami(principal: Viewer) -> Principal:
    """The key this request was made with."""
    return principal


@router.post("/keys", status_code=201, response_model=ApiKeyCreated)
async def create_key(ctx: Ctx, principal: Admin, body: NewApiKey) -> ApiKeyCreated:
    """A new key; the token is in this answer only (the registry keeps its hash)."""
    req = CreateApiKeyRequest(
        name=body.name,
        role=body.role,
        created_by=principal.name,
        lifetime_days=body.lifetime_days,
    )
    return await ctx.call(S.CREATE_API_KEY, req)


@router.get("/keys", response_model=ApiKeyList)
async def list_keys(
    ctx: Ctx, _: Admin, include_revoked: Annotated[bool, Query()] = False
) -> ApiKeyList:
    return await ctx.call(S.LIST_API_KEYS, ListApiKeysRequest(include_revoked=include_revoked))


@router.delete("/keys/{key_id}", response_model=ApiKeyInfo)
async def revoke_key(
    ctx: Ctx, _: Admin, key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]
) -> ApiKeyInfo:
    """Revoke at once: the next request with that key gets 401."""
    return await ctx.call(S.REVOKE_API_KEY, RevokeApiKeyRequest(key_id=key_id))
