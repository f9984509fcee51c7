"""What route handlers share: the settings, the bus and the artifact store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from schemas.config import Settings
from schemas.rpc import Rpc
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus

__all__ = ["ApiContext", "Ctx", "get_context"]

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ApiContext:
    settings: Settings
    bus: Bus
    artifacts: ArtifactStore

    async def call(self, rpc: Rpc[Req, Resp], request: Req) -> Resp:
        """Request/reply on the bus; a remote ``ServiceError`` is raised as the same class."""
        return await self.bus.call(rpc, request)


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


#: ``ctx: Ctx`` in a route gives the ``ApiContext``.
Ctx = Annotated[ApiContext, Depends(get_context)]
