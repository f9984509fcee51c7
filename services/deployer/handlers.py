"""The deployer's subscribers: ``eaf.rpc.deployer.*`` (``schemas.deployer.DeployerRpc``)
and its integrators' commands (``eaf.cmd.deployment.*``, ``schemas/commands.py``).

Each is one use case of the ``Deployer``. A command calls the same use case as the REST
route (through ``eaf.rpc.deployer.*``), so it has the same effect and publishes the same
events.
"""

from __future__ import annotations

from schemas.commands import (
    CommandRpc,
    CreateDeploymentCommand,
    DeploymentCommand,
    RollbackCommand,
)
from schemas.config import NatsConfig
from schemas.deployer import (
    DeployerRpc,
    DeploymentInfo,
    DeploymentRef,
    DeviceInfo,
    DeviceRef,
    KeyedDeploymentInfo,
    RollbackRequest,
)
from services.common.bus import ServiceRouter
from services.common.logging import get_logger
from services.deployer.service import Deployer

__all__ = ["create_router"]

log = get_logger(__name__)


def create_router(deployer: Deployer, nats: NatsConfig) -> ServiceRouter:
    """Everything the deployer answers on the bus, handed to ``deployer``."""
    router = ServiceRouter(nats, service="deployer")
    router.health()
    d, D = deployer, DeployerRpc

    router.rpc(D.CREATE_ENROLLMENT_TOKEN)(d.create_enrollment_token)
    router.rpc(D.ENROLL)(d.enroll)
    router.rpc(D.LIST_DEVICES)(d.list_devices)
    router.rpc(D.SET_LABELS)(d.set_labels)
    router.rpc(D.REMOVE_DEVICE)(d.remove_device)
    router.rpc(D.CREATE_DEPLOYMENT)(d.create_deployment)
    router.rpc(D.LIST_DEPLOYMENTS)(d.list_deployments)
    router.rpc(D.VERSIONS_IN_USE)(d.versions_in_use)

    @router.rpc(D.GET_DEVICE)
    async def get_device(req: DeviceRef) -> DeviceInfo:
        return await d.get_device(req.device_id)

    @router.rpc(D.GET_DEPLOYMENT)
    async def get_deployment(req: DeploymentRef) -> DeploymentInfo:
        return await d.get_deployment(req.deployment_id)

    @router.rpc(D.PAUSE)
    async def pause(req: DeploymentRef) -> DeploymentInfo:
        return await d.pause(req.deployment_id)

    @router.rpc(D.RESUME)
    async def resume(req: DeploymentRef) -> DeploymentInfo:
        return await d.resume(req.deployment_id)

    @router.rpc(D.CANCEL)
    async def cancel(req: DeploymentRef) -> DeploymentInfo:
        return await d.cancel(req.deployment_id)

    @router.rpc(D.ROLLBACK)
    async def rollback(req: RollbackRequest) -> KeyedDeploymentInfo:
        return await d.rollback(req.deployment_id, req.request_id)

    # ---- integrators' commands ------------------------------------------------------

    @router.rpc(CommandRpc.CREATE_DEPLOYMENT)
    async def create_command(cmd: CreateDeploymentCommand) -> DeploymentInfo:
        """Deploy model@version (or an alias) to a device, a group or a label selector.

        A repeat with the same ``request_id`` answers the deployment the first one started."""
        log.info("command", command="create_deployment", actor=cmd.actor, model=cmd.model,
                 request_id=cmd.request_id)  # fmt: skip
        return _plain(await d.create_deployment(cmd.to_request()))

    @router.rpc(CommandRpc.PAUSE_DEPLOYMENT)
    async def pause_command(cmd: DeploymentCommand) -> DeploymentInfo:
        """Stop starting new targets; those in flight finish."""
        log.info("command", command="pause", actor=cmd.actor, deployment=cmd.deployment_id)
        return await d.pause(cmd.deployment_id)

    @router.rpc(CommandRpc.RESUME_DEPLOYMENT)
    async def resume_command(cmd: DeploymentCommand) -> DeploymentInfo:
        """Continue a paused deployment."""
        log.info("command", command="resume", actor=cmd.actor, deployment=cmd.deployment_id)
        return await d.resume(cmd.deployment_id)

    @router.rpc(CommandRpc.CANCEL_DEPLOYMENT)
    async def cancel_command(cmd: DeploymentCommand) -> DeploymentInfo:
        """Cancel every unfinished target."""
        log.info("command", command="cancel", actor=cmd.actor, deployment=cmd.deployment_id)
        return await d.cancel(cmd.deployment_id)

    @router.rpc(CommandRpc.ROLLBACK_DEPLOYMENT)
    async def rollback_command(cmd: RollbackCommand) -> DeploymentInfo:
        """Return the deployment's devices to their previous model; answers the rollback
        deployment (a repeat with the same ``request_id``: the same one)."""
        log.info("command", command="rollback", actor=cmd.actor, deployment=cmd.deployment_id,
                 request_id=cmd.request_id)  # fmt: skip
        req = cmd.to_request()
        return _plain(await d.rollback(req.deployment_id, req.request_id))

    return router


def _plain(info: DeploymentInfo) -> DeploymentInfo:
    """A repeated command answers exactly what the first one did: no ``replayed`` flag."""
    return info.plain() if isinstance(info, KeyedDeploymentInfo) else info
