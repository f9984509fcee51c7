"""The deployer's rollout controls on real NATS and Mosquitto with real edge runtimes:
pause and resume, cancel, manual and automatic rollback, device timeouts, the deployer on
PostgreSQL, and the device's local HTTP inference endpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from edge_runtime import EdgeRuntime
from edge_runtime.local_api import create_http_app
from schemas.deployer import (
    CreateDeployment,
    CreateEnrollmentToken,
    DeployerRpc,
    DeploymentInfo,
    DeploymentRef,
    DeploymentStatus,
    DeviceRef,
    KeyedDeploymentInfo,
    ListDeployments,
    TargetSelector,
)
from schemas.events import DeploymentOutcome, TargetState
from schemas.rpc import Rpc
from services.common.errors import Conflict
from services.deployer.manifests import ChunkGrants
from tests.support.deploy import bias_model, put
from tests.support.deployer_env import Env, EnvFactory, devices, fleet


async def deploy(
    env: Env, model: str, version: str, target: TargetSelector, **kw: Any
) -> KeyedDeploymentInfo:
    return await env.bus.call(
        DeployerRpc.CREATE_DEPLOYMENT,
        CreateDeployment(model=model, version=version, target=target, **kw),
    )


async def control(env: Env, action: str, deployment_id: str) -> DeploymentInfo:
    rpc: Rpc[DeploymentRef, DeploymentInfo] = getattr(DeployerRpc, action.upper())
    return await env.bus.call(rpc, DeploymentRef(deployment_id=deployment_id))


async def wait_target(
    env: Env, deployment_id: str, device_id: str, states: set[TargetState], timeout: float = 30
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            info = await env.deployment(deployment_id)
            if {t.device_id: t.state for t in info.targets}[device_id] in states:
                return
            await asyncio.sleep(0.1)


async def test_paused_rollout_notifies_no_later_wave_until_resumed(
    make_env: EnvFactory, unique_id
) -> None:
    env = await make_env()
    group = unique_id("pause-")
    runtimes = await fleet(env, group, 3)
    first, later = runtimes[0], runtimes[1:]
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.3)))
    # The first wave's device is offline: its target stays notified (in flight), so the
    # pause lands before the wave can finish and open the next one.
    created = await deploy(
        env, model, "1.0.0", TargetSelector(group=group), strategy="waves", waves=("1", "100%")
    )
    await wait_target(env, created.deployment_id, first.device_id, {TargetState.NOTIFIED})
    paused = await control(env, "pause", created.deployment_id)
    assert paused.status is DeploymentStatus.PAUSED
    async with devices(runtimes):
        # In-flight targets finish while paused.
        await wait_target(env, created.deployment_id, first.device_id, {TargetState.ACTIVE})
        # The first wave is complete; a running supervisor would open the next wave within
        # one tick (0.2 s). Several ticks later the later devices have heard nothing.
        await asyncio.sleep(2.0)
        info = await env.deployment(created.deployment_id)
        assert info.status is DeploymentStatus.PAUSED
        assert info.current_wave == 0
        assert [t.state for t in info.targets if t.wave == 1] == [TargetState.PENDING] * 2
        assert all(rt.snapshot().deployment is None for rt in later)
        assert all(rt.active is None for rt in later)
        resumed = await control(env, "resume", created.deployment_id)
        assert resumed.status is DeploymentStatus.RUNNING
        done = await env.wait_completed(created.deployment_id)
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert done.counts == {TargetState.ACTIVE: 3}
    assert all(rt.active is not None and rt.active.version == "1.0.0" for rt in runtimes)


async def test_cancel_ends_unfinished_targets_cancelled(make_env: EnvFactory, unique_id) -> None:
    env = await make_env()
    group = unique_id("cancel-")
    online, offline = await fleet(env, group, 2)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.4)))
    async with devices([online]):
        created = await deploy(env, model, "1.0.0", TargetSelector(group=group))
        await wait_target(env, created.deployment_id, online.device_id, {TargetState.ACTIVE})
        artifact = created.artifact_id
        # The offline device was sent its manifest: it may fetch the chunks, until ...
        assert await env.app.chunks.authorize(offline.device_id, artifact)
        cancelled = await control(env, "cancel", created.deployment_id)
    # ... its target ends with the deployment (a remembered grant lasts GRANT_TTL at most).
    await asyncio.sleep(ChunkGrants.GRANT_TTL + 0.1)
    assert not await env.app.chunks.authorize(offline.device_id, artifact)
    assert not await env.app.chunks.authorize(online.device_id, artifact)
    assert cancelled.status is DeploymentStatus.COMPLETED
    assert cancelled.outcome is DeploymentOutcome.CANCELLED
    states = {t.device_id: t.state for t in cancelled.targets}
    # Done stays done; the offline device's notified target is cancelled.
    assert states == {
        online.device_id: TargetState.ACTIVE,
        offline.device_id: TargetState.CANCELLED,
    }
    # A finished deployment cannot be cancelled again, nor its targets revived by the ticks.
    with pytest.raises(Conflict, match="is completed: cannot cancel"):
        await control(env, "cancel", created.deployment_id)
    await asyncio.sleep(0.5)
    again = await env.deployment(created.deployment_id)
    assert {t.device_id: t.state for t in again.targets} == states


async def test_manual_rollback_returns_devices_to_the_previous_version(
    make_env: EnvFactory, unique_id
) -> None:
    env = await make_env()
    group = unique_id("rb-")
    runtimes = await fleet(env, group, 2)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.1)))
    env.catalog.add(model, "2.0.0", await put(env.store, bias_model(0.2)))
    async with devices(runtimes):
        v1 = await deploy(env, model, "1.0.0", TargetSelector(group=group))
        assert (await env.wait_completed(v1.deployment_id)).outcome is DeploymentOutcome.SUCCEEDED
        v2 = await deploy(env, model, "2.0.0", TargetSelector(group=group))
        assert (await env.wait_completed(v2.deployment_id)).outcome is DeploymentOutcome.SUCCEEDED
        assert all(rt.active is not None and rt.active.version == "2.0.0" for rt in runtimes)

        rollback = await control(env, "rollback", v2.deployment_id)
        assert (rollback.kind, rollback.rollback_of) == ("rollback", v2.deployment_id)
        assert rollback.version == "1.0.0"
        done = await env.wait_completed(rollback.deployment_id)
        device = await env.bus.call(
            DeployerRpc.GET_DEVICE, DeviceRef(device_id=runtimes[0].device_id)
        )
        # The device answers with version 1's bias again.
        y = await runtimes[0].infer({"x": np.zeros((1, 4), dtype=np.float32)})
    assert done.counts == {TargetState.ACTIVE: 2}
    assert all(rt.active is not None and rt.active.version == "1.0.0" for rt in runtimes)
    assert y["y"].tolist() == [[pytest.approx(0.1)] * 4]
    assert (device.active_version, device.previous_version) == ("1.0.0", "2.0.0")
    original = await env.deployment(v2.deployment_id)
    assert [t.state for t in original.targets] == [TargetState.ROLLED_BACK] * 2


async def test_wave_past_threshold_with_auto_rollback_restores_previous_model(
    make_env: EnvFactory, unique_id
) -> None:
    env = await make_env(max_retries=1)
    group = unique_id("auto-")
    good, offline, later = await fleet(env, group, 3)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.1)))
    env.catalog.add(model, "2.0.0", await put(env.store, bias_model(0.2)))
    async with devices([good]):
        v1 = await deploy(env, model, "1.0.0", TargetSelector(device_id=good.device_id))
        assert (await env.wait_completed(v1.deployment_id)).outcome is DeploymentOutcome.SUCCEEDED
        # Wave 1 = the good device and the offline one; the offline one times out
        # (1 s, then 2 s after one retry): 1 of 2 failed passes the 0.4 threshold.
        v2 = await deploy(
            env, model, "2.0.0", TargetSelector(group=group), strategy="waves",
            waves=("2", "100%"), error_threshold=0.4, auto_rollback=True, device_timeout=1.0,
        )  # fmt: skip
        stopped = await env.wait_completed(v2.deployment_id)
        assert stopped.outcome is DeploymentOutcome.STOPPED
        rollbacks = await env.bus.call(
            DeployerRpc.LIST_DEPLOYMENTS, ListDeployments(device_id=good.device_id)
        )
        rollback = [d for d in rollbacks.deployments if d.rollback_of == v2.deployment_id]
        assert len(rollback) == 1 and rollback[0].kind == "rollback"
        done = await env.wait_completed(rollback[0].deployment_id)
    assert [(t.device_id, t.state) for t in done.targets] == [(good.device_id, TargetState.ACTIVE)]
    assert good.active is not None and good.active.version == "1.0.0"
    final = await env.deployment(v2.deployment_id)
    assert {t.device_id: t.state for t in final.targets} == {
        good.device_id: TargetState.ROLLED_BACK,
        offline.device_id: TargetState.TIMED_OUT,
        later.device_id: TargetState.CANCELLED,
    }
    assert "error threshold" in final.reason


async def test_offline_device_is_retried_then_timed_out(make_env: EnvFactory, unique_id) -> None:
    env = await make_env(device_timeout=0.5, max_retries=2)
    (device,) = await fleet(env, unique_id("offline-"), 1)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.6)))
    created = await deploy(env, model, "1.0.0", TargetSelector(device_id=device.device_id))
    # 0.5 s, then 1 s and 2 s after the two re-notifications: about 3.5 s in all.
    done = await env.wait_completed(created.deployment_id, timeout=30)
    (target,) = done.targets
    assert target.state is TargetState.TIMED_OUT
    assert target.attempts == 2
    assert "no progress" in target.detail
    # One wave whose only target failed passes the default error threshold (0): stopped.
    assert done.outcome is DeploymentOutcome.STOPPED
    assert "error threshold" in done.reason


async def test_deployer_on_postgresql_deploys_to_a_device(
    postgres_url: str, make_env: EnvFactory, unique_id
) -> None:
    # postgres_url first: its database is dropped only after the deployer has stopped.
    url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    env = await make_env(database_url=url)
    assert env.settings.database.url.startswith("postgresql+asyncpg://")
    (device,) = await fleet(env, unique_id("pg-"), 1)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.7)))
    async with devices([device]):
        created = await deploy(env, model, "1.0.0", TargetSelector(device_id=device.device_id))
        done = await env.wait_completed(created.deployment_id)
        info = await env.bus.call(DeployerRpc.GET_DEVICE, DeviceRef(device_id=device.device_id))
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert [t.state for t in done.targets] == [TargetState.ACTIVE]
    assert device.active is not None and device.active.version == "1.0.0"
    assert (info.active_model, info.active_version) == (model, "1.0.0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def http_endpoint(runtime: EdgeRuntime) -> AsyncIterator[str]:
    """The runtime's local endpoint served by uvicorn on loopback, as ``edge-runtime run``."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_http_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_local_http_endpoint_answers_with_the_active_model(
    make_env: EnvFactory, unique_id
) -> None:
    env = await make_env()
    (device,) = await fleet(env, unique_id("http-"), 1)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.5)))
    async with devices([device]), http_endpoint(device) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            before = await http.post("/v1/infer", json={"inputs": {"x": [[1, 2, 3, 4]]}})
            assert before.status_code == 503
            assert before.headers["content-type"].startswith("application/problem+json")

            created = await deploy(env, model, "1.0.0", TargetSelector(device_id=device.device_id))
            await env.wait_completed(created.deployment_id)

            answer = await http.post("/v1/infer", json={"inputs": {"x": [[1.0, -2.0, 0.0, 3.0]]}})
            assert answer.status_code == 200
            body = answer.json()
            assert (body["model"], body["version"]) == (model, "1.0.0")
            assert body["outputs"]["y"] == [[1.5, 0.0, 0.5, 3.5]]  # relu(x + 0.5)

            sample = await http.post("/v1/infer")
            assert sample.status_code == 200 and set(sample.json()["outputs"]) == {"y"}

            bad = await http.post("/v1/infer", json={"inputs": {"z": [[1, 2, 3, 4]]}})
            assert bad.status_code == 422 and "unknown inputs ['z']" in bad.json()["detail"]

            status = await http.get("/v1/status")
            assert status.status_code == 200
            state = status.json()
            assert state["device_id"] == device.device_id
            assert (state["active"]["model"], state["active"]["version"]) == (model, "1.0.0")


async def test_enrolment_tokens_can_be_given_on_the_command_line(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    tokens = [
        (await env.bus.call(DeployerRpc.CREATE_ENROLLMENT_TOKEN, CreateEnrollmentToken())).token
        for _ in range(300)
    ]
    # `edge-runtime enroll --token X` would read a token starting with "-" as an option
    # (before the fix, about 1 token in 64).
    assert [t for t in tokens if t.startswith("-")] == []
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    assert all(parser.parse_args(["--token", t]).token == t for t in tokens[:50])
