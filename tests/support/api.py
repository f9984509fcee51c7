"""Run the registry and the API for the tests and the benchmarks: in-process or as a process.

``serve_in_thread(settings)`` runs both on their own event loop in a background thread,
so synchronous code (the SDK, the CLI) can talk to them from the calling thread:

    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    with serve_in_thread(settings) as url:
        token = create_api_key(settings, role="admin")
        ModelManager(url, token).list_models()
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from schemas.config import Settings
from schemas.registry import ApiRole
from services.api.app import create_api_server
from services.common.db import create_engine
from services.registry.app import create_service as create_registry
from services.registry.store import RegistryStore

#: The checkout, where ``python -m services.api`` is found.
ROOT = Path(__file__).resolve().parents[2]

__all__ = ["api_process", "create_api_key", "new_api_key", "serve_in_thread"]


async def _create_key(settings: Settings, role: ApiRole, name: str) -> str:
    engine = create_engine(settings.database)
    try:
        store = RegistryStore(engine)
        await store.create_tables()
        created = await store.create_api_key(name=name, role=role, created_by="testing")
        return created.token
    finally:
        await engine.dispose()


def create_api_key(settings: Settings, *, role: ApiRole, name: str = "") -> str:
    """Create an API key straight in the registry's database; returns its token.

    It runs on its own loop in its own thread. From a coroutine whose own loop also runs a
    service on that database, await ``new_api_key`` instead: blocking that loop while the
    service holds SQLite's write lock would wait for a lock that is never released.
    """
    token: str = _run_coroutine_in_thread(_create_key(settings, role, name or f"{role}-key"))
    return token


async def new_api_key(settings: Settings, *, role: ApiRole, name: str = "") -> str:
    """``create_api_key`` for async code."""
    return await _create_key(settings, role, name or f"{role}-key")


def _run_coroutine_in_thread(coro: Any) -> Any:
    # Its own loop in its own thread: callable while the caller's thread runs a loop
    # that serves the API in another thread.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@contextmanager
def serve_in_thread(
    settings: Settings,
    *,
    registry: bool = True,
    api: bool = True,
    durable_prefix: str = "registry",
) -> Iterator[str]:
    """Run the registry and the API (either can be left out); yields the API's URL."""
    ready = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            try:
                if registry:
                    await stack.enter_async_context(
                        create_registry(settings, durable_prefix=durable_prefix)
                    )
                if api:
                    await stack.enter_async_context(create_api_server(settings))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(60)
    if failure:
        thread.join(10)
        raise failure[0]
    try:
        yield f"http://{settings.api.host}:{settings.api.port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@contextmanager
def api_process(
    settings: Settings, config: Path, *, timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m services.api --config CONFIG`` (written from ``settings``) in its own
    process, as deployments run it; yields its URL and the process once ``/healthz``
    answers, and stops it when the context exits."""
    config.write_text(
        f"""
[model_repository]
storage_path = "{settings.model_repository.storage_path}"
cache_path = "{settings.model_repository.cache_path}"
[security]
encryption_key_path = "{settings.security.encryption_key_path}"
signing_key_path = "{settings.security.signing_key_path}"
dev_mode = true
[nats]
url = "{settings.nats.url}"
[database]
url = "{settings.database.url}"
[api]
host = "{settings.api.host}"
port = {settings.api.port}
"""
    )
    url = f"http://{settings.api.host}:{settings.api.port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.api", "--config", str(config), "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the API process did not start:\n{err[-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
