"""The private work directory of a set of sandboxed workers, and the files put in it.

The service decrypts an upload into a fresh directory (``private_workdir``), writes it
there without following links (``write_stream``) and hands it to the workers' user
(``hand_over``); the workers read it once told to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["NOBODY", "ZIP_MAGIC", "hand_over", "private_workdir", "readable", "write_stream"]

#: uid/gid the worker drops to when the service runs as root.
NOBODY = 65534
#: How a ZIP upload (a model with external data, a package) begins.
ZIP_MAGIC = b"PK\x03\x04"


@asynccontextmanager
async def private_workdir(parent: str = "") -> AsyncIterator[Path]:
    """A fresh directory for one artifact's files, removed afterwards.

    Mode 0700; when the service runs as root it stays root's with mode 0711: the workers
    (``nobody``) reach the files handed to them (``hand_over``) but cannot add, replace or
    list entries, so nothing a worker left running could plant a symbolic link where the
    service writes next (a directory waits for its upload while its workers are started
    ahead).
    """
    path = Path(tempfile.mkdtemp(prefix="eaf-sandbox-", dir=parent or None))
    try:
        if os.geteuid() == 0:
            os.chmod(path, 0o711)  # noqa: S103 - others may traverse, not list or write
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


def hand_over(path: Path) -> None:
    """Give a file or directory the parent made in a work dir to the worker's user (the
    entry itself, never what a symbolic link would point to)."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


async def readable(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` again once its first piece is read: an artifact that is missing or
    unreadable raises here, before any worker is taken for it."""
    first = await anext(chunks, None)

    async def again() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
            async for piece in chunks:
                yield piece

    return again()


async def write_stream(chunks: AsyncIterable[bytes], dest: Path, *, limit: int) -> int:
    """Write a byte stream to a new file ``dest``; stops (and returns ``limit + 1``) past
    ``limit``. An existing ``dest`` (or a symbolic link there) is an error, never followed."""
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(fd, "wb") as out:  # noqa: ASYNC230 - small writes of already-decrypted chunks
        async for piece in chunks:
            written += len(piece)
            if written > limit:
                return limit + 1
            out.write(piece)
    hand_over(dest)
    return written
