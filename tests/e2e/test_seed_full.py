"""The seed's whole usage example — add, deploy, stats — against the running platform.

Real NATS, Mosquitto (auth on), InfluxDB; registry, API, validator, deployer, ingester and
tracker as in production; one device enrolled over HTTP running the edge runtime with
metrics on. The seed's Rust example reads, in Python::

    model_manager = ModelManager()
    model = Model("my_model", "/path/to/model.onnx")
    metadata = ModelMetadata("Image Classification", "1.0.0")
    model_manager.add_model(model, metadata)
    model_manager.deploy_model("my_model", "edge_device_id")
    stats = model_manager.get_model_stats("my_model")
    print(f"Model performance: {stats}")
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest

from edge_runtime import EdgeRuntime, enroll
from edgeaiforge import Model, ModelManager, ModelMetadata
from schemas.events import DeploymentOutcome
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from services.ingester import create_service as create_ingester
from services.tracker import create_service as create_tracker
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import bias_model, forget_device, platform_on_broker


async def test_seed_usage_add_deploy_stats(
    nats_server: Any,
    mosquitto_server: Any,
    influxdb_server: Any,
    mqtt_user: Any,
    tmp_path: Any,
    unique_id: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
        influxdb={"url": influxdb_server.url, "database": unique_id("seed"),
                  "flush_interval": 0.2},
        ingester={"spool_path": tmp_path / "ingester.db", "metrics_port": 0,
                  "client_id": unique_id("ingester-")},
    )  # fmt: skip
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(bias_model(0.25))
    my_model, edge_device_id = unique_id("my_model_"), unique_id("edge_device_")
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        admin = create_api_key(settings, role="admin")
        monkeypatch.setenv("EAF_API_URL", url)
        monkeypatch.setenv("EAF_API_TOKEN", create_api_key(settings, role="deployer"))
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                create_validator(settings, durable=unique_id("validator-"))
            )
            await stack.enter_async_context(create_deployer(settings))
            await stack.enter_async_context(create_ingester(settings))
            await stack.enter_async_context(create_tracker(settings))

            # The device: enrolled over HTTP with a one-time token, metrics every 0.5 s.
            with ModelManager(url, admin) as ops:
                token = await asyncio.to_thread(
                    ops.create_enrollment_token, device_id=edge_device_id
                )
            state_dir = tmp_path / edge_device_id
            await asyncio.to_thread(
                enroll, url, token=token.token, device_id=edge_device_id, state_dir=state_dir
            )
            runtime = EdgeRuntime(state_dir, metrics_interval=0.5)
            device = asyncio.create_task(runtime.run())
            stack.push_async_callback(forget_device, state_dir)
            try:
                await asyncio.wait_for(runtime.wait_connected(), 20)

                def seed_example() -> Any:
                    # --- the seed's example, in Python --------------------------------
                    model_manager = ModelManager()
                    model = Model(my_model, str(onnx_file))
                    metadata = ModelMetadata("Image Classification", "1.0.0")
                    model_manager.add_model(model, metadata)
                    # Only validated versions deploy: wait for the validator's verdict.
                    deadline = time.monotonic() + 120
                    while model_manager.get_version(my_model, "1.0.0").status.value not in (
                        "validated",
                        "analyzed",
                    ):
                        assert time.monotonic() < deadline, "validation did not finish"
                        time.sleep(0.2)
                    deployment = model_manager.deploy_model(
                        my_model, edge_device_id, wait=True, timeout=90
                    )
                    return model_manager, deployment
                    # ------------------------------------------------------------------

                model_manager, deployment = await asyncio.to_thread(seed_example)
                assert deployment.outcome is DeploymentOutcome.SUCCEEDED
                assert runtime.active is not None and runtime.active.model == my_model

                # Local applications use the device; each inference is measured.
                for _ in range(200):
                    await runtime.infer()

                def stats_arrive() -> Any:
                    deadline = time.monotonic() + 60
                    while True:
                        stats = model_manager.get_model_stats(my_model)
                        if stats.versions and stats.versions[0].count >= 200:
                            return stats
                        assert time.monotonic() < deadline, f"stats incomplete: {stats}"
                        time.sleep(0.5)

                stats = await asyncio.to_thread(stats_arrive)
                print(f"Model performance: {stats}")
                model_manager.close()
            finally:
                runtime.stop()
                await asyncio.wait_for(device, 15)

    [version] = stats.versions
    assert version.version == "1.0.0"
    assert version.count == 200
    assert version.errors == 0
    assert [d.device_id for d in version.devices] == [edge_device_id]
    assert 0 < version.latency_p50_ms <= version.latency_p95_ms <= version.latency_p99_ms
    assert "Model performance:" in capsys.readouterr().out
