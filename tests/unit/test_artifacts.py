"""The artifact store: content addressing, encryption at rest, damage is never served."""

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import crypto
from services.common.artifacts import (
    HEADER_LEN,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactStore,
    ArtifactTooLargeError,
    _writer,
)

CHUNK = 4096


async def stream(data: bytes, piece: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def read_all(store: ArtifactStore, aid: str, **kw: int) -> bytes:
    return b"".join([p async for p in store.iter_plaintext(aid, **kw)])


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(root=tmp_path / "models", kek=os.urandom(32), chunk_size=CHUNK)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK, 37 * CHUNK + 5])
async def test_round_trip_any_size(store: ArtifactStore, size: int) -> None:
    data = os.urandom(size)
    result = await store.put(stream(data))
    assert result.created
    assert result.info.artifact_id == hashlib.sha256(data).hexdigest()
    assert result.info.size == size
    assert await read_all(store, result.info.artifact_id) == data
    await store.verify(result.info.artifact_id)


async def test_ranges(store: ArtifactStore) -> None:
    data = os.urandom(5 * CHUNK + 123)
    aid = (await store.put(stream(data))).info.artifact_id
    for start, end in [
        (0, 1),
        (CHUNK - 1, CHUNK + 1),
        (100, 4 * CHUNK + 7),
        (len(data) - 5, 10**9),
    ]:
        assert await read_all(store, aid, start=start, end=end) == data[start:end]


async def test_same_bytes_stored_once(store: ArtifactStore) -> None:
    data = os.urandom(3 * CHUNK)
    first = await store.put(stream(data))
    second = await store.put(stream(data, piece=777))
    assert first.created and not second.created
    files = [
        p
        for p in store.root.rglob("*")
        if p.is_file() and p.relative_to(store.root).parts[0] != "tmp"
    ]
    assert len(files) == 1
    assert not list((store.root / "tmp").iterdir())


async def test_plaintext_is_not_on_disk(store: ArtifactStore) -> None:
    data = os.urandom(8 * CHUNK)
    aid = (await store.put(stream(data))).info.artifact_id
    on_disk = store.path(aid).read_bytes()
    assert data[5000:5032] not in on_disk


async def test_flipped_byte_is_refused(store: ArtifactStore) -> None:
    data = os.urandom(6 * CHUNK)
    aid = (await store.put(stream(data))).info.artifact_id
    path = store.path(aid)
    raw = bytearray(path.read_bytes())
    raw[HEADER_LEN + 3 * (CHUNK + 16) + 10] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(ArtifactCorruptError, match="chunk 3"):
        await read_all(store, aid)


@pytest.mark.parametrize("change", ["truncate", "extend", "truncate_at_chunk"])
async def test_truncated_or_extended_file_is_refused(store: ArtifactStore, change: str) -> None:
    data = os.urandom(6 * CHUNK)
    aid = (await store.put(stream(data))).info.artifact_id
    path = store.path(aid)
    raw = path.read_bytes()
    if change == "truncate":
        path.write_bytes(raw[:-100])
    elif change == "extend":
        path.write_bytes(raw + b"\0" * 16)
    else:
        path.write_bytes(raw[: HEADER_LEN + 5 * (CHUNK + 16)])
    with pytest.raises(ArtifactCorruptError, match="truncated|extended"):
        await read_all(store, aid)


async def test_wrong_kek_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    aid = (await store.put(stream(os.urandom(CHUNK)))).info.artifact_id
    other = ArtifactStore(root=store.root, kek=os.urandom(32), chunk_size=CHUNK)
    with pytest.raises(ArtifactError, match="key-encryption key [0-9a-f]{16}, which is not loaded"):
        await read_all(other, aid)


async def test_size_limit_while_streaming(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactTooLargeError):
        await store.put(stream(os.urandom(10 * CHUNK)), max_bytes=5 * CHUNK)
    assert not list((store.root / "tmp").iterdir())


async def test_encryption_disabled_stores_plaintext(tmp_path: Path) -> None:
    store = ArtifactStore(root=tmp_path, kek=None, chunk_size=CHUNK)
    data = os.urandom(3 * CHUNK + 1)
    aid = (await store.put(stream(data))).info.artifact_id
    assert data in store.path(aid).read_bytes()
    assert await read_all(store, aid) == data


#: Bytes ``put`` hands to its writer thread at once (``BATCH_CHUNKS`` chunks).
BATCH = _writer.BATCH_CHUNKS * CHUNK


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct_if_possible", "buffered"])
@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (BATCH, 1000),
        (BATCH + 1, BATCH + 1),
        (2 * BATCH, BATCH),
        (2 * BATCH - 1, 3 * BATCH),
        (3 * BATCH + 17, 65536),
        (5 * CHUNK + 3, 1),
    ],
)
async def test_file_is_exactly_the_stream_format(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch, direct: bool, size: int, piece: int
) -> None:
    """Whatever the pieces and batches: header, then STREAM chunks with the last one flagged."""
    if not direct:
        monkeypatch.setattr(_writer, "_O_DIRECT", 0)
    data = os.urandom(size)
    info = (await store.put(stream(data, piece=piece))).info
    dek = store.dek(info)
    chunks = [data[i : i + CHUNK] for i in range(0, size, CHUNK)]
    expected = info.header() + b"".join(
        crypto.seal_chunk(dek, info.nonce_prefix, i, i == len(chunks) - 1, c)
        for i, c in enumerate(chunks)
    )
    assert store.path(info.artifact_id).read_bytes() == expected
    assert info.artifact_id == hashlib.sha256(data).hexdigest()
    assert await read_all(store, info.artifact_id) == data


async def test_unencrypted_file_over_several_batches(tmp_path: Path) -> None:
    store = ArtifactStore(root=tmp_path, kek=None, chunk_size=CHUNK)
    data = os.urandom(2 * BATCH + 5)
    info = (await store.put(stream(data, piece=5000))).info
    assert store.path(info.artifact_id).read_bytes() == info.header() + data


async def test_a_stream_that_breaks_off_stores_nothing(store: ArtifactStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(BATCH)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put(broken())
    assert not list((store.root / "tmp").iterdir())
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


async def test_a_failing_disk_stores_nothing(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = 0
    real = _writer._Output._pwrite

    def full_after_one(self: _writer._Output, data: memoryview, offset: int) -> None:
        nonlocal writes
        writes += 1
        if writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data, offset)

    monkeypatch.setattr(_writer._Output, "_pwrite", full_after_one)
    with pytest.raises(OSError, match="No space left"):
        await store.put(stream(os.urandom(4 * BATCH), piece=65536))
    assert not list((store.root / "tmp").iterdir())
    assert [p for p in store.root.rglob("*") if p.is_file()] == []
