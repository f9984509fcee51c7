"""Whether a device is online, and when it was last seen, on real Mosquitto and the deployer.

A device is online only while it is connected: a retained report that the broker hands a
restarted deployer is what the device said before, no sign of life; a device whose
credentials the platform replaces is dropped by the broker without a will, and the
platform marks it offline itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from edge_runtime import ConnectionState, EdgeRuntime
from edgeaiforge_stack.servers import MosquittoServer, NatsServer
from schemas.topics import Topics
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service
from tests.support.deploy import (
    StaticCatalog,
    deployer_settings,
    enroll_via_rpc,
    forget_device,
    running,
)
from tests.support.deployer_env import device_info, until_online

TOPICS = Topics("eaf/v1")


async def retained_online(server: MosquittoServer, user: tuple[str, str], device_id: str) -> bytes:
    """The retained ``online`` flag of ``device_id`` as a new subscriber gets it."""
    async with aiomqtt.Client(
        server.host, server.port, username=user[0], password=user[1], timeout=10
    ) as client:
        await client.subscribe(TOPICS.online(device_id), qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = message.payload
                return bytes(payload) if isinstance(payload, bytes | bytearray) else b""
    raise AssertionError("no retained online flag")


async def test_a_restarted_deployer_does_not_take_retained_reports_for_signs_of_life(
    nats_server: NatsServer,
    mosquitto_server: MosquittoServer,
    mqtt_user: Callable[..., object],
    tmp_path: Path,
    unique_id: Callable[[str], str],
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])  # type: ignore[misc]
    settings = deployer_settings(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, service_user=tuple(user)
    )
    gone, live = unique_id("gone-"), unique_id("live-")
    async with create_service(settings, catalog=StaticCatalog()) as app:
        for device_id in (gone, live):
            await enroll_via_rpc(app.bus, tmp_path / device_id, device_id)
        async with running(EdgeRuntime(tmp_path / gone), forget=False):
            await until_online(app.bus, gone, True, 10)
        # Stopped cleanly: offline at once (its goodbye), its retained state stays behind.
        before = await until_online(app.bus, gone, False, 5)
    assert before.last_seen is not None
    await asyncio.sleep(0.2)
    try:
        async with create_service(settings, catalog=StaticCatalog()) as app:
            # A device that connects now is heard after the retained reports of the other,
            # which the broker delivered when the deployer subscribed.
            async with running(EdgeRuntime(tmp_path / live)):
                now_live = await until_online(app.bus, live, True, 10)
                assert now_live.last_seen is not None and now_live.last_seen > before.last_seen
                after = await device_info(app.bus, gone)
            assert not after.online
            assert after.last_seen == before.last_seen
    finally:
        await forget_device(tmp_path / gone)


async def test_a_reenrolled_device_is_shown_offline_until_it_connects_again(
    nats_server: NatsServer,
    mosquitto_server: MosquittoServer,
    mqtt_user: Callable[..., object],
    tmp_path: Path,
    unique_id: Callable[[str], str],
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])  # type: ignore[misc]
    settings = deployer_settings(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, service_user=tuple(user)
    )
    device_id = unique_id("dev-")
    old_dir, new_dir = tmp_path / "old" / device_id, tmp_path / "new" / device_id
    async with create_service(settings, catalog=StaticCatalog()) as app:
        await enroll_via_rpc(app.bus, old_dir, device_id)
        old = EdgeRuntime(old_dir, reconnect_refused=0.2)
        async with running(old, forget=False):
            await until_online(app.bus, device_id, True, 10)
            await asyncio.sleep(0.2)  # its first reports are in
            enrolling = datetime.now(UTC)
            await enroll_via_rpc(app.bus, new_dir, device_id)
            # The broker dropped the old session (new password, no will): the platform says
            # so itself, in its database and in the retained flag.
            shown = await device_info(app.bus, device_id)
            assert not shown.online
            assert shown.last_seen is not None and shown.last_seen < enrolling
            assert await retained_online(mosquitto_server, tuple(user), device_id) == b"0"
            deadline = time.monotonic() + 10
            while old.connection.state is not ConnectionState.NOT_AUTHORIZED:
                assert time.monotonic() < deadline, old.connection
                await asyncio.sleep(0.05)
            assert not (await device_info(app.bus, device_id)).online
        async with running(EdgeRuntime(new_dir)):
            await until_online(app.bus, device_id, True, 10)
