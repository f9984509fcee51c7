"""Integrators' commands the deployer answers (``eaf.cmd.deployment.*``,
``schemas/commands.py``).

Each command calls the same ``Deployer`` method as the REST route (through
``eaf.rpc.deployer.*``), so it has the same effect and publishes the same events.
"""

from __future__ import annotations

from schemas.commands import (
    CommandRpc,
    CreateDeploymentCommand,
    DeploymentCommand,
    RollbackCommand,
)
from schemas.deployer import DeploymentInfo, KeyedDeploymentInfo
from services.common.bus import Bus
from services.common.logging import get_logger
from services.deployer.service import Deployer

__all__ = ["register_commands"]

log = get_logger(__name__)


def _plain(info: DeploymentInfo) -> DeploymentInfo:
    """A repeated command answers exactly what the first one did: no ``replayed`` flag."""
    return info.plain() if isinstance(info, KeyedDeploymentInfo) else info


def register_commands(bus: Bus, deployer: Deployer) -> None:
    """Serve the deployer's commands on ``bus``; call before ``bus.start()``."""

    async def create(cmd: CreateDeploymentCommand) -> DeploymentInfo:
        """Deploy model@version (or an alias) to a device, a group or a label selector.

        A repeat with the same ``request_id`` answers the deployment the first one started."""
        log.info("command", command="create_deployment", actor=cmd.actor, model=cmd.model,
                 request_id=cmd.request_id)  # fmt: skip
        return _plain(await deployer.create_deployment(cmd.to_request()))

    async def pause(cmd: DeploymentCommand) -> DeploymentInfo:
        """Stop starting new targets; those in flight finish."""
        log.info("command", command="pause", actor=cmd.actor, deployment=cmd.deployment_id)
        return await deployer.pause(cmd.deployment_id)

    async def resume(cmd: DeploymentCommand) -> DeploymentInfo:
        """Continue a paused deployment."""
        log.info("command", command="resume", actor=cmd.actor, deployment=cmd.deployment_id)
        return await deployer.resume(cmd.deployment_id)

    async def cancel(cmd: DeploymentCommand) -> DeploymentInfo:
        """Cancel every unfinished target."""
        log.info("command", command="cancel", actor=cmd.actor, deployment=cmd.deployment_id)
        return await deployer.cancel(cmd.deployment_id)

    async def rollback(cmd: RollbackCommand) -> DeploymentInfo:
        """Return the deployment's devices to their previous model; answers the rollback
        deployment (a repeat with the same ``request_id``: the same one)."""
        log.info("command", command="rollback", actor=cmd.actor, deployment=cmd.deployment_id,
                 request_id=cmd.request_id)  # fmt: skip
        req = cmd.to_request()
        return _plain(await deployer.rollback(req.deployment_id, req.request_id))

    bus.serve(CommandRpc.CREATE_DEPLOYMENT, create)
    bus.serve(CommandRpc.PAUSE_DEPLOYMENT, pause)
    bus.serve(CommandRpc.RESUME_DEPLOYMENT, resume)
    bus.serve(CommandRpc.CANCEL_DEPLOYMENT, cancel)
    bus.serve(CommandRpc.ROLLBACK_DEPLOYMENT, rollback)
