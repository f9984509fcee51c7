"""An upload answers with the validator's verdict: the SDK's ``add_model``, the CLI's
``model add`` and REST's ``?wait=`` return once the real validator has passed the version,
say why it was rejected, or say at the deadline that it is still validating."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgeaiforge import (
    Model,
    ModelManager,
    ModelMetadata,
    ModelRejectedError,
    ValidationTimeoutError,
)
from edgeaiforge.cli import app
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.models import tiny_model, to_bytes
from tests.support.settings import platform_settings


async def test_upload_returns_the_validators_verdict(
    tmp_path: Path, nats_server: Any, unique_id: Any
) -> None:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    good = tmp_path / "good.onnx"
    good.write_bytes(to_bytes(tiny_model()))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(os.urandom(4000))
    name = unique_id("verdict-")
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        token = create_api_key(settings, role="deployer")
        async with create_validator(settings, durable=unique_id("validator-")):

            def sdk() -> tuple[Any, ModelRejectedError]:
                with ModelManager(url, token) as mm:
                    passed = mm.add_model(Model(name, good), ModelMetadata("t", "1.0.0"))
                    with pytest.raises(ModelRejectedError) as rejected:
                        mm.add_model(Model(name, bad), ModelMetadata("t", "1.0.1"))
                    assert mm.get_version(name, "1.0.1").status == "rejected"
                    return passed, rejected.value

            passed, rejected = await asyncio.to_thread(sdk)
            # Returned validated: deployable right away, no polling by the caller.
            assert passed.status == "validated"
            # The error carries the validator's failed check and says what to do.
            assert rejected.reasons and all(":" in r for r in rejected.reasons)
            assert "upload it under a new version number" in str(rejected)

            def rest() -> httpx.Response:
                return httpx.put(
                    f"{url}/api/v1/models/{name}/versions/1.1.0",
                    params={"task": "t", "wait": 60},
                    content=good.read_bytes(),
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=90,
                )

            r = await asyncio.to_thread(rest)
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "validated"
            assert r.headers["location"] == f"/api/v1/models/{name}/versions/1.1.0"

            env = {"EAF_API_URL": url, "EAF_API_TOKEN": token}

            def cli(*args: str) -> Any:
                return CliRunner().invoke(app, list(args), env=env)

            ok = await asyncio.to_thread(cli, "model", "add", name, "1.2.0", str(good))
            assert ok.exit_code == 0, ok.output
            assert "validated" in ok.output
            refused = await asyncio.to_thread(cli, "model", "add", name, "1.2.1", str(bad))
            assert refused.exit_code == 1
            assert "rejected by validation" in refused.output


def test_no_verdict_in_time_says_it_is_still_validating(
    tmp_path: Path, nats_server: Any, unique_id: Any
) -> None:
    # No validator runs: the verdict never comes.
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    src = tmp_path / "m.onnx"
    src.write_bytes(to_bytes(tiny_model()))
    name = unique_id("late-")
    with serve_in_thread(settings) as url:
        token = create_api_key(settings, role="deployer")
        with ModelManager(url, token) as mm:
            started = time.monotonic()
            with pytest.raises(ValidationTimeoutError) as late:
                mm.add_model(Model(name, src), ModelMetadata("t", "1.0.0"), timeout=1.5)
            took = time.monotonic() - started
            assert 1.5 <= took < 10, took
            message = str(late.value)
            assert "is stored" in message and "validating" in message
            assert f"edgeaiforge model show {name} 1.0.0" in message
            assert mm.get_version(name, "1.0.0").status == "validating"

            r = httpx.put(
                f"{url}/api/v1/models/{name}/versions/1.0.1",
                params={"wait": 1},
                content=src.read_bytes(),
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "validating"
            assert r.headers["location"].endswith(f"/models/{name}/versions/1.0.1")
