"""Commands integrators send on the bus (``eaf.cmd.>``), request/reply on core NATS.

A command does exactly what the same action does through the REST API: the service that
owns the action runs the same function for both, so the effect and the events are the
same. Each command names an ``actor`` (who or what sent it: a pipeline, a release job),
recorded as the creator where the action records one. Who *may* send a command is decided
by the NATS server's permissions (only the ``integrator`` user, see ``nats/``), not by
the message.

The reply is the action's result (the model named in ``COMMANDS``) or an
``RpcErrorReply`` (``schemas/rpc.py``): ``invalid`` (422) for a command that does not
parse, and the REST API's codes (``not_found``, ``conflict``, ...) for the rest.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from schemas.base import WireModel
from schemas.deployer import CreateDeployment, DeploymentInfo, RequestId, RollbackRequest
from schemas.ids import AliasName, DeploymentId, ModelName, SemVer, Sha256Hex
from schemas.registry import (
    AliasInfo,
    CreateVersionRequest,
    SetAliasRequest,
    SizeBytes,
    VersionInfo,
    VersionMetadata,
)
from schemas.rpc import Rpc

__all__ = [
    "COMMANDS",
    "Actor",
    "CommandRpc",
    "CreateDeploymentCommand",
    "DeploymentCommand",
    "RegisterVersionCommand",
    "RollbackCommand",
    "SetAliasCommand",
]

#: Who sent a command, e.g. ``ci:release-pipeline`` or ``jane@example.com``.
Actor = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}$",
        examples=["ci:training-pipeline"],
        description="Who sent the command (a pipeline, a job, a person); kept for lineage.",
    ),
]


class RegisterVersionCommand(WireModel):
    """Register an artifact already uploaded (``POST /api/v1/artifacts``) as a new version.

    Same as uploading through ``PUT /api/v1/models/{model}/versions/{version}``: the
    version is recorded, ``eaf.model.uploaded`` is published and validation starts.
    """

    actor: Actor
    model: ModelName
    version: SemVer
    #: SHA-256 (hex) of the model file, as ``POST /api/v1/artifacts`` answered it.
    artifact_id: Sha256Hex
    #: The file's size: a check that the stored artifact is the one meant.
    size_bytes: SizeBytes
    metadata: VersionMetadata = VersionMetadata()
    reference_artifact_id: Sha256Hex | None = None

    def to_request(self) -> CreateVersionRequest:
        """The registry's request for this command; the actor is the uploader."""
        return CreateVersionRequest(
            model=self.model,
            version=self.version,
            artifact_id=self.artifact_id,
            size_bytes=self.size_bytes,
            metadata=self.metadata,
            uploaded_by=self.actor,
            reference_artifact_id=self.reference_artifact_id,
        )


class SetAliasCommand(WireModel):
    """Point ``alias`` at ``version`` (create it, or move it atomically)."""

    actor: Actor
    model: ModelName
    alias: AliasName
    version: SemVer

    def to_request(self) -> SetAliasRequest:
        """The registry's request for this command."""
        return SetAliasRequest(model=self.model, alias=self.alias, version=self.version)


class CreateDeploymentCommand(CreateDeployment):
    """Start a deployment: the fields of ``POST /api/v1/deployments`` plus ``actor``.

    ``created_by`` is not accepted: the actor is recorded as the creator. With
    ``request_id`` (an idempotency key), sending the same command again answers the
    deployment the first one started instead of starting another; the same key with other
    fields (or another actor) is refused with ``conflict``. Keys are kept 24 h.
    """

    actor: Actor

    @model_validator(mode="after")
    def _creator_is_the_actor(self) -> CreateDeploymentCommand:
        if self.created_by:
            raise ValueError(
                "created_by is not accepted in a command: the actor is recorded as the creator"
            )
        return self

    def to_request(self) -> CreateDeployment:
        """The deployer's request for this command; the actor is the creator."""
        fields = self.model_dump(exclude={"actor", "created_by"})
        return CreateDeployment.model_validate({**fields, "created_by": self.actor})


class DeploymentCommand(WireModel):
    """Pause, resume, cancel or roll back one deployment."""

    actor: Actor
    deployment_id: DeploymentId


class RollbackCommand(DeploymentCommand):
    """Roll one deployment's devices back to their previous model.

    With ``request_id`` (an idempotency key), sending the same command again answers the
    rollback deployment the first one started; the same key used for another request is
    refused with ``conflict``. Keys are kept 24 h.
    """

    request_id: RequestId | None = None

    def to_request(self) -> RollbackRequest:
        """The deployer's request for this command."""
        return RollbackRequest(deployment_id=self.deployment_id, request_id=self.request_id)


class CommandRpc:
    """The commands, each with the service that owns the action and answers it."""

    REGISTER_VERSION = Rpc(
        "eaf.cmd.model.register_version",
        RegisterVersionCommand,
        VersionInfo,
        "registry",
        "Register an uploaded artifact as a version",
    )
    SET_ALIAS = Rpc(
        "eaf.cmd.model.set_alias", SetAliasCommand, AliasInfo, "registry", "Set or move an alias"
    )
    CREATE_DEPLOYMENT = Rpc(
        "eaf.cmd.deployment.create",
        CreateDeploymentCommand,
        DeploymentInfo,
        "deployer",
        "Start a deployment",
    )
    PAUSE_DEPLOYMENT = Rpc(
        "eaf.cmd.deployment.pause",
        DeploymentCommand,
        DeploymentInfo,
        "deployer",
        "Pause a deployment",
    )
    RESUME_DEPLOYMENT = Rpc(
        "eaf.cmd.deployment.resume",
        DeploymentCommand,
        DeploymentInfo,
        "deployer",
        "Resume a paused deployment",
    )
    CANCEL_DEPLOYMENT = Rpc(
        "eaf.cmd.deployment.cancel",
        DeploymentCommand,
        DeploymentInfo,
        "deployer",
        "Cancel a deployment's unfinished targets",
    )
    ROLLBACK_DEPLOYMENT = Rpc(
        "eaf.cmd.deployment.rollback",
        RollbackCommand,
        DeploymentInfo,
        "deployer",
        "Roll a deployment's devices back (answers the rollback deployment)",
    )


#: Every command, in the order the AsyncAPI document lists them.
COMMANDS: tuple[Rpc[Any, Any], ...] = (
    CommandRpc.REGISTER_VERSION,
    CommandRpc.SET_ALIAS,
    CommandRpc.CREATE_DEPLOYMENT,
    CommandRpc.PAUSE_DEPLOYMENT,
    CommandRpc.RESUME_DEPLOYMENT,
    CommandRpc.CANCEL_DEPLOYMENT,
    CommandRpc.ROLLBACK_DEPLOYMENT,
)
