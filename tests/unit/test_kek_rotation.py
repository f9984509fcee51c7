"""KEK rotation: every data key wrapped again with the new KEK, the chunks untouched;
readers open artifacts under either KEK throughout; an interrupted run is finished by the
next; stores written before KEK ids were stored are migrated; the old KEK opens nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import crypto
from services.common.artifacts import (
    HEADER_LEN,
    ArtifactError,
    ArtifactStore,
    kek_usage,
    rotate_kek,
)
from services.common.keys import KeyRing

CHUNK = 4096


async def stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_all(store: ArtifactStore, aid: str) -> bytes:
    return b"".join([p async for p in store.iter_plaintext(aid)])


async def fill(store: ArtifactStore, n: int) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        data = os.urandom(CHUNK * (i % 3) + 100 + i)
        out[(await store.put(stream(data))).info.artifact_id] = data
    return out


def stored_chunks(store: ArtifactStore, aid: str) -> bytes:
    return store.path(aid).read_bytes()[HEADER_LEN:]


def strip_kek_id(store: ArtifactStore, aid: str) -> None:
    """Make the header look like one written before KEK ids were stored (zeroed id)."""
    path = store.path(aid)
    raw = bytearray(path.read_bytes())
    raw[68:76] = bytes(8)
    path.write_bytes(bytes(raw))


async def test_rotation_rewraps_every_key_and_retires_the_old_kek(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = ArtifactStore(root=tmp_path, kek=old, chunk_size=CHUNK)
    artifacts = await fill(before, 6)
    legacy = next(iter(artifacts))
    strip_kek_id(before, legacy)  # an artifact from a store older than KEK ids
    chunks = {aid: stored_chunks(before, aid) for aid in artifacts}

    ring = KeyRing(active=new, previous=(old,))
    store = ArtifactStore(root=tmp_path, kek=ring, chunk_size=CHUNK)
    assert kek_usage(store) == {crypto.kek_id(old): 5, "": 1}
    # Before the rotation, the keyring opens what the old KEK wrapped, legacy included.
    for aid, data in artifacts.items():
        assert await read_all(store, aid) == data
    # New uploads are wrapped by the new KEK already.
    fresh = os.urandom(3 * CHUNK)
    fresh_id = (await store.put(stream(fresh))).info.artifact_id
    assert store.info(fresh_id).kek_id == crypto.kek_id(new)
    artifacts[fresh_id] = fresh

    done = rotate_kek(store)
    assert (done.rewrapped, done.unchanged) == (6, 1)
    assert done.usage[crypto.kek_id(new)] == 7
    assert done.retired(ring.active_id) == [crypto.kek_id(old)]

    new_only = ArtifactStore(root=tmp_path, kek=new, chunk_size=CHUNK)
    old_only = ArtifactStore(root=tmp_path, kek=old, chunk_size=CHUNK)
    for aid, data in artifacts.items():
        assert await read_all(new_only, aid) == data
        await new_only.verify(aid)
        if aid in chunks:  # not re-encrypted: the ciphertext devices fetch is the same
            assert stored_chunks(new_only, aid) == chunks[aid]
        with pytest.raises(ArtifactError):
            await read_all(old_only, aid)
    # Running it again finds nothing to do.
    assert rotate_kek(store).rewrapped == 0


async def test_an_interrupted_rotation_is_finished_by_the_next_run(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    artifacts = await fill(ArtifactStore(root=tmp_path, kek=old, chunk_size=CHUNK), 5)
    store = ArtifactStore(root=tmp_path, kek=KeyRing(active=new, previous=(old,)), chunk_size=CHUNK)
    seen: list[str] = []

    def stop_after_two(aid: str, changed: bool) -> None:
        seen.append(aid)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_kek(store, progress=stop_after_two)
    assert kek_usage(store) == {crypto.kek_id(new): 2, crypto.kek_id(old): 3}

    # A crash in the middle of a header write: the saved old header is there, the header
    # in the file is torn. The next run puts the old one back and wraps it again.
    victim = next(a for a in artifacts if a not in seen)
    path = store.path(victim)
    header = path.read_bytes()[:HEADER_LEN]
    (tmp_path / "tmp" / f"rewrap-{victim}").write_bytes(header)
    torn = bytearray(header)
    torn[40:60] = os.urandom(20)
    with open(path, "r+b") as f:
        f.write(torn)

    done = rotate_kek(store)
    assert done.restored == 1
    assert (done.rewrapped, done.unchanged) == (3, 2)
    assert not list((tmp_path / "tmp").glob("rewrap-*"))
    only_new = ArtifactStore(root=tmp_path, kek=new, chunk_size=CHUNK)
    for aid, data in artifacts.items():
        assert await read_all(only_new, aid) == data


async def test_readers_keep_working_while_the_rotation_runs(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    artifacts = await fill(ArtifactStore(root=tmp_path, kek=old, chunk_size=CHUNK), 40)
    ring = KeyRing(active=new, previous=(old,))
    reader = ArtifactStore(root=tmp_path, kek=ring, chunk_size=CHUNK)
    failures: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            for aid in artifacts:
                try:
                    info = reader.info(aid)
                    dek = reader.dek(info)
                    stored = reader.path(aid).read_bytes()[HEADER_LEN:]
                    last = info.chunk_count == 1
                    chunk = stored[: info.stored_len(0)]
                    plain = crypto.open_chunk(dek, info.nonce_prefix, 0, last, chunk)
                    assert plain == artifacts[aid][: info.chunk_size]
                except Exception as exc:
                    failures.append(f"{aid}: {exc!r}")

    threads = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        # Back and forth, so that the readers meet many header writes.
        for active, previous in [(new, old), (old, new), (new, old)]:
            ring_now = KeyRing(active=active, previous=(previous,))
            assert rotate_kek(ArtifactStore(root=tmp_path, kek=ring_now, chunk_size=CHUNK))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
