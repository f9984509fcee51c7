"""The artifact store: content-addressed, encrypted at rest, crash-safe.

An artifact is named by the SHA-256 of its plaintext and stored once, as a fixed header
followed by the chunks exactly as devices receive them (``_format``). ``put`` streams the
plaintext through a writer thread that hashes, encrypts and writes it (``_writer``); the
store (``_store``) names, reads, verifies and deletes what was written.
"""

from services.common.artifacts._format import (
    HEADER_LEN,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
)
from services.common.artifacts._rekey import KekRotation, kek_usage, rotate_kek
from services.common.artifacts._source import ArtifactSource, open_artifacts
from services.common.artifacts._store import ArtifactStore, PutResult

__all__ = [
    "HEADER_LEN",
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactSource",
    "ArtifactStore",
    "ArtifactTooLargeError",
    "KekRotation",
    "PutResult",
    "kek_usage",
    "open_artifacts",
    "rotate_kek",
]
