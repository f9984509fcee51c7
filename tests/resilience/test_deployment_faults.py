"""Rollout faults with the real deployer (NATS, Mosquitto, in-process edge runtimes): a
device offline across its manifest's expiry, and the broker restarted in the middle of a
wave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge_runtime import EdgeRuntime
from edgeaiforge_stack.servers import MosquittoServer
from schemas.config import Settings
from schemas.deployer import (
    CreateDeployment,
    DeployerRpc,
    DeploymentInfo,
    DeploymentRef,
    DeploymentStatus,
    TargetSelector,
)
from schemas.events import DeploymentOutcome, TargetState
from schemas.transfer import RejectionCode
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE, MqttAdmin, provision_platform
from services.deployer.app import create_service
from tests.support.deploy import (
    StaticCatalog,
    bias_model,
    deployer_settings,
    enroll_via_rpc,
    forget_device,
    padded_model,
    put,
)
from tests.support.resilience import wait_until


@contextlib.asynccontextmanager
async def deployer(settings: Settings) -> AsyncIterator[tuple[Bus, ArtifactStore, StaticCatalog]]:
    catalog = StaticCatalog()
    async with create_service(settings, catalog=catalog) as app:
        store = ArtifactStore(
            root=settings.model_repository.storage_path,
            kek=load_kek(settings.security),
            chunk_size=settings.deployment.chunk_size,
        )
        yield app.bus, store, catalog


async def wait_completed(bus: Bus, deployment_id: str, timeout: float) -> DeploymentInfo:
    async with asyncio.timeout(timeout):
        while True:
            info = await bus.call(
                DeployerRpc.GET_DEPLOYMENT, DeploymentRef(deployment_id=deployment_id)
            )
            if info.status is DeploymentStatus.COMPLETED:
                return info
            await asyncio.sleep(0.2)


async def deploy(bus: Bus, model: str, version: str, **target: Any) -> DeploymentInfo:
    waves = target.pop("waves", None)
    request = CreateDeployment(
        model=model, version=version, target=TargetSelector(**target),
        **({"strategy": "waves", "waves": waves} if waves else {}),
    )  # fmt: skip
    return await bus.call(DeployerRpc.CREATE_DEPLOYMENT, request)


async def test_device_offline_across_manifest_expiry_gets_a_fresh_one_and_completes(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = deployer_settings(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, service_user=tuple(user)
    )
    ttl = 2
    settings = settings.model_copy(
        update={"deployment": settings.deployment.model_copy(update={"manifest_ttl": ttl})}
    )
    async with deployer(settings) as (bus, store, catalog):
        device_id = unique_id("dev-")
        state_dir = tmp_path / device_id
        await enroll_via_rpc(bus, state_dir, device_id)
        info = await put(store, bias_model(0.6))
        model = unique_id("m-")
        catalog.add(model, "1.0.0", info)
        # The device is off: the manifest waits retained on its desired topic and expires.
        created = await deploy(bus, model, "1.0.0", device_id=device_id)
        await asyncio.sleep(ttl + 1.5)
        refusals: list[str] = []
        runtime = EdgeRuntime(state_dir, log=refusals.append)
        task = asyncio.create_task(runtime.run())
        try:
            done = await wait_completed(bus, created.deployment_id, 60)
        finally:
            runtime.stop()
            await asyncio.wait_for(task, 15)
            await forget_device(state_dir)
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert [t.state for t in done.targets] == [TargetState.ACTIVE]
    # It did see the stale manifest first, refused it as expired, then got a fresh one.
    rejection = runtime.snapshot().rejection
    assert rejection is not None and rejection.code is RejectionCode.EXPIRED
    assert rejection.deployment_id == created.deployment_id
    assert any("refused" in line and "expired" in line for line in refusals)
    assert runtime.active is not None and runtime.active.artifact_id == info.artifact_id


@pytest.mark.slow
async def test_broker_restarted_mid_wave_the_wave_completes(
    nats_server, tmp_path, unique_id
) -> None:
    # Our own broker: the session one is shared and must not be restarted.
    server = MosquittoServer(data_dir=tmp_path / "mosquitto")
    with server:
        async with MqttAdmin(hostname=server.host, port=server.port,
                             username=server.admin_username,
                             password=server.admin_password) as admin:  # fmt: skip
            await provision_platform(admin)
            await admin.create_client("svc", "svc-pw", roles=[SERVICE_ROLE])
        settings = deployer_settings(
            tmp_path, nats_url=nats_server.url, mosquitto=server,
            service_user=("svc", "svc-pw"), chunk_size=65536,
        )  # fmt: skip
        async with deployer(settings) as (bus, store, catalog):
            group = unique_id("fleet-")
            runtimes: list[EdgeRuntime] = []
            for i in range(4):
                device_id = f"{group}-{i}"
                await enroll_via_rpc(bus, tmp_path / device_id, device_id, group=group)
                runtimes.append(EdgeRuntime(tmp_path / device_id, reconnect_max=1.0))
            data = padded_model(12 * 1024 * 1024, seed=9)
            info = await put(store, data)
            model = unique_id("m-")
            catalog.add(model, "1.0.0", info)
            tasks = [asyncio.create_task(rt.run()) for rt in runtimes]
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(rt.wait_connected() for rt in runtimes)), 30
                )
                created = await deploy(bus, model, "1.0.0", group=group, waves=("2", "100%"))
                await wait_until(
                    lambda: any(rt.stats["chunks_received"] > 10 for rt in runtimes), 60,
                    "the first wave to be transferring",
                )  # fmt: skip
                at_restart = [rt.stats["chunks_received"] for rt in runtimes]
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(server.start)
                done = await wait_completed(bus, created.deployment_id, 120)
            finally:
                for rt in runtimes:
                    rt.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(forget_device(rt.state.root) for rt in runtimes))
    assert any(0 < n < info.chunk_count for n in at_restart), at_restart
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert done.counts == {TargetState.ACTIVE: 4}
    for rt in runtimes:
        assert rt.stats["connections"] >= 2
        assert (rt.state.model_path(info.artifact_id)).read_bytes() == data
