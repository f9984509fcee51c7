"""An alias cannot name a rejected version, whichever way it is asked for: REST, the SDK
and the CLI all get the registry's 409 with the version's state and the validator's reason
(the rejection arrives as the validator sends it, ``eaf.model.rejected`` on real NATS)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgeaiforge import ConflictError, Model, ModelManager, ModelMetadata
from edgeaiforge.cli import app
from schemas.config import Settings
from schemas.events import ModelRejected
from schemas.registry import VersionInfo
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.bus import Bus
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings

REASON = "opset: the model needs opset 99; the newest supported is 21"


def _reject(settings: Settings, info: VersionInfo) -> None:
    """Publish the validator's verdict on the bus, as the validator does."""
    report = ValidationReport(
        checks=(CheckResult(name="opset", outcome=CheckOutcome.FAILED, message="99"),)
    )
    event = ModelRejected(
        model=info.model,
        version=info.version,
        artifact_id=info.artifact_id,
        report=report,
        reason=REASON,
    )

    async def publish() -> None:
        async with Bus(settings.nats, service="alias-test") as bus:
            await bus.publish(event)

    asyncio.run(publish())


def test_rest_sdk_and_cli_refuse_an_alias_on_a_rejected_version(
    tmp_path: Path, nats_server: Any, unique_id: Any
) -> None:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    name = unique_id("alias-")
    src = tmp_path / "m.onnx"
    with serve_in_thread(settings) as url:
        token = create_api_key(settings, role="deployer")
        with ModelManager(url, token) as mm:
            src.write_bytes(os.urandom(2000))
            good = mm.add_model(Model(name, src), ModelMetadata("t", "1.0.0"), wait=False)
            src.write_bytes(os.urandom(2000))
            bad = mm.add_model(Model(name, src), ModelMetadata("t", "1.0.1"), wait=False)
            mm.set_alias(name, "production", good.version)
            _reject(settings, bad)
            deadline = time.monotonic() + 15
            while mm.get_version(name, bad.version).status != "rejected":
                assert time.monotonic() < deadline, "the rejection never arrived"
                time.sleep(0.05)

            with pytest.raises(ConflictError, match="rejected") as refused:
                mm.set_alias(name, "production", bad.version)
            assert REASON in str(refused.value)

            r = httpx.put(
                f"{url}/api/v1/models/{name}/aliases/production",
                json={"version": bad.version},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert r.status_code == 409
            assert r.json()["code"] == "conflict" and REASON in r.json()["detail"]

            cli = CliRunner().invoke(
                app,
                ["model", "alias", name, "production", bad.version],
                env={"EAF_API_URL": url, "EAF_API_TOKEN": token},
            )
            assert cli.exit_code == 1 and "rejected" in cli.output
            # Nothing moved: production still names the good version.
            assert mm.get_model(name).aliases == {"production": good.version}
