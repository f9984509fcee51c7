"""Removing a device from the fleet, on real NATS and Mosquitto (dynamic security): the
broker drops it and refuses it, its unfinished targets are cancelled, it leaves the
listings, and only a token made for it after the removal enrols it again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from edge_runtime import EdgeRuntime, prepare
from schemas.config import Settings
from schemas.deployer import (
    CreateDeployment,
    CreateEnrollmentToken,
    DeployerRpc,
    DeploymentInfo,
    DeploymentRef,
    DeploymentStatus,
    DeviceInfo,
    DeviceRef,
    EnrollReply,
    ListDevices,
    RemoveDevice,
    TargetSelector,
)
from schemas.events import DeploymentOutcome, DeviceRemoved, TargetState
from schemas.topics import Topics
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.errors import Forbidden, NotFound
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE, device_role_name
from services.deployer.app import DeployerApp, create_service
from tests.support.deploy import (
    StaticCatalog,
    bias_model,
    deployer_settings,
    enroll_via_rpc,
    forget_device,
    put,
    running,
)

TOPICS = Topics("eaf/v1")


class Env:
    def __init__(
        self, app: DeployerApp, settings: Settings, catalog: StaticCatalog, tmp: Path
    ) -> None:
        self.app = app
        self.bus: Bus = app.bus
        self.settings = settings
        self.tmp = tmp
        self.catalog = catalog
        self.store = ArtifactStore(
            root=settings.model_repository.storage_path,
            kek=load_kek(settings.security),
            chunk_size=settings.deployment.chunk_size,
        )

    async def remove(self, device_id: str, reason: str = "") -> DeviceInfo:
        return await self.bus.call(
            DeployerRpc.REMOVE_DEVICE,
            RemoveDevice(device_id=device_id, removed_by="test", reason=reason),
        )

    async def device(self, device_id: str) -> DeviceInfo:
        return await self.bus.call(DeployerRpc.GET_DEVICE, DeviceRef(device_id=device_id))

    async def listed(self, **filters: object) -> set[str]:
        found = await self.bus.call(DeployerRpc.LIST_DEVICES, ListDevices.model_validate(filters))
        return {d.device_id for d in found.devices}

    async def deployment(self, deployment_id: str) -> DeploymentInfo:
        return await self.bus.call(
            DeployerRpc.GET_DEPLOYMENT, DeploymentRef(deployment_id=deployment_id)
        )

    async def last_removed_event(self) -> DeviceRemoved:
        msg = await self.bus.js.get_last_msg(self.settings.nats.stream, DeviceRemoved.SUBJECT)
        assert msg.data is not None
        return DeviceRemoved.model_validate_json(msg.data)


@pytest.fixture
async def env(nats_server, mosquitto_server, mqtt_user, tmp_path) -> AsyncIterator[Env]:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = deployer_settings(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, service_user=tuple(user)
    )
    catalog = StaticCatalog()
    async with create_service(settings, catalog=catalog) as app:
        yield Env(app, settings, catalog, tmp_path)


async def connect_as(reply: EnrollReply) -> None:
    """Connect with the device's credentials and leave again (raises if refused)."""
    async with aiomqtt.Client(
        reply.mqtt.host,
        reply.mqtt.port,
        username=reply.mqtt.username,
        password=reply.mqtt.password,
        identifier=reply.mqtt.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10,
    ):
        pass


async def test_a_running_device_is_dropped_refused_and_unlisted(
    env: Env,
    mqtt_admin,
    unique_id,
) -> None:
    device_id = unique_id("dev-")
    reply = await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group="g")
    runtime = EdgeRuntime(env.tmp / device_id)
    runtime.reconnect_min = runtime.reconnect_max = 0.2  # it tries again, often
    async with running(runtime, forget=False):  # removed: it cannot log in to clear
        await connect_as(reply)  # the credentials work before
        removed = await env.remove(device_id, reason="stolen")
        assert removed.removed_at is not None
        assert (removed.removed_by, removed.removal_reason) == ("test", "stolen")
        # Mosquitto's dynamic security disconnects a client when it is deleted.
        async with asyncio.timeout(10):
            while runtime.connected:
                await asyncio.sleep(0.05)
        connections = runtime.stats["connections"]
        with pytest.raises(aiomqtt.MqttError):
            await connect_as(reply)
        await asyncio.sleep(1.0)  # the runtime keeps trying: never let in again
        assert not runtime.connected
        assert runtime.stats["connections"] == connections
    assert device_id not in await mqtt_admin.list_clients()
    with pytest.raises(Exception, match="not found"):
        await mqtt_admin.get_role(device_role_name(device_id))

    event = await env.last_removed_event()
    assert (event.device_id, event.reason) == (device_id, "stolen")
    # Idempotent: the same answer, the same event id.
    again = await env.remove(device_id, reason="something else")
    fields = ("removed_at", "removed_by", "removal_reason", "online", "enrolled_at")
    assert again.model_dump(include=set(fields)) == removed.model_dump(include=set(fields))
    assert (await env.last_removed_event()).event_id == event.event_id
    # History stays: shown by id, listed only on request.
    shown = await env.device(device_id)
    assert shown.removed_at == removed.removed_at
    assert not shown.online
    assert device_id not in await env.listed()
    assert device_id not in await env.listed(group="g")
    assert device_id in await env.listed(include_removed=True)
    with pytest.raises(NotFound, match="not enrolled"):
        await env.remove(unique_id("nobody-"))


