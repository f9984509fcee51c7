"""Health checks of the stack's services: the API over HTTP, the others on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Sequence

import httpx

# Not `import nats`: the repository's nats/ directory (server config) would shadow it for
# the import sorter.
from nats.aio.client import Client as NatsClient

from edgeaiforge_stack.layout import (
    ComponentStatus,
    StackLayout,
    api_url,
    extras,
    host_port,
    port_open,
)
from edgeaiforge_stack.processes import ours_starting, process_running
from schemas.config import Settings
from schemas.rpc import health_rpc
from services.common.bus import parse_reply

__all__ = ["check_services", "connect_bus", "extra_rows", "log_hint", "quiet", "service_health"]


async def quiet(_: Exception) -> None:
    """nats-py's error callback: a connection error becomes the component's state, not a
    traceback on the console."""


async def connect_bus(settings: Settings, layout: StackLayout) -> NatsClient | None:
    user, password = layout.nats_login()
    host, port = host_port(settings.nats.url, 4222)
    if not port_open(host, port):
        return None
    client = NatsClient()

    try:
        # nats-py retries a refused first connection on its own: bound it.
        await asyncio.wait_for(
            client.connect(
                settings.nats.url,
                user=user,
                password=password,
                connect_timeout=2,
                max_reconnect_attempts=0,
                allow_reconnect=False,
                error_cb=quiet,
            ),
            timeout=5,
        )
    except Exception:
        with contextlib.suppress(Exception):
            await client.close()
        return None
    return client


async def service_health(name: str, settings: Settings, nc: NatsClient | None) -> tuple[bool, str]:
    if name == "api":
        url = api_url(settings)
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                reply = await client.get(f"{url}/healthz")
        except httpx.HTTPError as exc:
            return False, f"{url}: {type(exc).__name__}"
        return reply.status_code == 200, url
    if nc is None:
        return False, "the bus does not answer"
    try:
        rpc = health_rpc(name)
        message = await nc.request(rpc.subject, b"{}", timeout=2.0)
        answer = parse_reply(rpc.subject, message.data, rpc.reply)
    except Exception as exc:
        return False, f"no health answer ({type(exc).__name__})"
    if answer.status != "ok":
        return False, f"{answer.status}: {answer.detail or 'no detail'}"
    return True, f"answers on {rpc.subject}"


_HINT_LINES = 3


def log_hint(layout: StackLayout, name: str, prefix: str = "not running") -> str:
    """``prefix; see LOG: <its last lines>``: what the process said since it was last
    started (our own ``--- ... starting`` marker lines say nothing about why it ended)."""
    path = layout.log(name)
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    since = [line.strip() for line in lines if line.strip()]
    for i in range(len(since) - 1, -1, -1):
        if since[i].startswith("--- ") and " starting " in since[i]:
            since = since[i + 1 :]
            break
    if not since and lines:
        return f"{prefix}; it wrote nothing to {path}"
    last = " | ".join(line[:200] for line in since[-_HINT_LINES:])
    return f"{prefix}; see {path}" + (f": {last}" if last else "")


async def check_services(
    settings: Settings,
    layout: StackLayout,
    names: Sequence[str],
    wait: float,
    fresh: Collection[str] = (),
) -> list[ComponentStatus]:
    """Ask each service for its health until all answer or ``wait`` seconds passed.

    ``fresh`` names the services just started: while one of them is alive but does not
    show its command line yet (between fork and exec, on a busy machine), it is starting,
    not dead. A service is reported not running only once its process is gone.
    """
    deadline = time.monotonic() + wait
    nc = await connect_bus(settings, layout)
    while nc is None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        nc = await connect_bus(settings, layout)
    try:
        results: dict[str, ComponentStatus] = {}
        pending = list(names)
        while True:
            for name in list(pending):
                record = layout.read_record(name)
                pid = record["pid"] if record else None
                if not process_running(record):
                    if ours_starting(record, name in fresh):
                        detail = "started; not yet running its command"
                        results[name] = ComponentStatus(name, "service", pid, True, False, detail)
                        continue
                    detail = log_hint(layout, name) if record else "not started"
                    results[name] = ComponentStatus(name, "service", pid, False, False, detail)
                    pending.remove(name)
                    continue
                healthy, detail = await service_health(name, settings, nc)
                results[name] = ComponentStatus(name, "service", pid, True, healthy, detail)
                if healthy:
                    pending.remove(name)
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        return [results[n] for n in names]
    finally:
        if nc is not None:
            await nc.close()


def extra_rows(layout: StackLayout) -> list[ComponentStatus]:
    """Status rows of the recorded processes other than the servers and services."""
    rows = []
    for name in extras(layout):
        record = layout.read_record(name)
        if record is None:
            continue
        running = process_running(record)
        detail = str(record.get("detail", "")) if running else log_hint(layout, name)
        rows.append(ComponentStatus(name, "process", record["pid"], running, running, detail))
    return rows
