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

It runs as written: ``add_model`` returns once the validator has passed the version, so
``deploy_model`` right after it finds a deployable version. (The names are unique per
test, bound to the seed's names, so runs on the shared servers do not meet.)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_runtime import EdgeRuntime, enroll
from edgeaiforge import Model, ModelManager, ModelMetadata
from schemas.events import DeploymentOutcome
from schemas.stats import ModelStats
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from services.ingester import create_service as create_ingester
from services.tracker import create_service as create_tracker
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import bias_model, forget_device, platform_on_broker
from tests.support.models import large_model, to_bytes


@dataclass
class SeedPlatform:
    url: str
    runtime: EdgeRuntime
    my_model: str
    edge_device_id: str


@asynccontextmanager
async def seed_platform(
    tmp_path: Path,
    unique_id: Any,
    nats_server: Any,
    mosquitto_server: Any,
    influxdb_server: Any,
    mqtt_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[SeedPlatform]:
    """Every service, and one enrolled device running; EAF_API_URL and EAF_API_TOKEN set
    (a deployer's key), as a user of the seed's example has them."""
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
        influxdb={"url": influxdb_server.url, "database": unique_id("seed"),
                  "flush_interval": 0.2},
        ingester={"spool_path": tmp_path / "ingester.db", "metrics_port": 0,
                  "client_id": unique_id("ingester-"),
                  # Its own share group: a stopped ingester's session of another test
                  # would otherwise take its turn at these metrics.
                  "shared_group": unique_id("ingester-group-")},
    )  # fmt: skip
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
                yield SeedPlatform(url, runtime, my_model, edge_device_id)
            finally:
                runtime.stop()
                await asyncio.wait_for(device, 15)


async def test_seed_example_verbatim_with_a_64_mib_model(
    nats_server: Any,
    mosquitto_server: Any,
    influxdb_server: Any,
    mqtt_user: Any,
    tmp_path: Any,
    unique_id: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = to_bytes(large_model(64))
    assert len(data) >= 64 * 2**20
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    async with seed_platform(
        tmp_path, unique_id, nats_server, mosquitto_server, influxdb_server, mqtt_user,
        monkeypatch,
    ) as p:  # fmt: skip
        my_model, edge_device_id = p.my_model, p.edge_device_id

        def seed_example() -> ModelStats:
            # --- the seed's example, as it is written, in Python ----------------------
            # Initialize the Model Manager
            model_manager = ModelManager()

            # Create a new model
            model = Model(my_model, path)
            metadata = ModelMetadata("Image Classification", "1.0.0")

            # Add the model to the repository
            model_manager.add_model(model, metadata)

            # Deploy the model to an edge device
            model_manager.deploy_model(my_model, edge_device_id)

            # Get model performance statistics
            stats = model_manager.get_model_stats(my_model)
            print(f"Model performance: {stats}")
            # ---------------------------------------------------------------------------
            return stats

        started = time.monotonic()
        stats = await asyncio.to_thread(seed_example)
        seconds = time.monotonic() - started
        assert stats.model == my_model  # the stats call answers (no inference yet)
        assert "Model performance:" in capsys.readouterr().out
        with capsys.disabled():
            print(f"\nseed example with a {len(data) / 2**20:.0f} MiB model: {seconds:.1f} s")

        # What the deploy started reaches the device: the uploaded bytes, running.
        with ModelManager() as mm:
            [started_deployment] = await asyncio.to_thread(mm.list_deployments, model=my_model)
            assert started_deployment.version == "1.0.0"
            done = await asyncio.to_thread(
                mm.wait_for_deployment, started_deployment.deployment_id, timeout=180
            )
        assert done.outcome is DeploymentOutcome.SUCCEEDED
        active = p.runtime.active
        assert active is not None and (active.model, active.version) == (my_model, "1.0.0")
        assert active.artifact_id == hashlib.sha256(data).hexdigest()


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
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(bias_model(0.25))
    async with seed_platform(
        tmp_path, unique_id, nats_server, mosquitto_server, influxdb_server, mqtt_user,
        monkeypatch,
    ) as p:  # fmt: skip
        my_model, edge_device_id, runtime = p.my_model, p.edge_device_id, p.runtime

        def seed_example() -> Any:
            # --- the seed's example, in Python, waiting for the device ----------------
            model_manager = ModelManager()
            model = Model(my_model, str(onnx_file))
            metadata = ModelMetadata("Image Classification", "1.0.0")
            model_manager.add_model(model, metadata)
            deployment = model_manager.deploy_model(my_model, edge_device_id, wait=True, timeout=90)
            return model_manager, deployment
            # ---------------------------------------------------------------------------

        model_manager, deployment = await asyncio.to_thread(seed_example)
        assert deployment.outcome is DeploymentOutcome.SUCCEEDED
        assert runtime.active is not None and runtime.active.model == my_model

        # Local applications use the device; each inference is measured.
        for _ in range(200):
            await runtime.infer()

        def stats_arrive() -> Any:
            # Metrics reach InfluxDB in the ingester's batches: wait for all 200.
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

    [version] = stats.versions
    assert version.version == "1.0.0"
    assert version.count == 200
    assert version.errors == 0
    assert [d.device_id for d in version.devices] == [edge_device_id]
    assert 0 < version.latency_p50_ms <= version.latency_p95_ms <= version.latency_p99_ms
    assert "Model performance:" in capsys.readouterr().out
