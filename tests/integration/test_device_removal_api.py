"""Removing a device through REST, the SDK and the ``edgeaiforge device remove`` command,
against the API, the registry and the deployer on real NATS and Mosquitto."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edge_runtime import enroll
from edgeaiforge import ModelManager
from edgeaiforge._errors import NotFoundError, PermissionDeniedError
from edgeaiforge.cli import app
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import platform_on_broker


async def test_remove_through_rest_sdk_and_cli(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
    )  # fmt: skip
    group = unique_id("g-")
    first, second = f"{group}-a", f"{group}-b"
    runner = CliRunner()
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        admin = create_api_key(settings, role="admin")
        deployer_key = create_api_key(settings, role="deployer")
        env = {"EAF_API_URL": url, "EAF_API_TOKEN": admin}

        def cli(*args: str, input: str | None = None) -> Any:
            return runner.invoke(app, list(args), env=env, input=input)

        async with AsyncExitStack() as stack:
            await stack.enter_async_context(create_deployer(settings))
            mm = ModelManager(url, admin)
            stack.callback(mm.close)
            for device_id in (first, second):
                token = await asyncio.to_thread(
                    mm.create_enrollment_token, device_id=device_id, group=group
                )
                await asyncio.to_thread(
                    enroll, url, token=token.token, device_id=device_id,
                    state_dir=tmp_path / device_id,
                )  # fmt: skip

            # Only an admin removes a device, as only an admin lets one in.
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.delete(
                    f"/api/v1/devices/{first}",
                    headers={"Authorization": f"Bearer {deployer_key}"},
                )
                assert r.status_code == 403, r.text
                r = await http.delete(
                    f"/api/v1/devices/{unique_id('nobody-')}",
                    headers={"Authorization": f"Bearer {admin}"},
                )
                assert r.status_code == 404, r.text
                assert "not enrolled" in r.json()["detail"]

            # The command asks first; "no" changes nothing.
            declined = await asyncio.to_thread(cli, "device", "remove", first, input="n\n")
            assert declined.exit_code == 1
            listed = await asyncio.to_thread(mm.list_devices, group=group)
            assert {d.device_id for d in listed} == {first, second}

            done = await asyncio.to_thread(
                cli, "device", "remove", first, "--yes", "--reason", "broken", "--json"
            )
            assert done.exit_code == 0, done.output
            # The deployer runs in this process: its log lines may share the output.
            removed, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{") :])
            assert removed["removed_at"] and removed["removal_reason"] == "broken"

            # SDK: a repeat answers the same; listings leave it out unless asked.
            again = await asyncio.to_thread(mm.remove_device, first)
            assert again.removed_at is not None
            assert again.removed_at.isoformat().startswith(removed["removed_at"][:19])
            listed = await asyncio.to_thread(mm.list_devices, group=group)
            assert [d.device_id for d in listed] == [second]
            everyone = await asyncio.to_thread(mm.list_devices, group=group, include_removed=True)
            assert {d.device_id: d.removed_at is not None for d in everyone} == {
                first: True,
                second: False,
            }
            table = await asyncio.to_thread(cli, "device", "list", "--group", group,
                                            "--include-removed")  # fmt: skip
            assert table.exit_code == 0 and "removed" in table.stdout
            shown = await asyncio.to_thread(cli, "device", "show", first)
            assert "removed" in shown.stdout and "broken" in shown.stdout

            with pytest.raises(NotFoundError):
                await asyncio.to_thread(mm.remove_device, unique_id("nobody-"))
            viewer = ModelManager(url, create_api_key(settings, role="viewer"))
            stack.callback(viewer.close)
            with pytest.raises(PermissionDeniedError):
                await asyncio.to_thread(viewer.remove_device, second)
