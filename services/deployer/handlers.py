"""Thin RPC handlers: parse (the bus does), call the ``Deployer``, return the reply."""

from __future__ import annotations

from pydantic import BaseModel

from schemas.deployer import (
    SUBJECTS,
    CreateDeployment,
    CreateEnrollmentToken,
    DeploymentRef,
    DeviceRef,
    EnrollRequest,
    ListDeployments,
    ListDevices,
    RemoveDevice,
    RollbackRequest,
    SetLabels,
)
from schemas.registry import VersionsInUseRequest
from services.common.bus import Bus
from services.deployer.service import Deployer

__all__ = ["register"]


def register(bus: Bus, deployer: Deployer) -> None:
    """Serve every ``eaf.rpc.deployer.*`` subject on ``bus``."""

    @bus.rpc(SUBJECTS["create_enrollment_token"], CreateEnrollmentToken)
    async def create_enrollment_token(req: CreateEnrollmentToken) -> BaseModel:
        """Make a one-time enrolment token."""
        return await deployer.create_enrollment_token(req)

    @bus.rpc(SUBJECTS["enroll"], EnrollRequest)
    async def enroll(req: EnrollRequest) -> BaseModel:
        """Enrol a device: broker credentials and the platform key for its public key."""
        return await deployer.enroll(req)

    @bus.rpc(SUBJECTS["list_devices"], ListDevices)
    async def list_devices(req: ListDevices) -> BaseModel:
        """Enrolled devices, filtered by group, labels or online state."""
        return await deployer.list_devices(req)

    @bus.rpc(SUBJECTS["get_device"], DeviceRef)
    async def get_device(req: DeviceRef) -> BaseModel:
        """One device."""
        return await deployer.get_device(req.device_id)

    @bus.rpc(SUBJECTS["set_labels"], SetLabels)
    async def set_labels(req: SetLabels) -> BaseModel:
        """Replace a device's labels (and optionally its group)."""
        return await deployer.set_labels(req)

    @bus.rpc(SUBJECTS["remove_device"], RemoveDevice)
    async def remove_device(req: RemoveDevice) -> BaseModel:
        """Take a device out of the fleet: broker account deleted (it is disconnected),
        unfinished targets cancelled, ``eaf.device.removed`` published. Idempotent."""
        return await deployer.remove_device(req)

    @bus.rpc(SUBJECTS["create_deployment"], CreateDeployment)
    async def create_deployment(req: CreateDeployment) -> BaseModel:
        """Deploy model@version to a device, a group or a label selector.

        With ``request_id`` the reply is a ``KeyedDeploymentInfo`` (``replayed`` tells a
        repeat of the key)."""
        return await deployer.create_deployment(req)

    @bus.rpc(SUBJECTS["list_deployments"], ListDeployments)
    async def list_deployments(req: ListDeployments) -> BaseModel:
        """Deployments, newest first."""
        return await deployer.list_deployments(req)

    @bus.rpc(SUBJECTS["get_deployment"], DeploymentRef)
    async def get_deployment(req: DeploymentRef) -> BaseModel:
        """One deployment with its per-target progress."""
        return await deployer.get_deployment(req.deployment_id)

    @bus.rpc(SUBJECTS["pause"], DeploymentRef)
    async def pause(req: DeploymentRef) -> BaseModel:
        """Stop starting new targets; those in flight finish."""
        return await deployer.pause(req.deployment_id)

    @bus.rpc(SUBJECTS["resume"], DeploymentRef)
    async def resume(req: DeploymentRef) -> BaseModel:
        """Continue a paused deployment."""
        return await deployer.resume(req.deployment_id)

    @bus.rpc(SUBJECTS["cancel"], DeploymentRef)
    async def cancel(req: DeploymentRef) -> BaseModel:
        """Cancel every unfinished target."""
        return await deployer.cancel(req.deployment_id)

    @bus.rpc(SUBJECTS["rollback"], RollbackRequest)
    async def rollback(req: RollbackRequest) -> BaseModel:
        """Return the deployment's devices to their previous model (a new deployment).

        With ``request_id`` the reply is a ``KeyedDeploymentInfo``, as for a create."""
        return await deployer.rollback(req.deployment_id, req.request_id)

    @bus.rpc(SUBJECTS["versions_in_use"], VersionsInUseRequest)
    async def versions_in_use(req: VersionsInUseRequest) -> BaseModel:
        """Versions that retention must keep: active, rollback targets, being deployed."""
        return await deployer.versions_in_use(req)
