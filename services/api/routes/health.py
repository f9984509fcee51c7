"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from schemas.api import ApiHealth
from schemas.rpc import HealthRequest, health_rpc
from services.api.deps import Ctx

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=ApiHealth)
async def healthz(ctx: Ctx) -> JSONResponse:
    """200 while the API runs and the registry answers on the bus; 503 otherwise."""
    try:
        await ctx.bus.call(health_rpc("registry"), HealthRequest(), timeout=2.0)
        registry = "ok"
    except Exception:
        registry = "unreachable"
    body = ApiHealth(status="ok" if registry == "ok" else "degraded", registry=registry)
    return JSONResponse(body.model_dump(), status_code=200 if registry == "ok" else 503)
