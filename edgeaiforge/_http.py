"""The HTTP core every part of the SDK uses: auth, problem+json errors, streaming."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
from pydantic import BaseModel, ValidationError

from edgeaiforge._errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    ConnectionFailedError,
    DownloadIntegrityError,
    InvalidRequestError,
    InvalidTokenError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    UnexpectedResponseError,
)

__all__ = ["DEFAULT_TIMEOUT", "HttpClient", "Params", "Progress", "QueryValue"]

T = TypeVar("T", bound=BaseModel)
#: ``progress(done_bytes, total_bytes)``; total is -1 when unknown.
Progress = Callable[[int, int], None]
DEFAULT_TIMEOUT = 60.0
_PIECE = 1024 * 1024
QueryValue = str | int | float | bool | None
Params = list[tuple[str, QueryValue]] | Mapping[str, Any] | None

_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    status = response.status_code
    title, detail, code = response.reason_phrase, "", ""
    try:
        body = response.json()
    except ValueError:
        detail = response.text[:500]
    else:
        if isinstance(body, dict):
            title = str(body.get("title", title))
            detail = str(body.get("detail", ""))
            code = str(body.get("code", ""))
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidRequestError)
    raise cls(status, title, detail, code)


def _check_token(token: str) -> None:
    """Refuse a token no key can have, before it is sent: an empty one would be answered
    401 with no hint, and one with a line break (copied from a file) fails in httpx as a
    protocol error that reads like a network problem."""
    if not token:
        raise InvalidTokenError("is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidTokenError(
            "contains spaces, line breaks or control characters (copied with its file's "
            "line break?)"
        )


class HttpClient:
    """A synchronous client for one API base URL and one bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        _check_token(token)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "edgeaiforge-sdk"},
            # Reads may wait while the server hashes and encrypts a large upload's tail.
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self._client.close()

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return self._client.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise ConnectionFailedError(self.base_url, f"{type(exc).__name__}: {exc}") from None

    @overload
    def call(
        self,
        method: str,
        path: str,
        response_type: type[T],
        *,
        params: Params = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> T: ...

    @overload
    def call(
        self,
        method: str,
        path: str,
        response_type: None = None,
        *,
        params: Params = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None: ...

    def call(
        self,
        method: str,
        path: str,
        response_type: type[T] | None = None,
        *,
        params: Params = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> T | None:
        """One JSON request; the reply parsed as ``response_type`` (None: the body is ignored)."""
        request = self._client.build_request(
            method, path, params=params, json=json, headers=headers
        )
        response = self._send(request)
        _raise_for(response)
        if response_type is None:
            return None
        return _parse(path, response.content, response_type)

    def upload(
        self,
        path: str,
        file: Path,
        response_type: type[T],
        *,
        params: Params = None,
        progress: Progress | None = None,
        server_wait: float = 0.0,
    ) -> T:
        """PUT the file as a raw, streamed body (never read whole into memory).

        ``server_wait``: seconds the server may hold the answer back (``?wait=``); the read
        timeout grows by as much."""
        size = file.stat().st_size

        def body() -> Iterator[bytes]:
            done = 0
            with open(file, "rb") as f:
                while piece := f.read(_PIECE):
                    done += len(piece)
                    yield piece
                    if progress:
                        progress(done, size)

        request = self._client.build_request(
            "PUT",
            path,
            params=params,
            content=body(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            timeout=httpx.Timeout(self.timeout + server_wait, connect=10.0),
        )
        response = self._send(request)
        _raise_for(response)
        return _parse(path, response.content, response_type)

    def download(
        self, path: str, dest: Path, *, what: str, progress: Progress | None = None
    ) -> tuple[Path, str]:
        """Stream ``path`` into ``dest`` (through a ``.part`` file), checking the length and
        the SHA-256 the server announced. Returns the file and its SHA-256."""
        part = dest.with_name(dest.name + ".part")
        sha = hashlib.sha256()
        request = self._client.build_request("GET", path)
        response = self._send(request, stream=True)
        try:
            if not response.is_success:
                response.read()
                _raise_for(response)
            expected = response.headers.get("x-content-sha256", "").lower()
            total = int(response.headers.get("content-length", "-1"))
            done = 0
            try:
                with open(part, "wb") as f:
                    for piece in response.iter_bytes(_PIECE):
                        sha.update(piece)
                        f.write(piece)
                        done += len(piece)
                        if progress:
                            progress(done, total)
            except httpx.TransportError as exc:
                raise DownloadIntegrityError(
                    what, f"the connection broke after {done} bytes ({type(exc).__name__})"
                ) from None
            if total >= 0 and done != total:
                raise DownloadIntegrityError(what, f"got {done} of {total} bytes")
            digest = sha.hexdigest()
            if expected and digest != expected:
                raise DownloadIntegrityError(
                    what, f"SHA-256 is {digest}, the server announced {expected}"
                )
            os.replace(part, dest)
            return dest, digest
        finally:
            response.close()
            part.unlink(missing_ok=True)


def _parse(path: str, content: bytes, response_type: type[T]) -> T:
    """A success body as ``response_type``; anything else is the SDK's own error."""
    try:
        return response_type.model_validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise UnexpectedResponseError(path, f"{where}: {first['msg']}") from None
