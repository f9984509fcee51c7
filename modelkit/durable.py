"""Files that survive a crash or a power loss: written whole, then renamed into place.

What the device's state directory, the artifact store and the platform's key files share.
Only the standard library: the device imports it too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "sync_directory"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, lasting: bool = True) -> None:
    """Write ``path`` so that a crash or a power loss leaves either the old or the new
    content, and once this returns, the new; with ``lasting=False`` a power loss may still
    bring back the old (for a hint such as a transfer's bitmap, where old is safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if lasting:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` durable: a rename into it (or a new file) is
    only in the directory's metadata until the directory itself is synced, and a power
    loss before that may bring back the old name."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
