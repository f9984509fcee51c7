"""A deployment without a version takes the newest deployable one: the newest version by
upload sequence that is validated or analyzed. A rejected newest version, or one still
validating, is never taken, by the SDK, the CLI or REST; with nothing deployable the
answer says why.

Registry, API and deployer run on real NATS and Mosquitto; the validator's verdicts are
published on the bus as the validator publishes them, so each version's state is chosen.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgeaiforge import ConflictError, Model, ModelManager, ModelMetadata
from edgeaiforge.cli import app
from schemas.config import Settings
from schemas.events import ModelRejected, ModelValidated
from schemas.registry import VersionInfo
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.bus import Bus
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import enroll_via_rpc, forget_device, platform_on_broker

REASON = "load: the file is not an ONNX model"


async def _verdict(bus: Bus, info: VersionInfo, *, passed: bool) -> None:
    outcome = CheckOutcome.PASSED if passed else CheckOutcome.FAILED
    report = ValidationReport(checks=(CheckResult(name="load", outcome=outcome),))
    common: dict[str, Any] = {
        "model": info.model,
        "version": info.version,
        "artifact_id": info.artifact_id,
        "report": report,
    }
    event = ModelValidated(**common) if passed else ModelRejected(**common, reason=REASON)
    await bus.publish(event)


async def _until_status(mm: ModelManager, name: str, version: str, status: str) -> None:
    for _ in range(300):
        if (await asyncio.to_thread(mm.get_version, name, version)).status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} {version} never became {status}")


async def test_deploy_without_a_version_never_takes_a_rejected_or_validating_one(
    nats_server: Any, mosquitto_server: Any, mqtt_user: Any, tmp_path: Path, unique_id: Any
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings: Settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user
    )
    name, device = unique_id("pick-"), unique_id("dev-")
    src = tmp_path / "m.onnx"
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        token = create_api_key(settings, role="deployer")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(create_deployer(settings))
            bus = await stack.enter_async_context(Bus(settings.nats, service="pick-test"))
            state_dir = tmp_path / device
            await enroll_via_rpc(bus, state_dir, device)
            stack.push_async_callback(forget_device, state_dir)
            mm = stack.enter_context(ModelManager(url, token))

            async def upload(version: str) -> VersionInfo:
                src.write_bytes(os.urandom(2000))
                model, meta = Model(name, src), ModelMetadata("t", version)
                return await asyncio.to_thread(mm.add_model, model, meta, wait=False)

            # 1.0.0 validated, 1.0.1 rejected, 1.0.2 still validating (newest).
            await _verdict(bus, await upload("1.0.0"), passed=True)
            await _verdict(bus, await upload("1.0.1"), passed=False)
            await upload("1.0.2")
            await _until_status(mm, name, "1.0.0", "validated")
            await _until_status(mm, name, "1.0.1", "rejected")

            info = await asyncio.to_thread(mm.get_model, name)
            assert (info.latest_version, info.deployable_version) == ("1.0.2", "1.0.0")

            by_sdk = await asyncio.to_thread(mm.deploy_model, name, device)
            assert by_sdk.version == "1.0.0"

            def by_rest() -> httpx.Response:
                return httpx.post(
                    f"{url}/api/v1/deployments",
                    json={"model": name, "target": {"device_id": device}},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )

            r = await asyncio.to_thread(by_rest)
            assert r.status_code == 201, r.text
            assert r.json()["version"] == "1.0.0"

            env = {"EAF_API_URL": url, "EAF_API_TOKEN": token}
            cli = await asyncio.to_thread(
                CliRunner().invoke, app, ["deploy", name, device, "--no-wait", "--json"], env=env
            )
            assert cli.exit_code == 0, cli.output
            assert '"version": "1.0.0"' in cli.output

            # Nothing deployable: the answer says why instead of taking a bad version.
            only_rejected, only_validating = unique_id("rej-"), unique_id("val-")
            src.write_bytes(os.urandom(2000))
            rejected = await asyncio.to_thread(
                mm.add_model, Model(only_rejected, src), ModelMetadata("t", "1.0.0"), wait=False
            )
            await _verdict(bus, rejected, passed=False)
            await _until_status(mm, only_rejected, "1.0.0", "rejected")
            await asyncio.to_thread(
                mm.add_model, Model(only_validating, src), ModelMetadata("t", "1.0.0"), wait=False
            )
            with pytest.raises(ConflictError, match="no deployable version") as refused:
                await asyncio.to_thread(mm.deploy_model, only_rejected, device)
            assert "rejected" in str(refused.value) and REASON in str(refused.value)
            with pytest.raises(ConflictError, match="still validating") as waiting:
                await asyncio.to_thread(mm.deploy_model, only_validating, device)
            assert f"edgeaiforge model show {only_validating} 1.0.0" in str(waiting.value)
