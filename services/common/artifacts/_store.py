"""Artifacts in a directory, named by their SHA-256: put, read, verify, delete.

Writes go to a temporary file that is fsynced and renamed, so a crash never leaves half an
artifact under its final name. CPU work (hashing, AES) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from modelkit.durable import atomic_write, sync_directory
from schemas import crypto
from schemas.topics import validate_artifact_id
from services.common.artifacts._format import (
    HEADER_LEN,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    parse_header,
    read_plain,
)
from services.common.artifacts._writer import Writer
from services.common.keys import KeyRing, UnknownKekError

__all__ = ["ArtifactStore", "PutResult"]

_READ_AHEAD_CHUNKS = 8


@dataclass(frozen=True, slots=True)
class PutResult:
    info: ArtifactInfo
    #: False when the same bytes were already stored.
    created: bool


class ArtifactStore:
    """Artifacts under ``root``; ``kek`` is None when encryption at rest is disabled.

    ``kek`` is a ``KeyRing`` (its current KEK wraps new data keys; every KEK in it opens
    what it wrapped) or one KEK's 32 bytes.
    """

    def __init__(self, *, root: Path, kek: KeyRing | bytes | None, chunk_size: int) -> None:
        self.root = root
        self.keys = KeyRing(active=kek) if isinstance(kek, bytes) else kek
        self.chunk_size = chunk_size
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, artifact_id: str) -> Path:
        validate_artifact_id(artifact_id)
        return self.root / artifact_id[:2] / artifact_id

    def exists(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    async def put(self, data: AsyncIterable[bytes], *, max_bytes: int | None = None) -> PutResult:
        """Store a stream of plaintext; raises ``ArtifactTooLargeError`` past ``max_bytes``."""
        tmp = self.root / "tmp" / f"{os.getpid()}-{os.urandom(8).hex()}"
        kek = self.keys.active if self.keys is not None else None
        writer = await asyncio.to_thread(Writer, tmp, kek, self.chunk_size)
        # Each piece is copied at once into one of two reused batch buffers and let go:
        # pieces held on to until a thread copies them make the allocator hand memory back
        # to the kernel and fault it in again for every next piece (measured: 3x the CPU of
        # the HTTP receive). One buffer is hashed, encrypted and written in a thread while
        # the other fills: receiving and the CPU work overlap instead of taking turns.
        buffers = [memoryview(b) for b in writer.buffers]
        current = 0
        view = buffers[current]
        fill = 0
        received = 0
        writing: asyncio.Future[None] | None = None
        try:
            async for piece in data:
                received += len(piece)
                if max_bytes is not None and received > max_bytes:
                    raise ArtifactTooLargeError(max_bytes)
                src = memoryview(piece)
                while src:
                    if fill == len(view):
                        # Full, and more bytes follow: none of its chunks is the last.
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(
                            asyncio.to_thread(writer.write, view, last=False)
                        )
                        current ^= 1
                        view, fill = buffers[current], 0
                    n = min(len(src), len(view) - fill)
                    view[fill : fill + n] = src[:n]
                    fill += n
                    src = src[n:]
            if writing is not None:
                await writing
                writing = None
            await asyncio.to_thread(writer.write, view[:fill], last=True)
            info = await asyncio.to_thread(writer.finish)
        except BaseException:
            if writing is not None:
                # The thread cannot be interrupted: let it finish before the file goes.
                await asyncio.gather(writing, return_exceptions=True)
            await asyncio.to_thread(writer.abort)
            raise
        final = self.path(info.artifact_id)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return PutResult(info=self.info(info.artifact_id), created=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        sync_directory(final.parent)
        return PutResult(info=info, created=True)

    def info(self, artifact_id: str) -> ArtifactInfo:
        """The header of a stored artifact, checked against the file's length."""
        path = self.path(artifact_id)
        try:
            with open(path, "rb") as f:
                raw = f.read(HEADER_LEN)
                actual = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise ArtifactNotFoundError(artifact_id) from None
        return parse_header(artifact_id, raw, actual)

    def dek(self, info: ArtifactInfo) -> bytes:
        """The artifact's data key, unwrapped with the KEK that wrapped it.

        A key rotation may rewrite the header while ``info`` was read: a key that does not
        open is looked up again once in the header as it is now.
        """
        if not info.encrypted:
            raise ArtifactError(f"artifact {info.artifact_id} is stored unencrypted")
        if self.keys is None:
            raise ArtifactError(
                f"artifact {info.artifact_id} is encrypted but no key-encryption key is loaded"
            )
        try:
            return self.keys.unwrap(info.wrapped_dek, info.kek_id)
        except (crypto.KeyUnwrapError, UnknownKekError) as first:
            try:
                now = self.info(info.artifact_id)
                if (now.kek_id, now.wrapped_dek) == (info.kek_id, info.wrapped_dek):
                    raise first
                return self.keys.unwrap(now.wrapped_dek, now.kek_id)
            except UnknownKekError as exc:
                raise ArtifactError(f"artifact {info.artifact_id}: {exc}") from None
            except crypto.KeyUnwrapError as exc:
                raise ArtifactCorruptError(info.artifact_id, str(exc)) from None

    def rewrap(self, artifact_id: str) -> bool:
        """Wrap the artifact's data key with the current KEK; False if it already was (or
        the artifact is stored unencrypted). The chunks stay as they are.

        Only the header changes, in place: the old one is first saved (fsynced) as
        ``tmp/rewrap-<id>``, so ``recover_rewraps`` can put it back if the write was torn.
        """
        if self.keys is None:
            raise ArtifactError("no key-encryption key is loaded")
        info = self.info(artifact_id)
        if not info.encrypted or info.kek_id == self.keys.active_id:
            return False
        dek = self.dek(info)
        fresh = replace(
            info,
            wrapped_dek=crypto.wrap_dek(self.keys.active, dek),
            kek_id=self.keys.active_id,
        )
        path = self.path(artifact_id)
        saved = self.root / "tmp" / f"rewrap-{artifact_id}"
        atomic_write(saved, info.header())
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, fresh.header(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        saved.unlink()
        return True

    def recover_rewraps(self) -> int:
        """After a crash in ``rewrap``: put back each saved header whose replacement does not
        open (a torn write), and drop the saved copies. Returns the headers put back."""
        restored = 0
        for saved in (self.root / "tmp").glob("rewrap-*"):
            artifact_id = saved.name.removeprefix("rewrap-")
            try:
                validate_artifact_id(artifact_id)
                self.dek(self.info(artifact_id))
            except ArtifactNotFoundError:
                pass
            except (ArtifactError, ValueError):
                old = saved.read_bytes()
                fd = os.open(self.path(artifact_id), os.O_WRONLY)
                try:
                    os.pwrite(fd, old, 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                restored += 1
            saved.unlink()
        return restored

    def artifact_ids(self) -> list[str]:
        """Every artifact in the store."""
        found = []
        for entry in self.root.glob("??/*"):
            with contextlib.suppress(ValueError):
                if entry.parent.name == validate_artifact_id(entry.name)[:2]:
                    found.append(entry.name)
        return sorted(found)

    async def read_chunk(self, info: ArtifactInfo, index: int) -> bytes:
        """Chunk ``index`` exactly as stored (ciphertext when encrypted)."""
        if not 0 <= index < info.chunk_count:
            raise ArtifactError(f"chunk {index} out of range 0..{info.chunk_count - 1}")
        return await asyncio.to_thread(
            _pread, self.path(info.artifact_id), info.offset(index), info.stored_len(index)
        )

    async def iter_plaintext(
        self, artifact_id: str, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the plaintext bytes ``[start, end)``, authenticating every chunk read.

        A damaged chunk raises ``ArtifactCorruptError`` before any of its bytes are yielded.
        """
        info = self.info(artifact_id)
        stop = info.size if end is None else min(end, info.size)
        if start >= stop:
            return
        dek = self.dek(info) if info.encrypted else b""
        first = start // info.chunk_size
        last = (stop - 1) // info.chunk_size
        path = self.path(artifact_id)
        f: BinaryIO = await asyncio.to_thread(path.open, "rb")
        try:
            index = first
            while index <= last:
                batch = list(range(index, min(index + _READ_AHEAD_CHUNKS, last + 1)))
                plains = await asyncio.to_thread(read_plain, f, info, dek, batch)
                for i, plain in zip(batch, plains, strict=True):
                    base = i * info.chunk_size
                    lo = max(start - base, 0)
                    hi = min(stop - base, len(plain))
                    yield plain[lo:hi] if (lo, hi) != (0, len(plain)) else plain
                index = batch[-1] + 1
        finally:
            await asyncio.to_thread(f.close)

    async def verify(self, artifact_id: str) -> None:
        """Read the whole artifact: every chunk authenticates and the SHA-256 matches."""
        sha = hashlib.sha256()
        async for piece in self.iter_plaintext(artifact_id):
            sha.update(piece)
        if sha.hexdigest() != artifact_id:
            raise ArtifactCorruptError(artifact_id, "content does not match its SHA-256")

    def delete(self, artifact_id: str) -> bool:
        try:
            self.path(artifact_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def older_than(self, cutoff: float) -> list[str]:
        """Ids of the artifacts last written before ``cutoff`` (a ``time.time()``)."""
        found = []
        for entry in self.root.glob("??/*"):
            try:
                validate_artifact_id(entry.name)
                stat = entry.stat()
            except (ValueError, OSError):  # not an artifact, or gone meanwhile
                continue
            if entry.parent.name == entry.name[:2] and stat.st_mtime < cutoff:
                found.append(entry.name)
        return found

    def set_aside(self, artifact_id: str) -> Path | None:
        """Move the artifact out of sight (readers see it gone at once); ``None`` if absent.

        Then either ``put_back`` or unlink the returned path: a two-step delete for a
        caller that must check, after the artifact has become invisible, that nothing
        started to use it.
        """
        aside = self.root / "tmp" / f"aside-{artifact_id}-{os.urandom(4).hex()}"
        try:
            os.replace(self.path(artifact_id), aside)
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, artifact_id: str, aside: Path) -> None:
        os.replace(aside, self.path(artifact_id))

    def put_back_all(self) -> int:
        """Return every artifact a crashed two-step delete left set aside."""
        returned = 0
        for entry in (self.root / "tmp").glob("aside-*"):
            artifact_id = entry.name.split("-")[1]
            with contextlib.suppress(ValueError, OSError):
                self.put_back(artifact_id, entry)
                returned += 1
        return returned

    def remove_stale_temp(self, cutoff: float) -> int:
        """Delete temp files last written before ``cutoff`` (left by a crashed upload)."""
        removed = 0
        for entry in (self.root / "tmp").iterdir():
            if entry.name.startswith(("aside-", "rewrap-")):
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
