"""Fixtures of the resilience suite: the registry, deployer, tracker and API in-process on
the session's real NATS, Mosquitto and InfluxDB, with one API key per role."""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from schemas.config import Settings
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings


@contextmanager
def service_in_thread(factory: Callable[[Settings], Any], settings: Settings) -> Iterator[None]:
    """A service (``factory(settings)``) on its own event loop in a background thread, so
    synchronous tests can call it over HTTP while it serves."""
    ready, stop_flag = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            async with factory(settings):
                ready.set()
                while not stop_flag.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(60)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        stop_flag.set()
        thread.join(30)


@dataclass(frozen=True)
class Platform:
    """A running API (with registry and deployer) and a key of each role."""

    url: str
    settings: Settings
    keys: dict[str, str]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


# Module scope, not session: its deployer joins the broker's `$share/deployer/...` groups
# and its services the bus's queue groups, so it must not outlive the tests that use it
# (it would answer other tests' chunk requests and RPCs).
@pytest.fixture(scope="module")
def api_platform(
    nats_server, mosquitto_server, influxdb_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    from services.common.mqtt_admin import MqttAdmin
    from services.deployer.app import create_service as create_deployer
    from services.tracker import create_service as create_tracker

    root = tmp_path_factory.mktemp("resilience-api")
    username, password = f"resilience-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)

    async def service_user() -> None:
        async with MqttAdmin(
            hostname=mosquitto_server.host, port=mosquitto_server.port,
            username=mosquitto_server.admin_username, password=mosquitto_server.admin_password,
        ) as admin:  # fmt: skip
            await admin.create_client(username, password, roles=[SERVICE_ROLE])

    asyncio.run(service_user())
    settings = platform_settings(
        root,
        nats_url=nats_server.url,
        model_repository={"max_upload_bytes": 1 << 20},
        mqtt={"host": mosquitto_server.host, "port": mosquitto_server.port,
              "username": username, "password": password},
        deployer={"admin_username": mosquitto_server.admin_username,
                  "admin_password": mosquitto_server.admin_password,
                  "tick_interval": 0.5},
        influxdb={"url": influxdb_server.url, "database": "resilience_metrics"},
    )  # fmt: skip
    with serve_in_thread(settings, durable_prefix="resilience-registry") as url:
        roles = ("viewer", "deployer", "admin")
        keys = {role: create_api_key(settings, role=role) for role in roles}  # type: ignore[arg-type]
        with (
            service_in_thread(create_deployer, settings),
            service_in_thread(create_tracker, settings),
        ):
            yield Platform(url, settings, keys)
