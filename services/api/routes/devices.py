"""Devices: enrolment tokens, enrolment (authenticated by the one-time token), list, show,
labels, removal. Each route is one request on ``eaf.rpc.deployer.*``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field

from schemas.base import WireModel
from schemas.deployer import (
    CreateEnrollmentToken,
    DeviceInfo,
    DeviceList,
    DeviceRef,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    ListDevices,
    RemoveDevice,
    SetLabels,
)
from schemas.deployer import (
    DeployerRpc as D,
)
from schemas.ids import DeviceId
from services.api.auth import Admin, Deployer, Viewer
from services.api.deps import Ctx

__all__ = ["LabelsBody", "NewEnrollmentToken", "router"]

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
DeviceIdPath = Annotated[DeviceId, Path(description="Device id")]


class NewEnrollmentToken(WireModel):
    device_id: DeviceId | None = None
    group: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(default=None, gt=0, le=30 * 86400)


class LabelsBody(WireModel):
    labels: dict[str, str]
    #: ``None`` keeps the group; ``""`` clears it.
    group: str | None = None


@router.post("/enrollment-tokens", status_code=201, response_model=EnrollmentToken)
async def create_enrollment_token(
    ctx: Ctx, principal: Admin, body: NewEnrollmentToken
) -> EnrollmentToken:
    """A one-time token for ``edge-runtime enroll`` (shown once)."""
    req = CreateEnrollmentToken(**body.model_dump(), created_by=principal.name)
    return await ctx.call(D.CREATE_ENROLLMENT_TOKEN, req)


@router.post("/enroll", response_model=EnrollReply)
async def enroll(ctx: Ctx, body: EnrollRequest) -> EnrollReply:
    """Called by the device itself; the enrolment token in the body is its credential.

    A token made for a device id enrols that id (again, if it is enrolled: re-enrolment,
    published as ``eaf.device.enrolled`` with ``reenrolled``); a token without one enrols
    only a new id (403 otherwise, the token left unused). An all-zero or low-order X25519
    ``public_key`` is 422."""
    return await ctx.call(D.ENROLL, body)


@router.get("", response_model=DeviceList)
async def list_devices(
    ctx: Ctx,
    _: Viewer,
    group: Annotated[str | None, Query()] = None,
    online: Annotated[bool | None, Query()] = None,
    label: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
    include_removed: Annotated[
        bool, Query(description="also devices removed from the fleet (removed_at set)")
    ] = False,
) -> DeviceList:
    labels = dict(item.split("=", 1) for item in label or [] if "=" in item) or None
    req = ListDevices(group=group, online=online, labels=labels, include_removed=include_removed)
    return await ctx.call(D.LIST_DEVICES, req)


@router.get("/{device_id}", response_model=DeviceInfo)
async def get_device(ctx: Ctx, _: Viewer, device_id: DeviceIdPath) -> DeviceInfo:
    return await ctx.call(D.GET_DEVICE, DeviceRef(device_id=device_id))


@router.put("/{device_id}/labels", response_model=DeviceInfo)
async def set_labels(
    ctx: Ctx, _: Deployer, device_id: DeviceIdPath, body: LabelsBody
) -> DeviceInfo:
    """Replace the device's labels (and its group, if given)."""
    req = SetLabels(device_id=device_id, labels=body.labels, group=body.group)
    return await ctx.call(D.SET_LABELS, req)


@router.delete("/{device_id}", response_model=DeviceInfo)
async def remove_device(
    ctx: Ctx,
    principal: Admin,
    device_id: DeviceIdPath,
    reason: Annotated[str, Query(max_length=500, description="why, for the record")] = "",
) -> DeviceInfo:
    """Remove the device from the fleet: its broker account is deleted (it is disconnected
    at once), its unfinished deployment targets are cancelled and it leaves the listings;
    its history stays. A repeat answers the same. Only a new enrolment token made for this
    device id enrols it again. Admin, like the enrolment tokens that let devices in."""
    req = RemoveDevice(device_id=device_id, removed_by=principal.name, reason=reason)
    return await ctx.call(D.REMOVE_DEVICE, req)
