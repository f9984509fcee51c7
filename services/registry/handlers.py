"""The registry's subscribers: ``eaf.rpc.registry.*``, its integrators' commands
(``eaf.cmd.model.*``) and the validator's and analyzer's events.

Each command runs the same ``Registry`` use case as the REST route (through
``eaf.rpc.registry.*``), so it has the same effect and publishes the same events.
"""

from __future__ import annotations

from schemas.commands import CommandRpc, RegisterVersionCommand, SetAliasCommand
from schemas.config import NatsConfig
from schemas.events import ModelAnalyzed, ModelRejected, ModelValidated
from schemas.registry import AliasInfo, RegistryRpc, VersionInfo
from services.common.bus import ServiceRouter
from services.common.logging import get_logger
from services.registry.service import Registry

__all__ = ["create_router"]

log = get_logger(__name__)


def create_router(registry: Registry, nats: NatsConfig) -> ServiceRouter:
    """Everything the registry answers and consumes, handed to ``registry``.

    ``registry.durable_prefix`` names its JetStream consumers (``<prefix>-validated``...):
    every instance of one deployment must use the same prefix so that they share the work.
    """
    router = ServiceRouter(nats, service="registry")
    router.health()

    r = RegistryRpc
    router.rpc(r.CREATE_VERSION)(registry.create_version)
    router.rpc(r.GET_VERSION)(registry.get_version)
    router.rpc(r.LIST_VERSIONS)(registry.list_versions)
    router.rpc(r.GET_MODEL)(registry.get_model)
    router.rpc(r.LIST_MODELS)(registry.list_models)
    router.rpc(r.UPDATE_METADATA)(registry.update_metadata)
    router.rpc(r.SET_ALIAS)(registry.set_alias)
    router.rpc(r.DELETE_ALIAS)(registry.delete_alias)
    router.rpc(r.DELETE_VERSION)(registry.delete_version)
    router.rpc(r.GET_REPORTS)(registry.get_reports)
    router.rpc(r.PRUNE)(registry.prune)
    router.rpc(r.AUTHENTICATE)(registry.authenticate)
    router.rpc(r.CREATE_API_KEY)(registry.create_api_key)
    router.rpc(r.LIST_API_KEYS)(registry.list_api_keys)
    router.rpc(r.REVOKE_API_KEY)(registry.revoke_api_key)

    @router.rpc(CommandRpc.REGISTER_VERSION)
    async def register_version(cmd: RegisterVersionCommand) -> VersionInfo:
        """Register an artifact already uploaded (POST /api/v1/artifacts) as a new version;
        ``eaf.model.uploaded`` follows and validation starts."""
        log.info("command", command="register_version", actor=cmd.actor, model=cmd.model)
        uploaded = await registry.create_version(cmd.to_request())
        # The command's reply is the plain VersionInfo integrators parse.
        return VersionInfo.model_validate(
            uploaded.model_dump(exclude={"pruned", "retention_skipped"})
        )

    @router.rpc(CommandRpc.SET_ALIAS)
    async def set_alias(cmd: SetAliasCommand) -> AliasInfo:
        """Point an alias at a version (create it or move it atomically)."""
        log.info("command", command="set_alias", actor=cmd.actor, model=cmd.model)
        return await registry.set_alias(cmd.to_request())

    prefix = registry.durable_prefix
    router.consumer(ModelValidated, durable=f"{prefix}-validated")(registry.on_validated)
    router.consumer(ModelRejected, durable=f"{prefix}-rejected")(registry.on_rejected)
    router.consumer(ModelAnalyzed, durable=f"{prefix}-analyzed")(registry.on_analyzed)
    return router
