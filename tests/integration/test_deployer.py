"""The deployer on real NATS and Mosquitto: enrolment over RPC, rollouts to in-process
devices, preflight, wave thresholds, retention."""

from __future__ import annotations

import pytest

from edge_runtime import EdgeRuntime, capabilities
from schemas.deployer import (
    CreateDeployment,
    CreateEnrollmentToken,
    DeployerRpc,
    DeviceRef,
    TargetSelector,
)
from schemas.events import DeploymentOutcome, TargetState
from schemas.registry import VersionsInUseRequest
from schemas.reports import DeviceRequirements
from services.common.errors import Conflict, Forbidden
from tests.support.deploy import (
    bias_model,
    enroll_via_rpc,
    padded_model,
    put,
)
from tests.support.deployer_env import Env, EnvFactory, devices


@pytest.fixture
async def env(make_env: EnvFactory) -> Env:
    return await make_env()


async def test_64mb_model_arrives_byte_identical_and_active(env: Env, unique_id) -> None:
    device_id = unique_id("dev-")
    state_dir = env.tmp / device_id
    await enroll_via_rpc(env.bus, state_dir, device_id)
    data = padded_model(64 * 1024 * 1024, seed=64)
    info = await put(env.store, data)
    model = unique_id("big-")
    env.catalog.add(model, "1.0.0", info, aliases=("production",))
    async with devices([EdgeRuntime(state_dir)]):
        created = await env.bus.call(
            DeployerRpc.CREATE_DEPLOYMENT,
            CreateDeployment(
                model=model, version="@production", target=TargetSelector(device_id=device_id)
            ),
        )
        assert created.version == "1.0.0"
        done = await env.wait_completed(created.deployment_id, timeout=120)
        # Asked while the device still runs: once it stops it is rightly reported offline.
        device = await env.bus.call(DeployerRpc.GET_DEVICE, DeviceRef(device_id=device_id))
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert [t.state for t in done.targets] == [TargetState.ACTIVE]
    assert done.targets[0].bytes_received == len(data)
    assert (state_dir / "models" / f"{info.artifact_id}.onnx").read_bytes() == data
    assert (device.active_model, device.active_version, device.online) == (model, "1.0.0", True)
    in_use = await env.bus.call(DeployerRpc.VERSIONS_IN_USE, VersionsInUseRequest(model=model))
    assert [(v.version, v.reason) for v in in_use.versions] == [("1.0.0", "active")]


async def test_twenty_devices_in_waves_all_active(env: Env, unique_id) -> None:
    group = unique_id("fleet-")
    runtimes = []
    for i in range(20):
        device_id = f"{group}-{i:02d}"
        await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group=group)
        runtimes.append(EdgeRuntime(env.tmp / device_id))
    info = await put(env.store, padded_model(600_000, seed=20))
    model = unique_id("m-")
    env.catalog.add(model, "2.0.0", info)
    async with devices(runtimes):
        created = await env.bus.call(
            DeployerRpc.CREATE_DEPLOYMENT,
            CreateDeployment(
                model=model,
                version="2.0.0",
                target=TargetSelector(group=group),
                strategy="waves",
                waves=("1", "10%", "50%", "100%"),
            ),
        )
        assert created.waves == (1, 2, 10, 20)
        done = await env.wait_completed(created.deployment_id, timeout=120)
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert done.counts == {TargetState.ACTIVE: 20}
    assert all(rt.active is not None and rt.active.version == "2.0.0" for rt in runtimes)
    # The big waves got the artifact once on the broadcast topic.
    assert env.app.chunks.broadcast_chunks > 0


async def test_wave_past_error_threshold_stops_the_rollout(env: Env, unique_id) -> None:
    group = unique_id("fleet-")
    runtimes = []
    for i in range(6):
        device_id = f"{group}-{i}"
        await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, group=group)
        runtimes.append(EdgeRuntime(env.tmp / device_id))
    info = await put(env.store, bias_model(0.5, nan=True))  # fails the health inference
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", info)
    async with devices(runtimes):
        created = await env.bus.call(DeployerRpc.CREATE_DEPLOYMENT, CreateDeployment(
                model=model, version="1.0.0", target=TargetSelector(group=group),
                strategy="waves", waves=("2", "100%"), error_threshold=0.4,
            ))  # fmt: skip
        done = await env.wait_completed(created.deployment_id)
    assert done.outcome is DeploymentOutcome.STOPPED
    states = {t.device_id: t.state for t in done.targets}
    first_wave = {t.device_id for t in done.targets if t.wave == 0}
    assert {states[d] for d in first_wave} == {TargetState.ROLLED_BACK}
    assert [s for d, s in states.items() if d not in first_wave] == [TargetState.CANCELLED] * 4
    # The stopped wave's devices never heard of it.
    for rt in runtimes:
        if rt.device_id not in first_wave:
            assert rt.snapshot().deployment is None


async def test_preflight_refuses_a_device_that_cannot_run_the_model(env: Env, unique_id) -> None:
    device_id = unique_id("dev-")
    old = capabilities().model_copy(update={"opsets": {"ai.onnx": 11}})
    await enroll_via_rpc(env.bus, env.tmp / device_id, device_id, capabilities=old)
    info = await put(env.store, bias_model(0.1))
    model = unique_id("m-")
    env.catalog.add(
        model, "1.0.0", info,
        requirements=DeviceRequirements(opsets={"ai.onnx": 17}, operators=("ai.onnx::Add",),
                                        ir_version=8),
    )  # fmt: skip
    env.catalog.add(model, "0.9.0", info, status="uploaded")
    request = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id)
    )
    with pytest.raises(Conflict, match="opset 17"):
        await env.bus.call(DeployerRpc.CREATE_DEPLOYMENT, request)
    with pytest.raises(Conflict, match="only validated or analyzed"):
        await env.bus.call(
            DeployerRpc.CREATE_DEPLOYMENT, request.model_copy(update={"version": "0.9.0"})
        )


async def test_enrolment_token_works_once(env: Env, unique_id) -> None:
    from edge_runtime import prepare

    device_id = unique_id("dev-")
    token = await env.bus.call(DeployerRpc.CREATE_ENROLLMENT_TOKEN, CreateEnrollmentToken())
    request = prepare(env.tmp / device_id, device_id=device_id, token=token.token)
    reply = await env.bus.call(DeployerRpc.ENROLL, request)
    assert reply.mqtt.username == device_id
    assert (env.tmp / device_id / "device.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(Forbidden, match="used already"):
        await env.bus.call(DeployerRpc.ENROLL, request)
