"""Deployments: create, list, show with per-target progress, pause, resume, cancel,
rollback. Each route is one request on ``eaf.rpc.deployer.*``.

Create and rollback take an ``Idempotency-Key`` header (the deployer's ``request_id``): a
retry with the same key and the same request answers the deployment the first attempt
made, with 200 instead of 201 and ``Idempotent-Replayed: true``; the same key with a
different request is refused with 409. Keys are kept 24 h.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import ValidationError

from schemas.deployer import (
    CreateDeployment,
    DeploymentInfo,
    DeploymentList,
    DeploymentRef,
    DeploymentSpec,
    DeploymentStatus,
    KeyedDeploymentInfo,
    ListDeployments,
    RollbackRequest,
)
from schemas.deployer import (
    DeployerRpc as D,
)
from schemas.ids import DeploymentId, DeviceId, ModelName
from schemas.registry import GetModelRequest, GetVersionRequest, RegistryRpc, is_pending
from schemas.rpc import Rpc
from services.api.auth import Deployer, Viewer
from services.api.deps import Ctx
from services.common.errors import BadRequest, Conflict

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
IdPath = Annotated[DeploymentId, Path(description="Deployment id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description=(
            "Names this request (1-128 of A-Z a-z 0-9 . _ : -), the same on every retry: a "
            "repeat with the same request answers the deployment the first attempt made "
            "(200, `Idempotent-Replayed: true`); a different request with the key is "
            "refused (409). Kept 24 h."
        ),
    ),
]


async def _deployable_version(ctx: Ctx, model: str) -> str:
    """The model's newest deployable version, or a 409 that says why there is none."""
    try:
        info = await ctx.call(RegistryRpc.GET_MODEL, GetModelRequest(model=model))
    except ValidationError:
        raise BadRequest(f"{model!r} is not a valid model name") from None
    if info.deployable_version is not None:
        return info.deployable_version
    if info.latest_version is None:
        raise Conflict(f"model {model!r} has no version yet: upload one first")
    newest = await ctx.call(
        RegistryRpc.GET_VERSION, GetVersionRequest(model=model, ref=info.latest_version)
    )
    look = f"`edgeaiforge model show {model} {newest.version}`"
    if is_pending(newest.status):
        why = (
            f"its newest, {newest.version}, is still validating: deploy once {look} says validated"
        )
    else:
        why = (
            f"its newest, {newest.version}, is {newest.status}"
            + (f" ({newest.rejection_reason})" if newest.rejection_reason else "")
            + ", and no older version is validated: upload a version that passes validation"
        )
    raise Conflict(f"model {model!r} has no deployable version: {why}")


def _answer(reply: KeyedDeploymentInfo, response: Response) -> DeploymentInfo:
    """The reply as the plain body; a replay of a key is 200 with ``Idempotent-Replayed``."""
    if reply.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return reply.plain()


@router.post(
    "",
    status_code=201,
    response_model=DeploymentInfo,
    responses={200: {"model": DeploymentInfo, "description": "A repeat of an Idempotency-Key"}},
)
async def create_deployment(
    ctx: Ctx,
    principal: Deployer,
    body: DeploymentSpec,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> DeploymentInfo:
    """Deploy ``model``@``version`` (or an alias) to a device, a group or a label selector.

    Without ``version``: the newest version by upload sequence that is validated or
    analyzed; a rejected version, or one still validating, is never taken (409 when there
    is no other). With ``Idempotency-Key``, a retry answers the deployment the first
    attempt started."""
    fields = dict(body)
    if body.version is None:
        fields["version"] = await _deployable_version(ctx, body.model)
    req = CreateDeployment(**fields, created_by=principal.name, request_id=idempotency_key)
    reply = await ctx.call(D.CREATE_DEPLOYMENT, req)
    return _answer(reply, response)


@router.get("", response_model=DeploymentList)
async def list_deployments(
    ctx: Ctx,
    _: Viewer,
    model: Annotated[ModelName | None, Query()] = None,
    status: Annotated[DeploymentStatus | None, Query()] = None,
    device_id: Annotated[DeviceId | None, Query()] = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> DeploymentList:
    req = ListDeployments(model=model, status=status, device_id=device_id, limit=limit)
    return await ctx.call(D.LIST_DEPLOYMENTS, req)


@router.get("/{deployment_id}", response_model=DeploymentInfo)
async def get_deployment(ctx: Ctx, _: Viewer, deployment_id: IdPath) -> DeploymentInfo:
    """The deployment with every target's state and transfer progress."""
    ref = DeploymentRef(deployment_id=deployment_id)
    return await ctx.call(D.GET_DEPLOYMENT, ref)


async def _act(
    ctx: Ctx, rpc: Rpc[DeploymentRef, DeploymentInfo], deployment_id: str
) -> DeploymentInfo:
    return await ctx.call(rpc, DeploymentRef(deployment_id=deployment_id))


@router.post("/{deployment_id}/pause", response_model=DeploymentInfo)
async def pause(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, D.PAUSE, deployment_id)


@router.post("/{deployment_id}/resume", response_model=DeploymentInfo)
async def resume(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, D.RESUME, deployment_id)


@router.post("/{deployment_id}/cancel", response_model=DeploymentInfo)
async def cancel(ctx: Ctx, _: Deployer, deployment_id: IdPath) -> DeploymentInfo:
    return await _act(ctx, D.CANCEL, deployment_id)


@router.post("/{deployment_id}/rollback", response_model=DeploymentInfo)
async def rollback(
    ctx: Ctx,
    _: Deployer,
    deployment_id: IdPath,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> DeploymentInfo:
    """Return the devices to their previous model; answers the rollback deployment.

    With ``Idempotency-Key``, a retry answers the rollback the first attempt started."""
    req = RollbackRequest(deployment_id=deployment_id, request_id=idempotency_key)
    reply = await ctx.call(D.ROLLBACK, req)
    return _answer(reply, response)
