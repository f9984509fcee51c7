"""Request/reply models of the model registry (``eaf.rpc.registry.*``) and the retention
contract the deployer serves (``eaf.rpc.deployer.versions_in_use``).

Names, aliases and versions are the shared types of ``schemas.ids``, checked here, so a
bad name is refused before any I/O.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field

from schemas.base import WireModel
from schemas.ids import AliasName, ModelName, SemVer, Sha256Hex, VersionRef
from schemas.rpc import Rpc

__all__ = [
    "MAX_OFFSET",
    "MAX_PAGE_LIMIT",
    "AliasInfo",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "ApiKeyList",
    "ApiRole",
    "AuthenticateRequest",
    "CreateApiKeyRequest",
    "CreateVersionRequest",
    "DeleteAliasRequest",
    "DeleteVersionRequest",
    "Deleted",
    "GetModelRequest",
    "GetReportsRequest",
    "GetVersionRequest",
    "ListApiKeysRequest",
    "ListModelsRequest",
    "ListVersionsRequest",
    "MetadataPatch",
    "ModelInfo",
    "ModelPage",
    "PageLimit",
    "PageOffset",
    "Principal",
    "PruneRequest",
    "PruneResult",
    "RegistryRpc",
    "RevokeApiKeyRequest",
    "SetAliasRequest",
    "SizeBytes",
    "UpdateMetadataRequest",
    "UploadedVersion",
    "VersionInUse",
    "VersionInfo",
    "VersionMetadata",
    "VersionPage",
    "VersionReports",
    "VersionStatus",
    "VersionsInUseReply",
    "VersionsInUseRequest",
    "WaitUntil",
    "is_deployable",
    "is_pending",
    "undecided",
]


#: The largest page offset: PostgreSQL's and SQLite's integers hold it (and JSON clients'
#: doubles), and no listing has two billion rows. One past int64 used to reach SQL and fail
#: there as an OverflowError (a 500).
MAX_OFFSET = 2**31 - 1
#: The most items one page returns.
MAX_PAGE_LIMIT = 500
PageOffset = Annotated[
    int, Field(ge=0, le=MAX_OFFSET, description="Items to skip (0 to 2147483647)")
]
PageLimit = Annotated[
    int, Field(ge=1, le=MAX_PAGE_LIMIT, description=f"Items per page (1 to {MAX_PAGE_LIMIT})")
]
#: A file size in bytes: what a BIGINT column holds.
SizeBytes = Annotated[int, Field(ge=0, le=2**63 - 1)]
Tag = Annotated[str, Field(min_length=1, max_length=64)]
PropertyKey = Annotated[str, Field(min_length=1, max_length=128)]


class VersionStatus(StrEnum):
    """Where a version is in its checks: uploaded → validating → validated | rejected → analyzed."""

    UPLOADED = "uploaded"
    VALIDATING = "validating"
    VALIDATED = "validated"
    REJECTED = "rejected"
    ANALYZED = "analyzed"


def is_pending(status: VersionStatus) -> bool:
    """Is the validator's verdict on a version still to come?"""
    return status in (VersionStatus.UPLOADED, VersionStatus.VALIDATING)


def is_deployable(status: VersionStatus) -> bool:
    """May a version in ``status`` be deployed (validated, and perhaps analysed)?"""
    return status in (VersionStatus.VALIDATED, VersionStatus.ANALYZED)


#: What an upload may wait for: ``validated`` (what a deployment needs), or ``analyzed``
#: (also the analyzer's report: parameters, latency, device requirements).
WaitUntil = Literal["validated", "analyzed"]


def undecided(status: VersionStatus, until: WaitUntil) -> bool:
    """Is what a waiting uploader asked for still to come for a version in ``status``?"""
    if is_pending(status):
        return True
    return until == "analyzed" and status is VersionStatus.VALIDATED


class VersionMetadata(WireModel):
    """What the uploader tells about a version. Lineage is ``source_url`` and
    ``parent_version``; who uploaded it and when are recorded by the registry."""

    task: str = Field(default="", max_length=200, examples=["Image Classification"])
    framework: str = Field(default="", max_length=100, examples=["pytorch"])
    description: str = Field(default="", max_length=10_000)
    tags: tuple[Tag, ...] = Field(default=(), max_length=64)
    properties: dict[PropertyKey, Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=dict, max_length=128
    )
    #: Where the model came from: a training run, a repository, a URL.
    source_url: str = Field(default="", max_length=2000)
    parent_version: SemVer | None = None


