"""Deployments: create, list, show with per-target progress, pause, resume, cancel,
rollback. Each route is one request on ``eaf.rpc.deployer.*``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from schemas.deployer import (
    SUBJECTS,
    CreateDeployment,
    DeploymentInfo,
    DeploymentList,
    DeploymentRef,
    DeploymentStatus,
    ListDeployments,
)
from services.api.auth import Deployer, Viewer
from services.api.deps import Ctx

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
IdPath = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]


@router.post("", status_code=201, response_model=DeploymentInfo)
async def create_deployment(
    ctx: Ctx, principal: Deployer, body: CreateDeployment
) -> DeploymentInfo:
    """Deploy ``model``@``version`` (or an alias) to a device, a group or a label selector."""
    req = body.model_copy(update={"created_by": principal.name})
    return await ctx.call(SUBJECTS["create_deployment"], req, DeploymentInfo)


@router.get("", response_model=DeploymentList)
async def list_deployments(
    ctx: Ctx,
    _: Viewer,
    model: Annotated[str | None, Query()] = None,
    status: Annotated[DeploymentStatus | None, Query()] = None,
    device_id: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> DeploymentList:
    req = ListDeployments(model=model, status=status, device_id=device_id, limit=limit)
    return await ctx.call(SUBJECTS["list_deployments"], req, DeploymentList)


@router.get("/{deployment_id}", response_model=DeploymentInfo)
async def get_deployment(ctx: Ctx, _: Viewer, deployment_id: IdPath) -> DeploymentInfo:
    """The deployment with every target's state and transfer progress."""
    ref = DeploymentRef(deployment_id=deployment_id)
    return await ctx.call(SUBJECTS["get_deployment"], ref, DeploymentInfo)


async def _act(ctx: Ctx, verb: str, deployment_id: str) -> DeploymentInfo:
    return await ctx.call(
        SUBJECTS[verb], DeploymentRef(deployment_id=deployment_id), DeploymentInfo
    )


@router.post("/{deployment_id}/pause", response_model=DeploymentInfo)
async def pause(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, "pause", deployment_id)


@router.post("/{deployment_id}/resume", response_model=DeploymentInfo)
async def resume(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, "resume", deployment_id)


@router.post("/{deployment_id}/cancel", response_model=DeploymentInfo)
async def cancel(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, "cancel", deployment_id)


@router.post("/{deployment_id}/rollback", response_model=DeploymentInfo)
async def rollback(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    """Return the devices to their previous model; answers the rollback deployment."""
    return await _act(ctx, "rollback", deployment_id)
