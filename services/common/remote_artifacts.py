"""Artifacts for hosts without ``storage_path``: read through the API into a local cache.

The cache is keyed by content hash, so an entry never goes stale. Two forms:

- ``plaintext(artifact_id)``: the model file (``GET /api/v1/artifacts/{id}``), checked
  against its SHA-256 before it enters the cache;
- ``stored(artifact_id)``: the artifact exactly as stored (``GET .../stored``: header and
  encrypted chunks), laid out like an artifact store, so ``store(kek)`` reads its chunks
  (the ciphertext devices receive) and decrypts them like the registry's own store.

Interrupted downloads resume with an HTTP ``Range`` from the ``.part`` file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import httpx

from schemas.config import Settings
from schemas.topics import validate_artifact_id
from services.common.artifacts import ArtifactError, ArtifactStore
from services.common.keys import KeyRing

__all__ = [
    "RemoteArtifactError",
    "RemoteArtifactIntegrityError",
    "RemoteArtifacts",
]

_PIECE = 1024 * 1024


class RemoteArtifactError(Exception):
    """Root: an artifact could not be fetched through the API."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"artifact {artifact_id} could not be fetched from the API: {reason}")


class RemoteArtifactIntegrityError(RemoteArtifactError):
    """What arrived is not the artifact (hash or length mismatch); nothing was cached."""


class RemoteArtifacts:
    """A read-through cache of artifacts served by the API at ``base_url``."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        cache_dir: Path,
        chunk_size: int,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = cache_dir
        self.chunk_size = chunk_size
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        self._locks: dict[str, asyncio.Lock] = {}
        (cache_dir / "plain").mkdir(parents=True, exist_ok=True)
        (cache_dir / "stored" / "tmp").mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteArtifacts:
        """From ``model_repository.artifact_url``/``cache_path`` and ``api.service_token``."""
        repo = settings.model_repository
        if not repo.artifact_url:
            raise ValueError("model_repository.artifact_url is not set")
        token = settings.api.service_token
        return cls(
            base_url=repo.artifact_url,
            token=token.get_secret_value() if token else "",
            cache_dir=repo.cache_path,
            chunk_size=settings.deployment.chunk_size,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> RemoteArtifacts:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def store(self, kek: KeyRing | bytes | None) -> ArtifactStore:
        """An ``ArtifactStore`` over the cached stored-form artifacts (fetch them first)."""
        return ArtifactStore(root=self.cache_dir / "stored", kek=kek, chunk_size=self.chunk_size)

    async def plaintext(self, artifact_id: str) -> Path:
        """The model file, from the cache or fetched and verified first."""
        validate_artifact_id(artifact_id)
        final = self.cache_dir / "plain" / artifact_id[:2] / artifact_id
        async with self._lock(artifact_id + ":plain"):
            if final.is_file():
                return final
            part = await self._fetch(f"/api/v1/artifacts/{artifact_id}", final, artifact_id)
            digest = await asyncio.to_thread(_sha256, part)
            if digest != artifact_id:
                part.unlink(missing_ok=True)
                raise RemoteArtifactIntegrityError(artifact_id, f"content hashes to {digest}")
            os.replace(part, final)
            return final

    async def stored(self, artifact_id: str) -> Path:
        """The stored form (header + encrypted chunks), from the cache or fetched first.

        Its header and length are checked here; every chunk is authenticated when read.
        """
        validate_artifact_id(artifact_id)
        root = self.cache_dir / "stored"
        final = root / artifact_id[:2] / artifact_id
        async with self._lock(artifact_id + ":stored"):
            if final.is_file():
                return final
            part = await self._fetch(f"/api/v1/artifacts/{artifact_id}/stored", final, artifact_id)
            os.replace(part, final)
            try:
                self.store(None).info(artifact_id)
            except ArtifactError as exc:
                final.unlink(missing_ok=True)
                raise RemoteArtifactIntegrityError(artifact_id, str(exc)) from None
            return final

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _fetch(self, path: str, final: Path, artifact_id: str) -> Path:
        """Download into ``<final>.part``, resuming what an earlier attempt left."""
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            async with self._client.stream("GET", path, headers=headers) as response:
                if response.status_code == 416 and have:
                    return part  # the part file is already complete
                if response.status_code not in (200, 206):
                    await response.aread()
                    raise RemoteArtifactError(
                        artifact_id, f"HTTP {response.status_code}: {response.text[:300]}"
                    )
                mode = "ab" if response.status_code == 206 else "wb"
                expected = int(response.headers.get("content-length", "-1"))
                got = 0
                f = await asyncio.to_thread(open, part, mode)
                try:
                    async for piece in response.aiter_bytes(_PIECE):
                        await asyncio.to_thread(f.write, piece)
                        got += len(piece)
                finally:
                    await asyncio.to_thread(f.close)
                if expected >= 0 and got != expected:
                    raise RemoteArtifactError(artifact_id, f"got {got} of {expected} bytes")
        except httpx.TransportError as exc:
            # The part file stays: the next attempt resumes where this one stopped.
            raise RemoteArtifactError(artifact_id, f"{type(exc).__name__}: {exc}") from None
        return part


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(_PIECE):
            sha.update(piece)
    return sha.hexdigest()