class VersionInfo(WireModel):
    """One version of a model as the registry knows it."""

    model: ModelName
    version: str
    #: Per-model upload order (1, 2, ...): "newest" in listings and retention. Not the
    #: manifest's ``sequence``, which the deployer issues per deployment (rollbacks too).
    sequence: int
    artifact_id: Sha256Hex
    size_bytes: int
    status: VersionStatus
    metadata: VersionMetadata
    uploaded_by: str
    uploaded_at: AwareDatetime
    status_changed_at: AwareDatetime
    aliases: tuple[str, ...] = ()
    rejection_reason: str = ""
    reference_artifact_id: Sha256Hex | None = None


class UploadedVersion(VersionInfo):
    """The answer to an upload: the new version, and what retention did because of it."""

    #: Older versions this upload pushed out (``max_versions_per_model``), oldest first.
    pruned: tuple[str, ...] = ()
    #: Why retention was put off for now (it runs again in the registry's sweep); "" if not.
    retention_skipped: str = ""


class ModelInfo(WireModel):
    name: ModelName
    created_at: AwareDatetime
    updated_at: AwareDatetime
    version_count: int
    latest_version: str | None
    latest_sequence: int
    #: What a deployment without a version takes: the newest version by upload sequence
    #: that is validated or analyzed (never a rejected one, nor one still validating).
    deployable_version: str | None = None
    #: alias → version
    aliases: dict[str, str]
    task: str = ""
    tags: tuple[str, ...] = ()


class Page(WireModel):
    total: int
    offset: int
    limit: int


class ModelPage(Page):
    items: tuple[ModelInfo, ...]


class VersionPage(Page):
    items: tuple[VersionInfo, ...]


class AliasInfo(WireModel):
    model: ModelName
    alias: str
    version: str
    #: The version the alias pointed to before, if any.
    previous_version: str | None = None


class VersionReports(WireModel):
    """Reports as the validator and analyzer sent them (``schemas.reports`` shapes)."""

    model: ModelName
    version: str
    status: VersionStatus
    validation: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    rejection_reason: str = ""


class Deleted(WireModel):
    model: ModelName
    version: str | None = None
    alias: str | None = None
    #: True when the artifact file went too (no other version used it).
    artifact_deleted: bool = False


# ---- requests ------------------------------------------------------------------------


class CreateVersionRequest(WireModel):
    """Sent by the API after the bytes are safely in the artifact store."""

    model: ModelName
    version: SemVer
    artifact_id: Sha256Hex
    size_bytes: SizeBytes
    metadata: VersionMetadata = VersionMetadata()
    uploaded_by: str = Field(default="", max_length=200)
    reference_artifact_id: Sha256Hex | None = None


class GetVersionRequest(WireModel):
    model: ModelName
    #: A version or an alias.
    ref: VersionRef


class ListVersionsRequest(WireModel):
    model: ModelName
    offset: PageOffset = 0
    limit: PageLimit = 50
    status: VersionStatus | None = None
    tag: str | None = None


class GetModelRequest(WireModel):
    model: ModelName


class ListModelsRequest(WireModel):
    offset: PageOffset = 0
    limit: PageLimit = 50
    #: Models whose name starts with this.
    prefix: str | None = None
    #: Models with at least one version of this task (exact match).
    task: str | None = None
    #: Models with at least one version carrying this tag.
    tag: str | None = None


class MetadataPatch(WireModel):
    """A change to a version's metadata (also the body of ``PATCH
    /api/v1/models/{model}/versions/{version}``): fields left ``None`` stay as they are;
    ``properties`` and ``tags`` replace the old ones whole."""

    task: str | None = Field(default=None, max_length=200)
    framework: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=10_000)
    tags: tuple[Tag, ...] | None = Field(default=None, max_length=64)
    properties: dict[PropertyKey, Annotated[str, Field(max_length=2000)]] | None = Field(
        default=None, max_length=128
    )
    source_url: str | None = Field(default=None, max_length=2000)


class UpdateMetadataRequest(MetadataPatch):
    """A ``MetadataPatch`` for one version."""

    model: ModelName
    version: SemVer


class SetAliasRequest(WireModel):
    model: ModelName
    alias: AliasName
    version: SemVer


class DeleteAliasRequest(WireModel):
    model: ModelName
    alias: AliasName


class DeleteVersionRequest(WireModel):
    model: ModelName
    version: SemVer
    deleted_by: str = ""


class GetReportsRequest(WireModel):
    model: ModelName
    ref: VersionRef


