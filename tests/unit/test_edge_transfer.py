"""The device's transfer bookkeeping: when a broadcast device pulls, and the digest check."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from edge_runtime._state import StateDir
from edge_runtime._transfer import ChunkOutcome, Transfer
from edge_runtime.errors import TransferRefused
from modelkit.durable import atomic_write
from schemas.manifest import Manifest
from schemas.transfer import RejectionCode

CHUNK = 4096


def broadcast_transfer(tmp_path: Path, data: bytes) -> Transfer:
    now = int(time.time())
    count = -(-len(data) // CHUNK)
    manifest = Manifest.model_validate(
        {
            "device_id": "dev-1", "deployment_id": "d1", "model": "m", "version": "1.0.0",
            "sequence": 1, "issued_at": now, "expires_at": now + 60,
            "artifact_id": hashlib.sha256(data).hexdigest(), "size": len(data),
            "chunk_size": CHUNK, "chunk_count": count, "encrypted": False, "broadcast": True,
        }
    )  # fmt: skip
    return Transfer(StateDir(tmp_path), manifest, b"{}", None)


def chunk(data: bytes, index: int) -> bytes:
    return data[index * CHUNK : (index + 1) * CHUNK]


def test_a_broadcast_device_waits_until_the_broadcast_has_passed(tmp_path: Path) -> None:
    data = bytes(range(256)) * 80  # 5 chunks
    job = broadcast_transfer(tmp_path, data)
    artifact = job.manifest.artifact_id
    try:
        assert job.next_request(16) == []  # the broadcast is coming: nothing pulled
        # It subscribed late and heard chunks 2, 3 and the last one (4) of the broadcast.
        for i in (2, 3):
            assert job.accept(i, artifact, chunk(data, i)) is ChunkOutcome.NEW
            assert job.next_request(16) == []
        assert job.accept(4, artifact, chunk(data, 4)) is ChunkOutcome.NEW
        # The broadcast has passed: the missed chunks are pulled at once, not after a stall.
        assert job.next_request(16) == [0, 1]
        for i in (0, 1):
            job.accept(i, artifact, chunk(data, i))
        assert job.complete
    finally:
        job.close()


def test_a_stall_starts_pulling_when_the_broadcast_never_comes(tmp_path: Path) -> None:
    data = b"x" * (3 * CHUNK)
    job = broadcast_transfer(tmp_path, data)
    try:
        assert job.next_request(16) == []
        assert job.stalled(0.0)
        assert job.next_request(16) == [0, 1, 2]
    finally:
        job.close()


def test_out_of_order_chunks_hash_to_the_artifact_id(tmp_path: Path) -> None:
    data = bytes(range(256)) * 70  # 5 chunks, the last one short
    job = broadcast_transfer(tmp_path, data)
    artifact = job.manifest.artifact_id
    for i in (3, 1, 4, 0, 2):
        assert job.accept(i, artifact, chunk(data, i)) is ChunkOutcome.NEW
    path = asyncio.run(job.finish())
    assert path.read_bytes() == data


def test_a_resumed_transfer_hashes_what_it_has_on_disk(tmp_path: Path) -> None:
    data = bytes(range(256)) * 70
    first = broadcast_transfer(tmp_path, data)
    artifact = first.manifest.artifact_id
    for i in (0, 2, 3):
        first.accept(i, artifact, chunk(data, i))
    first.close()  # a restart: the bitmap and the part file stay
    again = Transfer(first.state, first.manifest, b"{}", None)
    assert again.missing() == [1, 4]
    for i in (4, 1):
        again.accept(i, artifact, chunk(data, i))
    assert asyncio.run(again.finish()).read_bytes() == data


def test_bytes_that_do_not_match_the_manifest_fail_the_digest(tmp_path: Path) -> None:
    data = bytes(range(256)) * 70
    job = broadcast_transfer(tmp_path, data)
    artifact = job.manifest.artifact_id
    wrong = bytearray(data)
    wrong[5000] ^= 1  # unencrypted here, so nothing but the digest can notice
    for i in range(5):
        job.accept(i, artifact, chunk(bytes(wrong), i))
    with pytest.raises(TransferRefused) as caught:
        asyncio.run(job.finish())
    assert caught.value.code is RejectionCode.DIGEST_MISMATCH


def synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What ``os.fsync`` is called on from now, by path (the real call still happens)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_state_files_and_the_installed_model_are_synced_with_their_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rename is in the directory's metadata only: without the directory's own sync a
    # power loss may bring back the old name after the device reported the new one.
    synced = synced_paths(monkeypatch)
    state = tmp_path / "state"
    atomic_write(state / "installed.json", b"{}")
    assert synced[-2].endswith(".tmp") and synced[-1] == str(state)  # bytes, then the name

    data = bytes(range(256)) * 40
    job = broadcast_transfer(tmp_path, data)
    for i in range(-(-len(data) // CHUNK)):
        job.accept(i, job.manifest.artifact_id, chunk(data, i))
    synced.clear()
    path = asyncio.run(job.finish())
    # The first install: the models directory, then the state directory that now holds it.
    assert synced[-2:] == [str(path.parent), str(path.parent.parent)]
