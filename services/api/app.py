"""The FastAPI application and the server that runs it (uvicorn, inside the service runner).

To add an area, write ``services/api/routes/<area>.py`` with an ``APIRouter`` named
``router`` and add it to ``ROUTERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, FastAPI

from schemas.config import Settings
from services.api.deps import ApiContext
from services.api.problems import install_problem_handlers
from services.api.routes import (
    artifacts,
    asyncapi,
    deployments,
    devices,
    health,
    keys,
    models,
    stats,
)
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.common.logging import get_logger

__all__ = ["ROUTERS", "ApiServerError", "create_api_server", "create_app"]

log = get_logger(__name__)

#: Every router the API serves, in order.
ROUTERS: list[APIRouter] = [
    health.router,
    models.router,
    artifacts.router,
    keys.router,
    devices.router,
    deployments.router,
    stats.router,
    asyncapi.router,
]


class ApiServerError(Exception):
    """The HTTP server could not start (most often: the port is taken)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(
            f"the API could not listen on {host}:{port} ({reason}); "
            "set api.host / api.port (or EAF_API__PORT) to a free address"
        )


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app; its lifespan connects to NATS and opens the artifact store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kek = load_kek(settings.security)
        store = ArtifactStore(
            root=settings.model_repository.storage_path,
            kek=kek,
            chunk_size=settings.deployment.chunk_size,
        )
        bus = Bus(settings.nats, service="api")
        bus.serve_health()
        await bus.start()
        app.state.ctx = ApiContext(settings=settings, bus=bus, artifacts=store)
        try:
            yield
        finally:
            await bus.stop()

    app = FastAPI(
        title="EdgeAIForge API",
        version="1",
        summary="Versioned, encrypted ONNX model repository for edge fleets.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


class _Server(uvicorn.Server):
    # The service runner owns SIGTERM/SIGINT; uvicorn must not replace its handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def create_api_server(settings: Settings) -> AsyncIterator[_Server]:
    """Serve the API on ``api.host:api.port`` until the context exits."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    sock = _bind(settings.api.host, settings.api.port)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            exc = task.exception()
            reason = repr(exc) if exc else "stopped during start-up"
            raise ApiServerError(settings.api.host, settings.api.port, reason)
        await asyncio.sleep(0.02)
    log.info("api listening", host=settings.api.host, port=settings.api.port)
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    # Bind here rather than in uvicorn, which exits the process on a taken port.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on connections of sockets that
    # say so. Without it, the body of a response waited for the client's delayed ACK of
    # its head (40 ms after an upload: the head of a 256 MiB upload's reply, then Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiServerError(host, port, exc.strerror or str(exc)) from None
    sock.set_inheritable(True)
    return sock
