"""The deployer's RPC subjects: one table of subject, request, reply and use case.

The bus parses the request; each handler calls the ``Deployer`` and returns the reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from schemas.deployer import (
    SUBJECTS,
    CreateDeployment,
    CreateEnrollmentToken,
    DeploymentInfo,
    DeploymentList,
    DeploymentRef,
    DeviceInfo,
    DeviceList,
    DeviceRef,
    EnrollmentToken,
    EnrollReply,
    EnrollRequest,
    ListDeployments,
    ListDevices,
    RemoveDevice,
    RollbackRequest,
    SetLabels,
)
from schemas.registry import VersionsInUseReply, VersionsInUseRequest
from services.common.bus import Bus
from services.deployer.service import Deployer

__all__ = ["RPCS", "Rpc", "register"]

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Rep]):
    """One request/reply subject the deployer serves."""

    subject: str
    request: type[Req]
    reply: type[Rep]
    call: Callable[[Deployer, Req], Awaitable[Rep]]
    #: What it does (the subject's description in the bus's AsyncAPI).
    doc: str


RPCS: tuple[Rpc[Any, Any], ...] = (
    Rpc(SUBJECTS["create_enrollment_token"], CreateEnrollmentToken, EnrollmentToken,
        Deployer.create_enrollment_token, "Make a one-time enrolment token."),
    Rpc(SUBJECTS["enroll"], EnrollRequest, EnrollReply, Deployer.enroll,
        "Enrol a device: broker credentials and the platform key for its public key."),
    Rpc(SUBJECTS["list_devices"], ListDevices, DeviceList, Deployer.list_devices,
        "Enrolled devices, filtered by group, labels or online state."),
    Rpc(SUBJECTS["get_device"], DeviceRef, DeviceInfo,
        lambda d, r: d.get_device(r.device_id), "One device."),
    Rpc(SUBJECTS["set_labels"], SetLabels, DeviceInfo, Deployer.set_labels,
        "Replace a device's labels (and optionally its group)."),
    Rpc(SUBJECTS["remove_device"], RemoveDevice, DeviceInfo, Deployer.remove_device,
        "Take a device out of the fleet: broker account deleted (it is disconnected), "
        "unfinished targets cancelled, ``eaf.device.removed`` published. Idempotent."),
    Rpc(SUBJECTS["create_deployment"], CreateDeployment, DeploymentInfo,
        Deployer.create_deployment,
        "Deploy model@version to a device, a group or a label selector. With "
        "``request_id`` the reply is a ``KeyedDeploymentInfo`` (``replayed`` tells a repeat "
        "of the key)."),
    Rpc(SUBJECTS["list_deployments"], ListDeployments, DeploymentList,
        Deployer.list_deployments, "Deployments, newest first."),
    Rpc(SUBJECTS["get_deployment"], DeploymentRef, DeploymentInfo,
        lambda d, r: d.get_deployment(r.deployment_id),
        "One deployment with its per-target progress."),
    Rpc(SUBJECTS["pause"], DeploymentRef, DeploymentInfo,
        lambda d, r: d.pause(r.deployment_id),
        "Stop starting new targets; those in flight finish."),
    Rpc(SUBJECTS["resume"], DeploymentRef, DeploymentInfo,
        lambda d, r: d.resume(r.deployment_id), "Continue a paused deployment."),
    Rpc(SUBJECTS["cancel"], DeploymentRef, DeploymentInfo,
        lambda d, r: d.cancel(r.deployment_id), "Cancel every unfinished target."),
    Rpc(SUBJECTS["rollback"], RollbackRequest, DeploymentInfo,
        lambda d, r: d.rollback(r.deployment_id, r.request_id),
        "Return the deployment's devices to their previous model (a new deployment). With "
        "``request_id`` the reply is a ``KeyedDeploymentInfo``, as for a create."),
    Rpc(SUBJECTS["versions_in_use"], VersionsInUseRequest, VersionsInUseReply,
        Deployer.versions_in_use,
        "Versions that retention must keep: active, rollback targets, being deployed."),
)  # fmt: skip


def _handler(rpc: Rpc[Req, Rep], deployer: Deployer) -> Callable[[Req], Awaitable[BaseModel]]:
    async def handle(req: Req) -> BaseModel:
        return await rpc.call(deployer, req)

    handle.__doc__ = rpc.doc
    return handle


def register(bus: Bus, deployer: Deployer) -> None:
    """Serve every ``eaf.rpc.deployer.*`` subject on ``bus``."""
    for rpc in RPCS:
        bus.rpc(rpc.subject, rpc.request)(_handler(rpc, deployer))
