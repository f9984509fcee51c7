"""Reading artifacts through the API on a host without the store: cache, resume, checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from edgeaiforge import Model, ModelManager, ModelMetadata
from services.common.keys import load_kek
from services.common.remote_artifacts import (
    RemoteArtifactError,
    RemoteArtifactIntegrityError,
    RemoteArtifacts,
)
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings

CHUNK = 262_144


async def test_plaintext_and_stored_forms_through_the_api(
    tmp_path: Path, nats_server: Any, unique_id: Any
) -> None:
    settings = platform_settings(tmp_path / "server", nats_url=nats_server.url)
    data = os.urandom(CHUNK * 3 + 99)
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    with serve_in_thread(settings) as url:
        token = create_api_key(settings, role="deployer")
        with ModelManager(url, token) as mm:
            info = mm.add_model(Model(unique_id("m"), src), ModelMetadata("t", "1.0.0"), wait=False)
        aid = info.artifact_id
        cache = tmp_path / "elsewhere"
        async with RemoteArtifacts(
            base_url=url, token=token, cache_dir=cache, chunk_size=CHUNK
        ) as remote:
            # An interrupted earlier attempt left the first bytes: only the rest is fetched.
            part = cache / "plain" / aid[:2] / f"{aid}.part"
            part.parent.mkdir(parents=True)
            part.write_bytes(data[:1000])
            path = await remote.plaintext(aid)
            assert path.read_bytes() == data and not part.exists()
            assert await remote.plaintext(aid) == path  # from the cache

            await remote.stored(aid)
            local = remote.store(load_kek(settings.security))
            chunks = [p async for p in local.iter_plaintext(aid)]
            assert hashlib.sha256(b"".join(chunks)).hexdigest() == aid
            server_copy = settings.model_repository.storage_path / aid[:2] / aid
            assert (await local.read_chunk(local.info(aid), 1)) == server_copy.read_bytes()[
                96 + CHUNK + 16 : 96 + 2 * (CHUNK + 16)
            ]

            # A wrong earlier part file is caught by the hash and not cached.
            other = "ab" * 32
            with pytest.raises(RemoteArtifactError, match="404"):
                await remote.plaintext(other)
            bad_part = cache / "plain" / aid[:2] / f"{aid}.part"
            (cache / "plain" / aid[:2] / aid).unlink()
            bad_part.write_bytes(b"x" * 1000)
            with pytest.raises(RemoteArtifactIntegrityError):
                await remote.plaintext(aid)
            assert not (cache / "plain" / aid[:2] / aid).exists()

        async with RemoteArtifacts(
            base_url=url, token="eaf_000000000000_" + "A" * 43, cache_dir=cache, chunk_size=CHUNK
        ) as intruder:
            with pytest.raises(RemoteArtifactError, match="401"):
                await intruder.stored(os.urandom(32).hex())
