"""The fleet simulator enrols a device again when its enrolment no longer holds (the
device was removed: its broker account is gone), instead of running it with credentials
the broker refuses forever; against the API, the registry and the deployer on real NATS
and Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack

from edgeaiforge import ModelManager
from edgeaiforge_stack.fleet import enroll_fleet, run_fleet
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import platform_on_broker


async def test_a_removed_device_is_enrolled_again_and_comes_online(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
    )  # fmt: skip
    group = unique_id("g-")
    removed, kept = f"{group}-001", f"{group}-002"
    root = tmp_path / "fleet"
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(create_deployer(settings))
            mm = ModelManager(url, create_api_key(settings, role="admin"))
            stack.callback(mm.close)

            def enrol(said: list[str]) -> dict[str, str]:
                return enroll_fleet(mm, [removed, kept], root, group=group, say=said.append)

            first = await asyncio.to_thread(enrol, [])
            assert first == {removed: "enrolled", kept: "enrolled"}
            await asyncio.to_thread(mm.remove_device, removed, reason="retired")

            said: list[str] = []
            second = await asyncio.to_thread(enrol, said)
            assert second == {removed: "re-enrolled", kept: "reused"}
            assert len(said) == 1, said
            assert said[0].startswith(f"{removed} was removed from the fleet"), said
            assert "retired" in said[0] and "new token" in said[0]
            device = await asyncio.to_thread(mm.get_device, removed)
            assert device.removed_at is None and device.group == group

            # Both run: the broker takes the new credentials.
            stop = asyncio.Event()
            fleet = asyncio.create_task(run_fleet(root, [removed, kept], rate=0, stop=stop))
            try:
                deadline = time.monotonic() + 30
                while True:
                    listed = await asyncio.to_thread(mm.list_devices, group=group, online=True)
                    if {d.device_id for d in listed} == {removed, kept}:
                        break
                    assert not fleet.done(), fleet.exception()
                    assert time.monotonic() < deadline, f"online: {listed}"
                    await asyncio.sleep(0.3)
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(fleet, 20)
