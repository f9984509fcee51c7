"""End to end through the REST API: a 64 MB model uploaded with the SDK, the validator
passes it, a device enrols over HTTP with ``edge-runtime``'s code, ``deploy_model`` puts
it there byte-identical, the API reports it active. Real NATS, Mosquitto (auth on),
registry, validator, API, deployer."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack

from edge_runtime import EdgeRuntime, enroll
from edgeaiforge import ModelManager
from edgeaiforge._model import Model, ModelMetadata
from schemas.events import DeploymentOutcome, TargetState
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import forget_device, padded_model, platform_on_broker


async def test_deploy_model_through_the_api(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
    )  # fmt: skip
    path = tmp_path / "model.onnx"
    path.write_bytes(padded_model(64 * 1024 * 1024, seed=7))
    name, device_id = unique_id("m-"), unique_id("dev-")
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        token = create_api_key(settings, role="admin")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                create_validator(settings, durable=unique_id("validator-"))
            )
            await stack.enter_async_context(create_deployer(settings))
            mm = ModelManager(url, token)
            stack.callback(mm.close)
            await asyncio.to_thread(
                mm.add_model, Model(name, path), ModelMetadata("Regression", "1.0.0")
            )
            enrolment = await asyncio.to_thread(mm.create_enrollment_token, device_id=device_id)
            state_dir = tmp_path / device_id
            await asyncio.to_thread(
                enroll, url, token=enrolment.token, device_id=device_id, state_dir=state_dir
            )
            runtime = EdgeRuntime(state_dir)
            task = asyncio.create_task(runtime.run())
            try:
                await asyncio.wait_for(runtime.wait_connected(), 20)
                done = await asyncio.to_thread(
                    mm.deploy_model, name, device_id, wait=True, timeout=90
                )
                device = await asyncio.to_thread(mm.get_device, device_id)
                listed = await asyncio.to_thread(mm.list_deployments, device_id=device_id)
            finally:
                runtime.stop()
                await asyncio.wait_for(task, 15)
                await forget_device(state_dir)
    assert done.outcome is DeploymentOutcome.SUCCEEDED
    assert [(t.device_id, t.state) for t in done.targets] == [(device_id, TargetState.ACTIVE)]
    assert (device.active_model, device.active_version) == (name, "1.0.0")
    assert [d.deployment_id for d in listed] == [done.deployment_id]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (state_dir / "models" / f"{digest}.onnx").read_bytes() == path.read_bytes()
