"""Integrators' commands the registry answers (``eaf.cmd.model.*``, ``schemas/commands.py``).

Each command runs the same ``Registry`` method as the REST route (through
``eaf.rpc.registry.*``), so it has the same effect and publishes the same events.
"""

from __future__ import annotations

from schemas.commands import CommandRpc, RegisterVersionCommand, SetAliasCommand
from schemas.registry import AliasInfo, VersionInfo
from services.common.logging import get_logger
from services.registry.handlers import Registry

__all__ = ["register_commands"]

log = get_logger(__name__)


def register_commands(registry: Registry) -> None:
    """Serve the registry's commands on its bus; call before ``bus.start()``."""

    async def register_version(cmd: RegisterVersionCommand) -> VersionInfo:
        """Register an artifact already uploaded (POST /api/v1/artifacts) as a new version;
        ``eaf.model.uploaded`` follows and validation starts."""
        log.info("command", command="register_version", actor=cmd.actor, model=cmd.model)
        return await registry.create_version(cmd.to_request())

    async def set_alias(cmd: SetAliasCommand) -> AliasInfo:
        """Point an alias at a version (create it or move it atomically)."""
        log.info("command", command="set_alias", actor=cmd.actor, model=cmd.model)
        return await registry.set_alias(cmd.to_request())

    registry.bus.serve(CommandRpc.REGISTER_VERSION, register_version)
    registry.bus.serve(CommandRpc.SET_ALIAS, set_alias)