class PruneRequest(WireModel):
    """Apply retention now to one model (or every model)."""

    model: ModelName | None = None


class PruneResult(WireModel):
    deleted: tuple[VersionInfo, ...] = ()
    #: Models whose pruning was skipped this round, with the reason.
    skipped: dict[str, str] = Field(default_factory=dict)


# ---- API keys ------------------------------------------------------------------------

ApiRole = Literal["admin", "deployer", "viewer"]


class Principal(WireModel):
    """Who is calling: the API key's id, name and role."""

    key_id: str
    name: str
    role: ApiRole


class AuthenticateRequest(WireModel):
    token: str = Field(max_length=512)


class CreateApiKeyRequest(WireModel):
    name: str = Field(min_length=1, max_length=200)
    role: ApiRole
    created_by: str = ""
    #: Days until the key expires; absent: ``api.key_lifetime_days``; 0: it never expires.
    lifetime_days: int | None = Field(default=None, ge=0, le=36_500)


class ApiKeyInfo(WireModel):
    key_id: str
    name: str
    role: ApiRole
    created_at: AwareDatetime
    created_by: str
    revoked_at: datetime | None = None
    #: When the key stops working; ``None``: never (unless ``api.unexpiring_key_max_age_days``).
    expires_at: datetime | None = None


class ApiKeyCreated(WireModel):
    key: ApiKeyInfo
    #: The bearer token. Shown once: only its hash is stored.
    token: str


class ListApiKeysRequest(WireModel):
    include_revoked: bool = False


class ApiKeyList(WireModel):
    items: tuple[ApiKeyInfo, ...]


class RevokeApiKeyRequest(WireModel):
    key_id: str = Field(max_length=64)


# ---- retention contract: served by the deployer -------------------------------------


class VersionsInUseRequest(WireModel):
    """Ask the deployer which versions devices need; ``model=None`` asks for all models."""

    model: ModelName | None = None


class VersionInUse(WireModel):
    model: ModelName
    version: str
    #: ``active``: runs on a device; ``rollback_target``: a device's previous model;
    #: ``deploying``: named by a deployment that is not finished.
    reason: Literal["active", "rollback_target", "deploying"]


class VersionsInUseReply(WireModel):
    versions: tuple[VersionInUse, ...] = ()


class RegistryRpc:
    """What the registry answers on ``eaf.rpc.registry.*``."""

    CREATE_VERSION = Rpc.of(
        "registry",
        "create_version",
        CreateVersionRequest,
        UploadedVersion,
        "Record a stored version; applies retention",
    )
    GET_VERSION = Rpc.of(
        "registry", "get_version", GetVersionRequest, VersionInfo, "A version or an alias"
    )
    LIST_VERSIONS = Rpc.of(
        "registry", "list_versions", ListVersionsRequest, VersionPage, "A model's versions"
    )
    GET_MODEL = Rpc.of("registry", "get_model", GetModelRequest, ModelInfo, "One model")
    LIST_MODELS = Rpc.of("registry", "list_models", ListModelsRequest, ModelPage, "Models, a page")
    UPDATE_METADATA = Rpc.of(
        "registry",
        "update_metadata",
        UpdateMetadataRequest,
        VersionInfo,
        "Patch a version's metadata",
    )
    SET_ALIAS = Rpc.of("registry", "set_alias", SetAliasRequest, AliasInfo, "Set or move an alias")
    DELETE_ALIAS = Rpc.of(
        "registry", "delete_alias", DeleteAliasRequest, Deleted, "Remove an alias"
    )
    DELETE_VERSION = Rpc.of(
        "registry", "delete_version", DeleteVersionRequest, Deleted, "Delete a version"
    )
    GET_REPORTS = Rpc.of(
        "registry",
        "get_reports",
        GetReportsRequest,
        VersionReports,
        "Validation and analysis reports",
    )
    PRUNE = Rpc.of("registry", "prune", PruneRequest, PruneResult, "Apply retention now")
    AUTHENTICATE = Rpc.of(
        "registry", "authenticate", AuthenticateRequest, Principal, "Who an API key is"
    )
    CREATE_API_KEY = Rpc.of(
        "registry", "create_api_key", CreateApiKeyRequest, ApiKeyCreated, "A new API key"
    )
    LIST_API_KEYS = Rpc.of("registry", "list_api_keys", ListApiKeysRequest, ApiKeyList, "API keys")
    REVOKE_API_KEY = Rpc.of(
        "registry", "revoke_api_key", RevokeApiKeyRequest, ApiKeyInfo, "Revoke an API key"
    )
