"""Moving bytes: request bodies into the artifact store, artifacts out with HTTP ranges.

Nothing here holds a whole file in memory: uploads go chunk by chunk into
``ArtifactStore.put``; downloads are produced chunk by chunk (decrypted as they stream).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import cast

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from services.api.errors import (
    EmptyBody,
    PayloadTooLarge,
    RangeNotSatisfiable,
    UnsupportedMediaType,
)
from services.common.artifacts import (
    ArtifactCorruptError,
    ArtifactInfo,
    ArtifactStore,
    ArtifactTooLargeError,
    PutResult,
)
from services.common.logging import get_logger

__all__ = [
    "BINARY",
    "ByteRange",
    "StreamAborted",
    "parse_range",
    "receive_artifact",
    "serve_plaintext",
    "serve_stored",
]

BINARY = "application/octet-stream"
_STORED_READ = 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

log = get_logger(__name__)


class StreamAborted(Exception):
    """Raised inside a response body that has started: the server drops the connection."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None to send everything.

    Per RFC 9110 a server may ignore a Range it does not support: malformed or multi-range
    headers get the whole representation. A well-formed range entirely beyond the end
    raises ``RangeNotSatisfiable`` (416).
    """
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(size - n, 0), size)
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, end)


async def receive_artifact(request: Request, store: ArtifactStore, *, max_bytes: int) -> PutResult:
    """Stream the request body into the store; refuses wrong types, empty and oversize bodies."""
    ctype = request.headers.get("content-type", BINARY).split(";")[0].strip().lower()
    if ctype != BINARY:
        raise UnsupportedMediaType(ctype, BINARY)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(max_bytes)
    body = request.stream()
    # Look at the first bytes before opening a temp file: an empty body stores nothing.
    first = b""
    try:
        async for piece in body:
            if piece:
                first = piece
                break
    except ClientDisconnect:
        raise EmptyBody() from None
    if not first:
        raise EmptyBody()

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for piece in body:
            if piece:
                yield piece

    try:
        result = await store.put(rest(), max_bytes=max_bytes)
    except ArtifactTooLargeError:
        raise PayloadTooLarge(max_bytes) from None
    if not result.created:
        # Mark the file as freshly wanted (for any age-based clean-up of orphans).
        path = store.path(result.info.artifact_id)
        await asyncio.to_thread(os.utime, path)
    return result


def _digest_headers(info: ArtifactInfo) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(info.artifact_id)).decode()
    return {
        "ETag": f'"{info.artifact_id}"',
        # RFC 9530: the SHA-256 of the whole representation, also on partial responses.
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Content-SHA256": info.artifact_id,
        "Accept-Ranges": "bytes",
    }


def _range_response(
    body: AsyncIterator[bytes] | None,
    *,
    size: int,
    rng: ByteRange | None,
    headers: dict[str, str],
    filename: str | None,
) -> StreamingResponse:
    out = dict(headers)
    status = 200
    length = size
    if rng is not None:
        status = 206
        length = rng.end - rng.start
        out["Content-Range"] = f"bytes {rng.start}-{rng.end - 1}/{size}"
    out["Content-Length"] = str(length)
    if filename:
        out["Content-Disposition"] = f'attachment; filename="{filename}"'

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover

    return StreamingResponse(body or nothing(), status_code=status, headers=out, media_type=BINARY)


async def serve_plaintext(
    request: Request, store: ArtifactStore, artifact_id: str, *, filename: str | None = None
) -> StreamingResponse:
    """The artifact's plaintext (decrypted as it streams), honouring a byte range.

    The header and length are checked, and the first chunks authenticated, before the
    status line goes out, so most damage is a clean problem+json error. Damage found later
    aborts the connection mid-body; clients see an incomplete response, and the
    ``Repr-Digest``/``X-Content-SHA256`` headers let them check what they got.
    """
    info = store.info(artifact_id)  # truncated/extended files fail here
    rng = parse_range(request.headers.get("range"), info.size)
    headers = _digest_headers(info)
    if request.method == "HEAD" or info.size == 0:
        return _range_response(None, size=info.size, rng=rng, headers=headers, filename=filename)
    start, end = (rng.start, rng.end) if rng else (0, info.size)
    pieces = cast(AsyncGenerator[bytes], store.iter_plaintext(artifact_id, start=start, end=end))
    first = await anext(pieces, b"")

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for piece in pieces:
                yield piece
        except ArtifactCorruptError as exc:
            log.error(
                "damaged artifact: download aborted", artifact_id=artifact_id, reason=exc.reason
            )
            raise StreamAborted(str(exc)) from None
        finally:
            await pieces.aclose()

    return _range_response(body(), size=info.size, rng=rng, headers=headers, filename=filename)


async def serve_stored(
    request: Request, store: ArtifactStore, artifact_id: str
) -> StreamingResponse:
    """The artifact file exactly as stored (header + encrypted chunks), with ranges.

    For the chunk server on other hosts: devices get these very ciphertext chunks, and
    a copy of the file in a local ``ArtifactStore`` reads like the original.
    """
    info = store.info(artifact_id)
    size = info.file_size
    rng = parse_range(request.headers.get("range"), size)
    headers = {
        "ETag": f'"stored-{artifact_id}"',
        "Accept-Ranges": "bytes",
        "X-Content-SHA256": artifact_id,
    }
    if request.method == "HEAD":
        return _range_response(None, size=size, rng=rng, headers=headers, filename=None)
    start, end = (rng.start, rng.end) if rng else (0, size)
    path = store.path(artifact_id)

    async def body() -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            pos = start
            while pos < end:
                n = min(_STORED_READ, end - pos)
                data = await asyncio.to_thread(os.pread, fd, n, pos)
                if not data:
                    raise ArtifactCorruptError(artifact_id, "file shrank while being read")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    return _range_response(body(), size=size, rng=rng, headers=headers, filename=None)
