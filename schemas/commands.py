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

from typing import Annotated, NamedTuple

from pydantic import BaseModel, Field, model_validator

from schemas._base import WireModel
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

__all__ = [
    "COMMANDS",
    "Actor",
    "CommandSpec",
    "CommandSubjects",
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


class CommandSubjects:
    """The subjects commands are sent to."""

    REGISTER_VERSION = "eaf.cmd.model.register_version"
    SET_ALIAS = "eaf.cmd.model.set_alias"
    CREATE_DEPLOYMENT = "eaf.cmd.deployment.create"
    PAUSE_DEPLOYMENT = "eaf.cmd.deployment.pause"
    RESUME_DEPLOYMENT = "eaf.cmd.deployment.resume"
    CANCEL_DEPLOYMENT = "eaf.cmd.deployment.cancel"
    ROLLBACK_DEPLOYMENT = "eaf.cmd.deployment.rollback"


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


class CommandSpec(NamedTuple):
    """What one command subject takes and answers."""

    request: type[BaseModel]
    reply: type[BaseModel]
    summary: str
    #: The service that owns the action and answers the command.
    service: str


S = CommandSubjects
#: Every command: subject -> (command, reply, summary, service).
COMMANDS: dict[str, CommandSpec] = {
    S.REGISTER_VERSION: CommandSpec(
        RegisterVersionCommand,
        VersionInfo,
        "Register an uploaded artifact as a version",
        "registry",
    ),
    S.SET_ALIAS: CommandSpec(SetAliasCommand, AliasInfo, "Set or move an alias", "registry"),
    S.CREATE_DEPLOYMENT: CommandSpec(
        CreateDeploymentCommand, DeploymentInfo, "Start a deployment", "deployer"
    ),
    S.PAUSE_DEPLOYMENT: CommandSpec(
        DeploymentCommand, DeploymentInfo, "Pause a deployment", "deployer"
    ),
    S.RESUME_DEPLOYMENT: CommandSpec(
        DeploymentCommand, DeploymentInfo, "Resume a paused deployment", "deployer"
    ),
    S.CANCEL_DEPLOYMENT: CommandSpec(
        DeploymentCommand, DeploymentInfo, "Cancel a deployment's unfinished targets", "deployer"
    ),
    S.ROLLBACK_DEPLOYMENT: CommandSpec(
        RollbackCommand,
        DeploymentInfo,
        "Roll a deployment's devices back (answers the rollback deployment)",
        "deployer",
    ),
}
