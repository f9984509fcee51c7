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


@asynccontextmanager
async def _open_context(settings: Settings) -> AsyncIterator[ApiContext]:
    """What the routes use: the settings, the bus (connected) and the artifact store."""
    kek = load_kek(settings.security)
    store = ArtifactStore(
        root=settings.model_repository.storage_path,
        kek=kek,
        chunk_size=settings.deployment.chunk_size,
    )
    bus = Bus(settings.nats, service="api")
    bus.serve_health()
    await bus.start()
    try:
        yield ApiContext(settings=settings, bus=bus, artifacts=store)
    finally:
        await bus.stop()


def create_app(settings: Settings, *, context: ApiContext | None = None) -> FastAPI:
    """The ASGI app; its lifespan connects to NATS and opens the artifact store, unless
    the caller has opened them (``context``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if context is not None:
            app.state.ctx = context
            yield
            return
        async with _open_context(settings) as ctx:
            app.state.ctx = ctx
            yield

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


#: Seconds open requests (an upload, a download) get to finish when the API stops; then
#: uvicorn cancels them. Below the runner's STOP_GRACE, so the API stops on its own.
_REQUEST_GRACE = 1


@asynccontextmanager
async def create_api_server(settings: Settings) -> AsyncIterator[_Server]:
    """Serve the API on ``api.host:api.port`` until the context exits."""
    sock = _bind(settings.api.host, settings.api.port)
    try:
        # The bus is opened here, not in the app's lifespan: a stop during start-up (NATS
        # not there yet) then cancels our own wait, where cancelling uvicorn's lifespan
        # task made it log the CancelledError's traceback as a failed start-up.
        async with _open_context(settings) as context:
            config = uvicorn.Config(
                create_app(settings, context=context),
                host=settings.api.host,
                port=settings.api.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=_REQUEST_GRACE,
            )
            server = _Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                while not server.started:
                    if task.done():
                        exc = task.exception()
                        reason = repr(exc) if exc else "stopped during start-up"
                        raise ApiServerError(settings.api.host, settings.api.port, reason)
                    await asyncio.sleep(0.02)
                log.info("api listening", host=settings.api.host, port=settings.api.port)
                yield server
            finally:
                server.should_exit = True
                try:
                    # wait, not await: a server that failed to start has said why above.
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    # Cancelled ourselves (stopping during start-up, or the runner's
                    # backstop): uvicorn stops at once instead of at the loop's end.
                    server.force_exit = True
                    task.cancel()
                    raise
    finally:
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
