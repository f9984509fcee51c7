"""Artifacts by content hash, for services on hosts without the artifact store."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse

from schemas.base import WireModel
from schemas.ids import Sha256Hex
from services.api.auth import Deployer, Viewer
from services.api.deps import Ctx
from services.api.streaming import BINARY, receive_artifact, serve_plaintext, serve_stored

__all__ = ["StoredArtifact", "router"]

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])

ArtifactPath = Annotated[Sha256Hex, Path(description="SHA-256 (hex)")]


class StoredArtifact(WireModel):
    artifact_id: str
    size_bytes: int
    #: False when the same bytes were already stored.
    created: bool


_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("", status_code=201, response_model=StoredArtifact, openapi_extra=_BODY)
async def put_artifact(request: Request, ctx: Ctx, _: Deployer) -> StoredArtifact:
    """Store raw bytes (e.g. reference inputs/outputs) and return their artifact id; pass it
    as ``reference_artifact_id`` when uploading a version."""
    result = await receive_artifact(
        request, ctx.artifacts, max_bytes=ctx.settings.model_repository.max_upload_bytes
    )
    return StoredArtifact(
        artifact_id=result.info.artifact_id, size_bytes=result.info.size, created=result.created
    )


@router.head("/{artifact_id}", include_in_schema=False)
@router.get(
    "/{artifact_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {BINARY: {}}}, 206: {"description": "A byte range"}},
)
async def get_artifact(
    request: Request, ctx: Ctx, _: Viewer, artifact_id: ArtifactPath
) -> StreamingResponse:
    """The plaintext, decrypted as it streams, with ``Range`` support."""
    return await serve_plaintext(request, ctx.artifacts, artifact_id)


@router.head("/{artifact_id}/stored", include_in_schema=False)
@router.get(
    "/{artifact_id}/stored",
    response_class=StreamingResponse,
    responses={200: {"content": {BINARY: {}}}, 206: {"description": "A byte range"}},
)
async def get_stored_artifact(
    request: Request, ctx: Ctx, _: Deployer, artifact_id: ArtifactPath
) -> StreamingResponse:
    """The artifact file as stored (header and encrypted chunks), with ``Range`` support.

    Services that hold the key-encryption key read it like a local artifact store.
    """
    return await serve_stored(request, ctx.artifacts, artifact_id)
