"""Upload limits are enforced while the body streams in: a client that keeps sending past
``model_repository.max_upload_bytes`` (1 MiB here) is answered 413 long before it is done,
whether it declared its length or not, on both upload routes; nothing stays in the store."""

from __future__ import annotations

import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest

LIMIT = 1 << 20
#: What the client would send if nobody stopped it.
ENDLESS = 64 << 20
PIECE = 64 << 10


def stream_until_refused(
    url: str, path: str, token: str, *, declare: int | None
) -> tuple[int, int]:
    """PUT/POST a body of ``ENDLESS`` bytes piece by piece; stop when the server answers.

    Returns (status, bytes sent when the answer came).
    """
    parts = urlsplit(url)
    method = "PUT" if "/versions/" in path else "POST"
    head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}",
            f"Authorization: Bearer {token}", "Content-Type: application/octet-stream"]  # fmt: skip
    head.append(
        f"Content-Length: {declare}" if declare is not None else "Transfer-Encoding: chunked"
    )
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        piece = b"\x5a" * PIECE
        answer = b""
        deadline = time.monotonic() + 60
        while sent < ENDLESS and time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionError:
                break
            if answer:
                break
            frame = piece if declare is not None else b"%x\r\n%s\r\n" % (len(piece), piece)
            try:
                sock.sendall(frame)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            except ConnectionError:
                break
            sent += len(piece)
        sock.setblocking(True)
        sock.settimeout(10)
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1") else 0
    return status, sent


@pytest.mark.parametrize("declared", [None, ENDLESS], ids=["chunked", "content-length"])
@pytest.mark.parametrize("route", ["version", "artifact"])
def test_oversize_upload_is_stopped_while_streaming(api_platform, route, declared) -> None:
    store = api_platform.settings.model_repository.storage_path
    before = {p for p in store.rglob("*") if p.is_file()}
    path = (
        f"/api/v1/models/big-{uuid.uuid4().hex[:8]}/versions/1.0.0"
        if route == "version"
        else "/api/v1/artifacts"
    )
    status, sent = stream_until_refused(
        api_platform.url, path, api_platform.keys["deployer"], declare=declared
    )
    assert status == 413
    # Refused near the limit (socket buffers add a few MiB), never after reading it all.
    assert sent < LIMIT + (8 << 20), sent
    if declared is not None:
        assert sent < (8 << 20)  # the declared length alone is refused, before the body
    time.sleep(0.2)
    after = {p for p in store.rglob("*") if p.is_file()}
    assert after == before, "an oversize upload left files behind"
