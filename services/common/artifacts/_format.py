"""The stored form of an artifact: its header, its chunks, and the store's errors.

header (96 bytes): magic "EAFA" | format 1 | flags (bit 0: encrypted) | wrapped-key
length (u16) | chunk size (u32) | plaintext size (u64) | STREAM nonce prefix (7) |
0 | wrapped data key (40) | id of the KEK that wrapped it (8; zero in artifacts written
before ids were stored: any KEK of the keyring may open those) | zero padding
chunk 0 .. chunk n-1: AES-256-GCM(STREAM) ciphertext, chunk size + 16 bytes each
(the last one shorter); or the plaintext itself when encryption is disabled.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from schemas import crypto

__all__ = [
    "HEADER_LEN",
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactTooLargeError",
    "parse_header",
    "read_plain",
]

MAGIC = b"EAFA"
FORMAT_VERSION = 1
HEADER_LEN = 96
_HEADER = struct.Struct(">4sBBHIQ7sB40s8s")
_FLAG_ENCRYPTED = 0x01


class ArtifactError(Exception):
    """Root of the artifact store's errors."""


class ArtifactNotFoundError(ArtifactError):
    def __init__(self, artifact_id: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"artifact {artifact_id} is not in the store")


class ArtifactCorruptError(ArtifactError):
    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        self.reason = reason
        super().__init__(f"artifact {artifact_id} is damaged and will not be served: {reason}")


class ArtifactTooLargeError(ArtifactError):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"artifact is larger than the limit of {limit} bytes")


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    artifact_id: str
    size: int
    chunk_size: int
    encrypted: bool
    nonce_prefix: bytes
    wrapped_dek: bytes
    #: The id of the KEK that wrapped ``wrapped_dek``; "" when unknown (older artifacts).
    kek_id: str = ""

    @property
    def chunk_count(self) -> int:
        return crypto.chunk_count(self.size, self.chunk_size)

    @property
    def overhead(self) -> int:
        return crypto.TAG_LEN if self.encrypted else 0

    def plain_len(self, index: int) -> int:
        if index == self.chunk_count - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def stored_len(self, index: int) -> int:
        return self.plain_len(index) + self.overhead

    def offset(self, index: int) -> int:
        return HEADER_LEN + index * (self.chunk_size + self.overhead)

    @property
    def file_size(self) -> int:
        return self.offset(self.chunk_count - 1) + self.stored_len(self.chunk_count - 1)

    def header(self) -> bytes:
        packed = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            _FLAG_ENCRYPTED if self.encrypted else 0,
            len(self.wrapped_dek),
            self.chunk_size,
            self.size,
            self.nonce_prefix,
            0,
            self.wrapped_dek.ljust(40, b"\0"),
            bytes.fromhex(self.kek_id) if self.kek_id else bytes(crypto.KEK_ID_LEN),
        )
        return packed.ljust(HEADER_LEN, b"\0")


def parse_header(artifact_id: str, raw: bytes, actual: int) -> ArtifactInfo:
    """The header ``raw`` read from the start of a stored file, checked against the
    file's length ``actual``."""
    if len(raw) < HEADER_LEN:
        raise ArtifactCorruptError(artifact_id, "header is truncated")
    magic, version, flags, wrapped_len, chunk_size, size, prefix, _, wrapped, kek = _HEADER.unpack(
        raw[: _HEADER.size]
    )
    if magic != MAGIC or version != FORMAT_VERSION or chunk_size <= 0:
        raise ArtifactCorruptError(artifact_id, "header is not a valid artifact header")
    info = ArtifactInfo(
        artifact_id=artifact_id,
        size=size,
        chunk_size=chunk_size,
        encrypted=bool(flags & _FLAG_ENCRYPTED),
        nonce_prefix=prefix,
        wrapped_dek=wrapped[:wrapped_len],
        kek_id=kek.hex() if any(kek) else "",
    )
    if actual != info.file_size:
        what = "truncated" if actual < info.file_size else "extended"
        raise ArtifactCorruptError(
            artifact_id, f"file is {what} ({actual} bytes, expected {info.file_size})"
        )
    return info


def read_plain(f: BinaryIO, info: ArtifactInfo, dek: bytes, indexes: list[int]) -> list[bytes]:
    out = []
    for i in indexes:
        f.seek(info.offset(i))
        stored = f.read(info.stored_len(i))
        if len(stored) != info.stored_len(i):
            raise ArtifactCorruptError(info.artifact_id, f"chunk {i} is truncated")
        if info.encrypted:
            last = i == info.chunk_count - 1
            try:
                stored = crypto.open_chunk(dek, info.nonce_prefix, i, last, stored)
            except crypto.ChunkIntegrityError as exc:
                raise ArtifactCorruptError(info.artifact_id, str(exc)) from None
        out.append(stored)
    return out
