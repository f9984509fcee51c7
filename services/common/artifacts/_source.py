"""Where services read artifacts from: the store on the registry's host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from schemas.config import Settings
from services.common.artifacts._store import ArtifactStore
from services.common.keys import load_kek

__all__ = ["ArtifactSource", "open_artifacts"]


class ArtifactSource(Protocol):
    """Anything that yields an artifact's plaintext (the local store, or a remote cache)."""

    def iter_plaintext(self, artifact_id: str) -> AsyncIterator[bytes]: ...


def open_artifacts(settings: Settings) -> ArtifactSource:
    """The artifact store on the registry's host (``model_repository.storage_path``)."""
    return ArtifactStore(
        root=Path(settings.model_repository.storage_path),
        kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )
