"""The deployer in-process on real NATS and Mosquitto, with in-process edge runtimes.

``make_env`` is a fixture (loaded by ``pytest_plugins`` in ``tests/conftest.py``); ``Env``,
``devices``, ``fleet``, ``device_info`` and ``until_online`` are plain helpers the tests import.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_runtime import EdgeRuntime
from schemas.config import Settings
from schemas.deployer import (
    DeployerRpc,
    DeploymentInfo,
    DeploymentRef,
    DeploymentStatus,
    DeviceInfo,
    DeviceRef,
)
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import DeployerApp, create_service
from tests.support.deploy import StaticCatalog, deployer_settings, enroll_via_rpc, forget_device


async def device_info(bus: Bus, device_id: str) -> DeviceInfo:
    return await bus.call(DeployerRpc.GET_DEVICE, DeviceRef(device_id=device_id))


async def until_online(bus: Bus, device_id: str, online: bool, timeout: float) -> DeviceInfo:
    """Polls the deployer until it shows ``device_id`` with ``online``."""
    deadline = time.monotonic() + timeout
    while (info := await device_info(bus, device_id)).online is not online:
        if time.monotonic() > deadline:
            raise AssertionError(f"{device_id} not shown online={online} within {timeout} s")
        await asyncio.sleep(0.05)
    return info


@dataclass
class Env:
    app: DeployerApp
    bus: Bus
    settings: Settings
    store: ArtifactStore
    catalog: StaticCatalog
    tmp: Path

    async def deployment(self, deployment_id: str) -> DeploymentInfo:
        return await self.bus.call(
            DeployerRpc.GET_DEPLOYMENT, DeploymentRef(deployment_id=deployment_id)
        )

    async def device(self, device_id: str) -> DeviceInfo:
        return await device_info(self.bus, device_id)

    async def until_online(self, device_id: str, online: bool, timeout: float) -> DeviceInfo:
        return await until_online(self.bus, device_id, online, timeout)

    async def wait_completed(self, deployment_id: str, timeout: float = 60) -> DeploymentInfo:
        async with asyncio.timeout(timeout):
            while True:
                info = await self.deployment(deployment_id)
                if info.status is DeploymentStatus.COMPLETED:
                    return info
                await asyncio.sleep(0.2)


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(nats_server, mosquitto_server, mqtt_user, tmp_path) -> AsyncIterator[EnvFactory]:
    """Starts the deployer in-process; keyword arguments go to ``deployer_settings``."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(database_url: str | None = None, **overrides: Any) -> Env:
            user = await mqtt_user(roles=[SERVICE_ROLE])
            settings = deployer_settings(
                tmp_path,
                nats_url=nats_server.url,
                mosquitto=mosquitto_server,
                service_user=tuple(user),
                **overrides,
            )
            if database_url is not None:
                settings = settings.model_copy(
                    update={"database": settings.database.model_copy(update={"url": database_url})}
                )
            catalog = StaticCatalog()
            app = await stack.enter_async_context(create_service(settings, catalog=catalog))
            store = ArtifactStore(
                root=settings.model_repository.storage_path,
                kek=load_kek(settings.security),
                chunk_size=settings.deployment.chunk_size,
            )
            return Env(app, app.bus, settings, store, catalog, tmp_path)

        yield start


@contextlib.asynccontextmanager
async def devices(runtimes: list[EdgeRuntime]) -> AsyncIterator[list[EdgeRuntime]]:
    """Runs ``runtimes`` until the block ends, connected before it starts."""
    tasks = [asyncio.create_task(rt.run()) for rt in runtimes]
    try:
        await asyncio.wait_for(asyncio.gather(*(rt.wait_connected() for rt in runtimes)), 30)
        yield runtimes
    finally:
        for rt in runtimes:
            rt.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(forget_device(rt.state.root) for rt in runtimes))


async def fleet(env: Env, prefix: str, count: int) -> list[EdgeRuntime]:
    """``count`` enrolled devices of group ``prefix`` (not running yet), in id order."""
    runtimes = []
    for i in range(count):
        device_id = f"{prefix}-{i}"
        await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group=prefix)
        runtimes.append(EdgeRuntime(env.tmp / device_id))
    return runtimes
