"""Bearer API keys and roles, as FastAPI dependencies every router reuses.

Roles nest: ``admin`` may do what ``deployer`` may, which may do what ``viewer`` may.
In a route: ``principal: Viewer`` (any valid key), ``Deployer`` or ``Admin``; or
``Depends(require_role("deployer"))``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.registry import ApiRole, AuthenticateRequest, Principal, RegistryRpc
from services.api.deps import Ctx
from services.api.errors import Unauthenticated
from services.common.errors import Forbidden

__all__ = ["Admin", "Deployer", "Viewer", "authenticate", "require_role"]

_RANK: dict[str, int] = {"viewer": 0, "deployer": 1, "admin": 2}

_bearer = HTTPBearer(auto_error=False, description="An EdgeAIForge API key")


async def authenticate(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller behind the bearer token; 401 without a valid, unrevoked key."""
    if credentials is None:
        raise Unauthenticated("no API key was sent")
    # Every request asks the registry, so a revoked key stops working at once.
    principal = await ctx.call(
        RegistryRpc.AUTHENTICATE, AuthenticateRequest(token=credentials.credentials[:512])
    )
    request.state.principal = principal
    return principal


def require_role(role: ApiRole) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through keys of ``role`` or a higher one, else 403."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if _RANK[principal.role] < _RANK[role]:
            raise Forbidden(
                f"API key {principal.key_id} has role {principal.role!r}; "
                f"this needs {role!r} or higher"
            )
        return principal

    return check


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Deployer = Annotated[Principal, Depends(require_role("deployer"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
