"""Models and versions: upload, list, get, download, metadata, aliases, reports, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from schemas.api import AliasBody, MetadataPatch
from schemas.ids import AliasName, ModelName, SemVer, Sha256Hex, VersionRef
from schemas.registry import (
    MAX_OFFSET,
    MAX_PAGE_LIMIT,
    AliasInfo,
    CreateVersionRequest,
    DeleteAliasRequest,
    Deleted,
    DeleteVersionRequest,
    GetModelRequest,
    GetReportsRequest,
    GetVersionRequest,
    ListModelsRequest,
    ListVersionsRequest,
    ModelInfo,
    ModelPage,
    RegistryRpc,
    SetAliasRequest,
    UpdateMetadataRequest,
    UploadedVersion,
    VersionInfo,
    VersionMetadata,
    VersionPage,
    VersionReports,
    VersionStatus,
    WaitUntil,
    undecided,
)
from services.api.auth import Admin, Deployer, Viewer
from services.api.deps import Ctx
from services.api.streaming import BINARY, receive_artifact, serve_plaintext
from services.api.verdict import MAX_WAIT, wait_for_verdict
from services.common.errors import BadRequest, Conflict, NotFound, ServiceError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/models", tags=["models"])

S = RegistryRpc
ModelPath = Annotated[ModelName, Path(description="Model name")]
AliasPath = Annotated[AliasName, Path(description="Alias name")]
VersionPath = Annotated[SemVer, Path(description="Semantic version, e.g. 1.0.0")]
RefPath = Annotated[VersionRef, Path(description="A version or an alias")]
# The same bounds as the registry's request models, so the schema shows them and a bad
# value is a 422 naming the parameter before anything is asked of the registry.
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description=f"Items to skip (0 to {MAX_OFFSET})")
]
Limit = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE_LIMIT, description=f"Items per page (1 to {MAX_PAGE_LIMIT})"),
]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The model file's bytes, as they are (not multipart, not base64).",
        "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
    }
}


class _CallerGone(Exception):
    """The uploader hung up while the API waited for the verdict."""


def _properties(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"property {item!r} must look like key=value")
        out[key] = value
    return out


@router.put(
    "/{model}/versions/{version}",
    status_code=201,
    response_model=UploadedVersion,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a version (raw body, streamed)",
    responses={
        201: {
            "description": (
                "Stored. Without `wait`, `status` is `validating`; with `wait`, the "
                "verdict: `validated` (or `analyzed`) or `rejected` with `rejection_reason`"
            ),
            "headers": {"Location": {"description": "The version's URL"}},
        },
        202: {
            "model": UploadedVersion,
            "description": (
                "Stored, but the verdict did not come within `wait` seconds: the version is "
                "still `validating`; GET the `Location` to look at it later"
            ),
        },
    },
)
async def upload_version(
    request: Request,
    response: Response,
    ctx: Ctx,
    principal: Deployer,
    model: ModelPath,
    version: VersionPath,
    task: Annotated[str, Query(max_length=200)] = "",
    framework: Annotated[str, Query(max_length=100)] = "",
    description: Annotated[str, Query(max_length=10_000)] = "",
    tag: Annotated[list[str] | None, Query(description="Repeat for several tags")] = None,
    prop: Annotated[
        list[str] | None,
        Query(alias="property", description="key=value; repeat for several"),
    ] = None,
    source_url: Annotated[str, Query(max_length=2000)] = "",
    parent_version: str | None = None,
    reference_artifact_id: Annotated[Sha256Hex | None, Query()] = None,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT,
            description=(
                "Seconds to wait for the validator's verdict before answering (0: answer "
                f"once stored; at most {MAX_WAIT})"
            ),
        ),
    ] = 0,
    until: Annotated[
        WaitUntil,
        Query(description="With `wait`: `validated`, or `analyzed` to also wait for the analyzer"),
    ] = "validated",
) -> UploadedVersion:
    """Store the body as a new version of ``model``.

    The body is the model file itself (``Content-Type: application/octet-stream``, e.g.
    ``curl -T model.onnx``); metadata goes in the query. The bytes are hashed and
    encrypted as they arrive; the registry records the version once they are stored, and
    applies retention: ``pruned`` names the older versions it deleted.

    With ``wait=SECONDS`` the answer comes once the validator has decided (``201``, status
    ``validated`` or ``rejected``), or at the deadline with ``202`` and status
    ``validating``.
    """
    metadata = VersionMetadata(
        task=task,
        framework=framework,
        description=description,
        tags=tuple(tag or ()),
        properties=_properties(prop or []),
        source_url=source_url,
        parent_version=parent_version,
    )
    # Validate names and the version before reading a byte of the body.
    probe = CreateVersionRequest(
        model=model,
        version=version,
        artifact_id="0" * 64,
        size_bytes=0,
        metadata=metadata,
        uploaded_by=principal.name,
        reference_artifact_id=reference_artifact_id,
    )
    try:
        await ctx.call(S.GET_VERSION, GetVersionRequest(model=model, ref=version))
    except NotFound:
        pass
    else:
        raise Conflict(
            f"model {model!r} already has version {version}; versions are immutable, "
            "upload under a new version number"
        )
    stored = await receive_artifact(
        request, ctx.artifacts, max_bytes=ctx.settings.model_repository.max_upload_bytes
    )
    req = probe.model_copy(
        update={"artifact_id": stored.info.artifact_id, "size_bytes": stored.info.size}
    )
    try:
        created = await ctx.call(S.CREATE_VERSION, req)
    except ServiceError:
        if stored.created:
            # Only this request knew these bytes: do not leave an orphan behind.
            ctx.artifacts.delete(stored.info.artifact_id)
        raise
    response.headers["Location"] = str(
        request.url_for("get_version", model=model, ref=version).path
    )

    async def look() -> VersionInfo:
        if await request.is_disconnected():
            raise _CallerGone
        return await ctx.call(S.GET_VERSION, GetVersionRequest(model=model, ref=version))

    try:
        info = await wait_for_verdict(look, created, seconds=wait, until=until)
    except _CallerGone:
        info = created  # nobody reads the answer: stop asking the registry
    if wait > 0 and undecided(info.status, until):
        response.status_code = 202
    # The verdict's state of the version, with what retention did at the upload.
    return created.model_copy(update=dict(info)) if info is not created else created


@router.get("", response_model=ModelPage, summary="List models")
async def list_models(
    ctx: Ctx,
    _: Viewer,
    offset: Offset = 0,
    limit: Limit = 50,
    prefix: Annotated[str | None, Query(max_length=128)] = None,
    task: str | None = None,
    tag: str | None = None,
) -> ModelPage:
    return await ctx.call(
        S.LIST_MODELS,
        ListModelsRequest(offset=offset, limit=limit, prefix=prefix, task=task, tag=tag),
    )


@router.get("/{model}", response_model=ModelInfo, summary="Get a model")
async def get_model(ctx: Ctx, _: Viewer, model: ModelPath) -> ModelInfo:
    return await ctx.call(S.GET_MODEL, GetModelRequest(model=model))


@router.get("/{model}/versions", response_model=VersionPage, summary="List a model's versions")
async def list_versions(
    ctx: Ctx,
    _: Viewer,
    model: ModelPath,
    offset: Offset = 0,
    limit: Limit = 50,
    status: VersionStatus | None = None,
    tag: str | None = None,
) -> VersionPage:
    """Newest first (by sequence number)."""
    return await ctx.call(
        S.LIST_VERSIONS,
        ListVersionsRequest(model=model, offset=offset, limit=limit, status=status, tag=tag),
    )


@router.get("/{model}/versions/{ref}", response_model=VersionInfo, summary="Get a version")
async def get_version(ctx: Ctx, _: Viewer, model: ModelPath, ref: RefPath) -> VersionInfo:
    """By version number or by alias."""
    return await ctx.call(S.GET_VERSION, GetVersionRequest(model=model, ref=ref))


@router.head("/{model}/versions/{ref}/artifact", include_in_schema=False)
@router.get(
    "/{model}/versions/{ref}/artifact",
    response_class=StreamingResponse,
    responses={200: {"content": {BINARY: {}}}, 206: {"description": "A byte range"}},
    summary="Download a version's model file",
)
async def download_version(
    request: Request, ctx: Ctx, _: Viewer, model: ModelPath, ref: RefPath
) -> StreamingResponse:
    """The model file, decrypted as it streams; supports ``Range``.

    ``X-Content-SHA256`` and ``Repr-Digest`` carry the whole file's SHA-256.
    """
    info = await ctx.call(S.GET_VERSION, GetVersionRequest(model=model, ref=ref))
    return await serve_plaintext(
        request, ctx.artifacts, info.artifact_id, filename=f"{info.model}-{info.version}.onnx"
    )


@router.patch("/{model}/versions/{version}", response_model=VersionInfo, summary="Update metadata")
async def update_metadata(
    ctx: Ctx, _: Deployer, model: ModelPath, version: VersionPath, patch: MetadataPatch
) -> VersionInfo:
    """Fields left out stay as they are; ``properties`` and ``tags`` replace the old ones."""
    req = UpdateMetadataRequest(
        model=model, version=version, **patch.model_dump(exclude_unset=True)
    )
    return await ctx.call(S.UPDATE_METADATA, req)


@router.delete("/{model}/versions/{version}", response_model=Deleted, summary="Delete a version")
async def delete_version(
    ctx: Ctx, principal: Admin, model: ModelPath, version: VersionPath
) -> Deleted:
    """Refused (409) while an alias points to it or devices use it."""
    req = DeleteVersionRequest(model=model, version=version, deleted_by=principal.name)
    return await ctx.call(S.DELETE_VERSION, req)


@router.get("/{model}/versions/{ref}/reports", response_model=VersionReports, summary="Get reports")
async def get_reports(ctx: Ctx, _: Viewer, model: ModelPath, ref: RefPath) -> VersionReports:
    """The validation and analysis reports, as the validator and analyzer produced them."""
    return await ctx.call(S.GET_REPORTS, GetReportsRequest(model=model, ref=ref))


@router.put("/{model}/aliases/{alias}", response_model=AliasInfo, summary="Set or move an alias")
async def set_alias(
    ctx: Ctx, _: Deployer, model: ModelPath, alias: AliasPath, body: AliasBody
) -> AliasInfo:
    """Atomic: readers see the old target or the new one, never none."""
    req = SetAliasRequest(model=model, alias=alias, version=body.version)
    return await ctx.call(S.SET_ALIAS, req)


@router.delete(
    "/{model}/aliases/{alias}", status_code=204, response_class=Response, summary="Remove an alias"
)
async def delete_alias(ctx: Ctx, _: Deployer, model: ModelPath, alias: AliasPath) -> Response:
    await ctx.call(S.DELETE_ALIAS, DeleteAliasRequest(model=model, alias=alias))
    return Response(status_code=204)
