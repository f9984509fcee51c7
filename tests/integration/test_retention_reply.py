"""Retention says what it does: an upload past ``max_versions_per_model`` names the
versions it pushed out (SDK reply, CLI line), and ``eaf.model.version.deleted`` says why
each went — ``retention`` with what triggered it, or ``user`` with who."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from typer.testing import CliRunner

from edgeaiforge import Model, ModelManager, ModelMetadata
from edgeaiforge.cli import app
from schemas.events import ModelVersionDeleted
from services.common.bus import Bus
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings


async def test_an_upload_past_retention_names_what_it_pruned(
    tmp_path: Path, nats_server: Any, unique_id: Any
) -> None:
    settings = platform_settings(
        tmp_path, nats_url=nats_server.url, model_repository={"max_versions_per_model": 2}
    )
    name = unique_id("keep2-")
    src = tmp_path / "m.onnx"
    deleted: list[ModelVersionDeleted] = []

    async def record(msg: Msg) -> None:
        event = ModelVersionDeleted.model_validate_json(msg.data)
        if event.model == name:
            deleted.append(event)

    with serve_in_thread(settings) as url:
        admin = create_api_key(settings, role="admin", name="ops")
        async with Bus(settings.nats, service="retention-test") as bus:
            sub = await bus.broker.connection.subscribe(ModelVersionDeleted.SUBJECT, cb=record)

            def sdk(version: str) -> Any:
                src.write_bytes(os.urandom(2000))
                with ModelManager(url, admin) as mm:
                    return mm.add_model(Model(name, src), ModelMetadata("t", version), wait=False)

            assert (await asyncio.to_thread(sdk, "1.0.0")).pruned == ()
            assert (await asyncio.to_thread(sdk, "1.1.0")).pruned == ()
            third = await asyncio.to_thread(sdk, "1.2.0")
            assert third.pruned == ("1.0.0",) and third.retention_skipped == ""

            src.write_bytes(os.urandom(2000))
            cli = await asyncio.to_thread(
                CliRunner().invoke,
                app,
                ["model", "add", name, "1.3.0", str(src), "--no-wait"],
                env={"EAF_API_URL": url, "EAF_API_TOKEN": admin},
            )
            assert cli.exit_code == 0, cli.output
            assert "deleted 1 older version: 1.1.0" in cli.output

            def delete() -> None:
                with ModelManager(url, admin) as mm:
                    mm.delete_version(name, "1.2.0")

            await asyncio.to_thread(delete)
            for _ in range(200):
                if len(deleted) == 3:
                    break
                await asyncio.sleep(0.05)
            await sub.unsubscribe()

    by_version = {e.version: e for e in deleted}
    assert sorted(by_version) == ["1.0.0", "1.1.0", "1.2.0"]
    for version, trigger in (("1.0.0", "upload of 1.2.0"), ("1.1.0", "upload of 1.3.0")):
        event = by_version[version]
        assert event.reason == "retention" and event.deleted_by == ""
        assert event.detail.startswith(trigger) and "max_versions_per_model is 2" in event.detail
    user = by_version["1.2.0"]
    assert (user.reason, user.deleted_by) == ("user", "ops")
