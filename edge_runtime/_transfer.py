"""One transfer on the device: manifest checks, chunk intake into staging, final checks.

Chunks are decrypted and authenticated as they arrive and written at their offset in
``staging/<artifact>/model.part``; a one-byte-per-chunk bitmap next to it records which
are there. The bitmap is saved after the data it describes is synced, so after a crash it
may miss a few chunks that arrived (they are fetched again) but never claims one that did
not. A restart resumes from it and asks only for what it lacks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_runtime._state import StateDir
from edge_runtime.errors import TransferRefused
from modelkit.durable import atomic_write, sync_directory
from schemas import crypto
from schemas.keychain import KeyChainError, RotationStatement, TrustedKey, follow_chain
from schemas.manifest import Manifest, ManifestError, SignedManifest
from schemas.transfer import RejectionCode

__all__ = [
    "ChunkOutcome",
    "Transfer",
    "check_manifest",
    "follow_key_chain",
    "open_manifest_key",
]

#: Times one chunk may fail authentication (or have the wrong size) before the transfer fails.
MAX_CHUNK_FAILURES = 3
#: Seconds a manifest's ``issued_at`` may lie ahead of the device's clock (clock drift).
#: Beyond it the device's clock is behind, its expiry checks mean nothing, so it refuses.
MAX_CLOCK_SKEW = 300
_PERSIST_EVERY = 8


def follow_key_chain(
    payload: bytes, trusted: TrustedKey
) -> tuple[TrustedKey, list[RotationStatement]]:
    """The platform key to trust after the rotation statements a ``desired`` payload
    carries, and the statements that moved it (none: ``trusted`` stays). A payload that
    is not a signed manifest moves nothing (``check_manifest`` says why); an invalid
    chain raises ``TransferRefused`` (signature) and moves nothing either."""
    try:
        signed = SignedManifest.from_bytes(payload)
    except ManifestError:
        return trusted, []
    if not signed.key_chain:
        return trusted, []
    try:
        return follow_chain(trusted, signed.key_chain)
    except KeyChainError as exc:
        raise TransferRefused(
            RejectionCode.SIGNATURE, str(exc), deployment_id=_claimed_id(payload)
        ) from None


def check_manifest(
    payload: bytes,
    *,
    device_id: str,
    platform_key: Ed25519PublicKey,
    sequences: dict[str, int],
    now: float | None = None,
    retired: frozenset[str] = frozenset(),
) -> Manifest:
    """Verify a ``desired`` payload; raises ``TransferRefused`` with the reason.

    Checks, in order: well-formed, not signed by a ``retired`` platform key, signed by the
    trusted key, for this device, not expired, not issued in this device's future (its
    clock is behind), sequence not below the highest accepted for the model (replay).
    """
    try:
        signed = SignedManifest.from_bytes(payload)
        if signed.key_id in retired:
            raise ManifestError(
                f"signed by the retired platform key {signed.key_id}; this device trusts "
                f"{crypto.key_id(platform_key)} since a rotation",
                bad_signature=True,
            )
        manifest = signed.verify(platform_key)
    except ManifestError as exc:
        code = RejectionCode.SIGNATURE if exc.bad_signature else RejectionCode.MALFORMED
        raise TransferRefused(code, exc.reason, deployment_id=_claimed_id(payload)) from None
    ident = manifest.deployment_id
    if manifest.device_id != device_id:
        raise TransferRefused(
            RejectionCode.WRONG_DEVICE,
            f"manifest is for device {manifest.device_id!r}, this is {device_id!r}",
            deployment_id=ident,
        )
    current = time.time() if now is None else now
    if manifest.expires_at <= current:
        raise TransferRefused(
            RejectionCode.EXPIRED,
            f"manifest expired at {manifest.expires_at}, {int(current) - manifest.expires_at} s "
            f"before this device's clock ({int(current)}); it was issued at "
            f"{manifest.issued_at}: if that was just now, this device's clock is ahead (set "
            "its time, e.g. NTP); otherwise the platform re-issues it when the device is online",
            deployment_id=ident,
        )
    if manifest.issued_at > current + MAX_CLOCK_SKEW:
        # A device whose clock is behind would take expired manifests for valid ones.
        raise TransferRefused(
            RejectionCode.CLOCK_SKEW,
            f"manifest was issued at {manifest.issued_at}, {manifest.issued_at - int(current)} s "
            f"after this device's clock ({int(current)}): this device's clock is behind; set "
            "its time (e.g. NTP), then the manifest is accepted",
            deployment_id=ident,
        )
    high = sequences.get(manifest.model, -1)
    if manifest.sequence < high:
        raise TransferRefused(
            RejectionCode.REPLAY,
            f"sequence {manifest.sequence} of {manifest.model!r} is older than {high}, "
            "the highest this device accepted",
            deployment_id=ident,
        )
    return manifest


def open_manifest_key(manifest: Manifest, key: X25519PrivateKey) -> bytes | None:
    """The data key sealed in the manifest (``None`` for an unencrypted artifact)."""
    if not manifest.encrypted:
        return None
    try:
        sealed = base64.b64decode(manifest.sealed_key or "")
        return crypto.open_dek(
            sealed, key, device_id=manifest.device_id, artifact_id=manifest.artifact_id
        )
    except (crypto.SealedKeyError, ValueError) as exc:
        raise TransferRefused(
            RejectionCode.SEALED_KEY, str(exc), deployment_id=manifest.deployment_id
        ) from None


def _claimed_id(payload: bytes) -> str:
    # Only for the report: an unverified manifest's claimed deployment id, if readable.
    try:
        signed = SignedManifest.model_validate_json(payload)
        body = Manifest.model_validate_json(base64.b64decode(signed.signed))
        return body.deployment_id[:64]
    except Exception:
        return ""


class ChunkOutcome(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


@dataclass
class Transfer:
    """Receiving one artifact into staging (a single coroutine drives it; no locking)."""

    state: StateDir
    manifest: Manifest
    signed: bytes
    dek: bytes | None
    received: bytearray = field(init=False)
    failures: dict[int, int] = field(init=False, default_factory=dict)
    last_refusal: TransferRefused | None = field(init=False, default=None)
    #: Index -> monotonic time of the request still waiting for an answer.
    outstanding: dict[int, float] = field(init=False, default_factory=dict)
    last_activity: float = field(init=False, default_factory=time.monotonic)
    #: In broadcast mode the device waits for the broadcast before it pulls.
    pulling: bool = field(init=False)
    requested: int = field(init=False, default=0)
    duplicates: int = field(init=False, default=0)
    _fd: int = field(init=False, default=-1)
    _unsaved: int = field(init=False, default=0)
    _persisting: Future[None] | None = field(init=False, default=None)
    #: SHA-256 of the plaintext written so far, as a contiguous prefix of chunks (``_hashed``
    #: of them), updated in a worker thread in index order; ``_hashing`` is its last update.
    _sha: Any = field(init=False, default_factory=hashlib.sha256)
    _hashed: int = field(init=False, default=0)
    _hashing: Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.pulling = not self.manifest.broadcast
        directory = self.state.staging(self.manifest.artifact_id)
        directory.mkdir(parents=True, exist_ok=True)
        count = self.manifest.chunk_count
        bitmap = directory / "bitmap"
        part = directory / "model.part"
        # A bitmap from an earlier run of the same artifact is reused (same plaintext).
        previous = bitmap.read_bytes() if bitmap.exists() and part.exists() else b""
        if len(previous) == count and part.stat().st_size == self.manifest.size:
            self.received = bytearray(previous)
        else:
            self.received = bytearray(count)
        self._fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, self.manifest.size)
        atomic_write(directory / "manifest.json", self.signed)

    @property
    def deployment_id(self) -> str:
        return self.manifest.deployment_id

    @property
    def directory(self) -> Path:
        return self.state.staging(self.manifest.artifact_id)

    @property
    def chunks_received(self) -> int:
        return sum(self.received)

    @property
    def bytes_received(self) -> int:
        m = self.manifest
        last = m.chunk_count - 1
        n = self.chunks_received
        if n and self.received[last]:
            return (n - 1) * m.chunk_size + (m.size - last * m.chunk_size)
        return n * m.chunk_size

    @property
    def complete(self) -> bool:
        return all(self.received)

    def missing(self) -> list[int]:
        return [i for i, got in enumerate(self.received) if not got]

    def next_request(self, window: int) -> list[int]:
        """Indexes to request now so that at most ``window`` are outstanding."""
        free = window - len(self.outstanding)
        if free <= 0 or not self.pulling:
            return []
        wanted = [i for i in self.missing() if i not in self.outstanding][:free]
        now = time.monotonic()
        for i in wanted:
            self.outstanding[i] = now
        self.requested += len(wanted)
        return wanted

    def stalled(self, stall_timeout: float) -> bool:
        """True (and the outstanding requests forgotten) when nothing came for a while."""
        if time.monotonic() - self.last_activity < stall_timeout:
            return False
        self.outstanding.clear()
        self.pulling = True
        self.last_activity = time.monotonic()
        return True

    def accept(self, index: int, artifact_id: str, payload: bytes) -> ChunkOutcome:
        """Take one chunk; raises ``TransferRefused`` when the transfer must fail."""
        m = self.manifest
        if artifact_id != m.artifact_id:
            self.last_refusal = TransferRefused(
                RejectionCode.FOREIGN_CHUNK,
                f"chunk {index} of artifact {artifact_id[:16]}… is not part of "
                f"{m.artifact_id[:16]}…; ignored",
                deployment_id=m.deployment_id,
            )
            return ChunkOutcome.REFUSED
        if not 0 <= index < m.chunk_count:
            self.last_refusal = TransferRefused(
                RejectionCode.CHUNK_SIZE,
                f"chunk index {index} is beyond the {m.chunk_count} chunks the manifest declares",
                deployment_id=m.deployment_id,
            )
            return ChunkOutcome.REFUSED
        self.outstanding.pop(index, None)
        self.last_activity = time.monotonic()
        if index == m.chunk_count - 1:
            # The broadcast (in index order) has passed: what is still missing was missed
            # (the device subscribed late, or lost messages); pull it now, not after a stall.
            self.pulling = True
        if self.received[index]:
            self.duplicates += 1
            return ChunkOutcome.DUPLICATE
        last = index == m.chunk_count - 1
        plain_len = (m.size - index * m.chunk_size) if last else m.chunk_size
        expected = plain_len + (crypto.TAG_LEN if m.encrypted else 0)
        if len(payload) != expected:
            return self._fail(
                index,
                RejectionCode.CHUNK_SIZE,
                f"chunk {index} is {len(payload)} bytes where the manifest declares {expected}",
            )
        plain = payload
        if self.dek is not None:
            try:
                plain = crypto.open_chunk(self.dek, self._prefix, index, last, payload)
            except crypto.ChunkIntegrityError as exc:
                return self._fail(index, RejectionCode.CHUNK_INTEGRITY, str(exc))
        written = os.pwrite(self._fd, plain, index * m.chunk_size)
        if written != len(plain):
            raise OSError(f"chunk {index}: wrote {written} of {len(plain)} bytes to staging")
        self.received[index] = 1
        if index == self._hashed:
            self._hash_prefix(plain)
        self._unsaved += 1
        if self._unsaved >= _PERSIST_EVERY:
            self._persist_in_background()
        return ChunkOutcome.NEW

    def _hash_prefix(self, plain: bytes) -> None:
        # ``plain`` is the next chunk of the prefix, just written; chunks after it that were
        # already there (out of order, or from before a restart) are read back from the file.
        start = self._hashed + 1
        stop = start
        while stop < self.manifest.chunk_count and self.received[stop]:
            stop += 1
        self._hashed = stop
        self._hashing = _hasher().submit(self._hash_run, plain, start, stop)

    def _hash_run(self, plain: bytes | None, start: int, stop: int) -> None:
        if plain is not None:
            self._sha.update(plain)
        m = self.manifest
        for i in range(start, stop):
            length = min(m.chunk_size, m.size - i * m.chunk_size)
            block = os.pread(self._fd, length, i * m.chunk_size)
            if len(block) != length:
                raise OSError(f"chunk {i}: read {len(block)} of {length} bytes from staging")
            self._sha.update(block)

    def _wait_hashed(self) -> None:
        pending, self._hashing = self._hashing, None
        if pending is not None:
            pending.result()

    @property
    def _prefix(self) -> bytes:
        return base64.b64decode(self.manifest.nonce_prefix or "")

    def _fail(self, index: int, code: RejectionCode, detail: str) -> ChunkOutcome:
        count = self.failures.get(index, 0) + 1
        self.failures[index] = count
        refusal = TransferRefused(code, detail, deployment_id=self.manifest.deployment_id)
        self.last_refusal = refusal
        if count >= MAX_CHUNK_FAILURES:
            raise TransferRefused(
                code,
                f"{detail} (refused {count} times; giving up)",
                deployment_id=self.manifest.deployment_id,
            )
        return ChunkOutcome.REFUSED

    def persist(self) -> None:
        """Sync the data, then record which chunks it holds."""
        self._wait_persisted()
        if self._fd < 0:
            return
        self._unsaved = 0
        _sync_and_record(self._fd, self.directory / "bitmap", bytes(self.received))

    def _persist_in_background(self) -> None:
        # fdatasync and the bitmap's fsync take milliseconds: off the event loop, so chunks
        # keep arriving meanwhile. One at a time; the bitmap is taken before the sync, so
        # it never claims a chunk that the sync does not cover.
        pending = self._persisting
        if pending is not None:
            if not pending.done():
                return  # a later chunk persists again (``_unsaved`` keeps counting)
            self._persisting = None
            pending.result()  # a failed sync surfaces here, as it would have inline
        self._unsaved = 0
        self._persisting = _persister().submit(
            _sync_and_record, self._fd, self.directory / "bitmap", bytes(self.received)
        )

    def _wait_persisted(self) -> None:
        pending, self._persisting = self._persisting, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.persist()
            finally:
                with contextlib.suppress(Exception):
                    self._wait_persisted()
                with contextlib.suppress(Exception):
                    self._wait_hashed()  # it may still read the file
                os.close(self._fd)
                self._fd = -1

    async def finish(self) -> Path:
        """Check size and SHA-256, then move the model next to the installed ones.

        The SHA-256 is of the bytes written to the file, every chunk once, in index order:
        taken as the chunks arrived, and completed from the file for any part not yet
        hashed (a transfer resumed after a restart).
        """
        size, digest = await asyncio.to_thread(self._size_and_digest)
        self.close()
        part = self.directory / "model.part"
        m = self.manifest
        if size != m.size:
            raise TransferRefused(
                RejectionCode.SIZE_MISMATCH,
                f"received {size} bytes, the manifest declares {m.size}",
                deployment_id=m.deployment_id,
            )
        if digest != m.artifact_id:
            raise TransferRefused(
                RejectionCode.DIGEST_MISMATCH,
                f"SHA-256 is {digest}, the manifest declares {m.artifact_id}",
                deployment_id=m.deployment_id,
            )
        target = self.state.model_path(m.artifact_id)
        first = not target.parent.is_dir()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        # The model is reported (and recorded) as installed next: its new name must last,
        # and on the first install the directory that holds it.
        await asyncio.to_thread(sync_directory, target.parent)
        if first:
            await asyncio.to_thread(sync_directory, target.parent.parent)
        return target

    def _size_and_digest(self) -> tuple[int, str]:
        self._wait_hashed()
        stop = self.manifest.chunk_count
        if self._hashed < stop:
            self._hash_run(None, self._hashed, stop)
            self._hashed = stop
        return os.fstat(self._fd).st_size, self._sha.hexdigest()


_PERSISTER: ThreadPoolExecutor | None = None
_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    # One thread for every transfer of the process, so each transfer's updates run in the
    # order they were submitted; SHA-256 releases the GIL, so it runs beside the event loop.
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eaf-hash")
    return _HASHER


def _persister() -> ThreadPoolExecutor:
    # One thread for every transfer of the process: syncs are short and one at a time.
    global _PERSISTER
    if _PERSISTER is None:
        _PERSISTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eaf-persist")
    return _PERSISTER


def _sync_and_record(fd: int, bitmap: Path, received: bytes) -> None:
    os.fdatasync(fd)
    # An older bitmap after a power loss only claims fewer chunks: no directory sync.
    atomic_write(bitmap, received, lasting=False)