async def test_only_a_token_made_after_the_removal_enrols_it_again(env: Env, unique_id) -> None:
    device_id = unique_id("dev-")
    state_dir = env.tmp / device_id
    await enroll_via_rpc(env.bus, state_dir, device_id)
    made_before = await env.bus.call(
        DeployerRpc.CREATE_ENROLLMENT_TOKEN, CreateEnrollmentToken(device_id=device_id)
    )
    anyone = await env.bus.call(DeployerRpc.CREATE_ENROLLMENT_TOKEN, CreateEnrollmentToken())
    await env.remove(device_id)
    for token, why in ((made_before, "revoked"), (anyone, "only a token made for this device")):
        request = prepare(env.tmp / f"{device_id}-again", device_id=device_id, token=token.token)
        with pytest.raises(Forbidden, match=why):
            await env.bus.call(DeployerRpc.ENROLL, request)
    reply = await enroll_via_rpc(env.bus, env.tmp / f"{device_id}-new", device_id)
    await connect_as(reply)
    back = await env.device(device_id)
    assert back.removed_at is None
    assert device_id in await env.listed()
    await forget_device(env.tmp / f"{device_id}-new")


async def test_removal_cancels_its_target_and_the_deployment_completes(
    env: Env,
    unique_id,
) -> None:
    group = unique_id("fleet-")
    live, gone = f"{group}-live", f"{group}-gone"
    for device_id in (live, gone):
        await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group=group)
    info = await put(env.store, bias_model(0.25))
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", info)
    async with running(EdgeRuntime(env.tmp / live)):
        created = await env.bus.call(DeployerRpc.CREATE_DEPLOYMENT, CreateDeployment(
                model=model, version="1.0.0", target=TargetSelector(group=group),
                device_timeout=300,
            ))  # fmt: skip
        async with asyncio.timeout(60):
            while True:
                progress = await env.deployment(created.deployment_id)
                states = {t.device_id: t.state for t in progress.targets}
                if states[live] is TargetState.ACTIVE:
                    break
                await asyncio.sleep(0.2)
        # The other device is offline: the deployment waits for it.
        await asyncio.sleep(0.5)
        waiting = await env.deployment(created.deployment_id)
        assert waiting.status is DeploymentStatus.RUNNING
        await env.remove(gone, reason="broken")
        async with asyncio.timeout(10):
            while (done := await env.deployment(created.deployment_id)).status is not (
                DeploymentStatus.COMPLETED
            ):
                await asyncio.sleep(0.1)
    states = {t.device_id: t.state for t in done.targets}
    assert states == {live: TargetState.ACTIVE, gone: TargetState.CANCELLED}
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    # A removed device is no target any more.
    again = await env.bus.call(
        DeployerRpc.CREATE_DEPLOYMENT,
        CreateDeployment(model=model, version="1.0.0", target=TargetSelector(group=group)),
    )
    assert [t.device_id for t in again.targets] == [live]


async def test_a_target_made_in_a_race_with_the_removal_is_cancelled(env: Env, unique_id) -> None:
    from services.deployer.store import Target

    group = unique_id("fleet-")
    live, gone = f"{group}-live", f"{group}-gone"
    for device_id in (live, gone):
        await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group=group)
    info = await put(env.store, bias_model(0.5))
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", info)
    await env.remove(gone)
    # The live device is offline for now: the deployment cannot complete before the race.
    created = await env.bus.call(
        DeployerRpc.CREATE_DEPLOYMENT,
        CreateDeployment(
            model=model, version="1.0.0", target=TargetSelector(group=group), device_timeout=300
        ),
    )
    assert [t.device_id for t in created.targets] == [live]
    # As if the deployment had selected the device just before its removal committed.
    async with env.app.deployer.sessions.begin() as s:
        s.add(
            Target(
                deployment_id=created.deployment_id, device_id=gone, wave=0, model=model,
                version="1.0.0", artifact_id=info.artifact_id, sequence=1,
                state=TargetState.PENDING.value,
            )
        )  # fmt: skip
    await env.app.deployer.tick()
    states = {t.device_id: t.state for t in (await env.deployment(created.deployment_id)).targets}
    assert states == {live: TargetState.NOTIFIED, gone: TargetState.CANCELLED}
    async with running(EdgeRuntime(env.tmp / live)):
        async with asyncio.timeout(60):
            while (done := await env.deployment(created.deployment_id)).status is not (
                DeploymentStatus.COMPLETED
            ):
                await asyncio.sleep(0.1)
    assert {t.device_id: t.state for t in done.targets} == {
        live: TargetState.ACTIVE,
        gone: TargetState.CANCELLED,
    }
    assert done.outcome is DeploymentOutcome.SUCCEEDED


async def test_a_removal_cut_short_at_the_broker_is_finished_by_a_repeat(
    env: Env,
    unique_id,
) -> None:
    from services.common.errors import ServiceUnavailable
    from services.common.mqtt_admin import DynsecTimeoutError

    device_id = unique_id("dev-")
    reply = await enroll_via_rpc(env.bus, env.tmp / device_id, device_id)
    admin = env.app.deployer.admin

    async def broker_away(username: str) -> None:
        """The admin link lost once: the command gets no answer."""
        raise DynsecTimeoutError("deleteClient", 0.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(admin, "delete_client", broker_away)
        with pytest.raises(ServiceUnavailable, match="remove it again"):
            await env.remove(device_id)
    assert (await env.device(device_id)).removed_at is not None
    await connect_as(reply)  # not yet revoked at the broker
    await env.remove(device_id)
    with pytest.raises(aiomqtt.MqttError):
        await connect_as(reply)
    assert (await env.last_removed_event()).device_id == device_id
