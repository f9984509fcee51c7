"""The device runtime ends (on stop) and reconnects (on a lost connection), and the
deployer's MQTT link stops, even when a wait inside them absorbs the cancellation, as
aiomqtt's publish does under Python 3.11 when the PUBACK arrives in the same pass of the
event loop as the cancellation (``asyncio.wait_for`` then returns the result instead of
raising)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import (
    TOPICS,
    FakePlatform,
    enroll_device,
    fake_platform,
    forget_device,
    service_mqtt,
)


@pytest.fixture
async def platform(mosquitto_server, mqtt_user, tmp_path) -> AsyncIterator[FakePlatform]:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=4096)
    async with fake_platform(
        service_mqtt(mosquitto_server, *user), store, Ed25519PrivateKey.generate()
    ) as p:
        yield p


def absorb_one_cancellation(monkeypatch: pytest.MonkeyPatch, topic: str) -> asyncio.Event:
    """The next publish on ``topic`` waits for its PUBACK until cancelled, then returns as
    if acknowledged: what Python 3.11's ``asyncio.wait_for`` in aiomqtt's publish does when
    the PUBACK and the cancellation arrive together. The event is set once it waits."""
    real = aiomqtt.Client.publish
    waiting = asyncio.Event()

    async def publish(self: aiomqtt.Client, topic_: str, *args: Any, **kwargs: Any) -> None:
        await real(self, topic_, *args, **kwargs)
        if str(topic_) == topic and not waiting.is_set():
            waiting.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    monkeypatch.setattr(aiomqtt.Client, "publish", publish)
    return waiting


async def reporting(platform: FakePlatform, rt: EdgeRuntime, waiting: asyncio.Event) -> None:
    """Make the device report (it refuses a malformed manifest) and wait until its reporter
    is in the publish that absorbs the cancellation."""
    await platform.publish_raw(rt.device_id, b"not a manifest")
    await asyncio.wait_for(waiting.wait(), 10)


def test_python_311_wait_for_absorbs_a_cancellation_arriving_with_the_result() -> None:
    """Why the runtime cancels again: the behaviour the fake above stands in for."""

    async def main() -> bool:
        acked = asyncio.Event()

        async def reporter() -> None:
            while True:
                await asyncio.wait_for(acked.wait(), 10)
                acked.clear()

        task = asyncio.create_task(reporter())
        await asyncio.sleep(0)
        acked.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return bool(done)

    ended = asyncio.run(main())
    assert ended is (sys.version_info >= (3, 12))


async def test_runtime_stops_although_a_report_absorbed_the_cancellation(
    platform, mosquitto_server, mqtt_admin, tmp_path, unique_id, monkeypatch
) -> None:
    device_id = unique_id("dev-")
    state_dir: Path = tmp_path / device_id
    await enroll_device(
        mqtt_admin, mosquitto_server, state_dir, device_id, Ed25519PrivateKey.generate()
    )
    rt = EdgeRuntime(state_dir)
    task = asyncio.create_task(rt.run())
    try:
        await asyncio.wait_for(rt.wait_connected(), 15)
        waiting = absorb_one_cancellation(monkeypatch, TOPICS.state(device_id))
        await reporting(platform, rt, waiting)
        rt.stop()
        done, _ = await asyncio.wait({task}, timeout=15)
        assert done, "the runtime did not stop"
        task.result()
    finally:
        rt.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await forget_device(state_dir)


async def test_runtime_reconnects_although_a_report_absorbed_the_cancellation(
    platform, mosquitto_server, mqtt_admin, tmp_path, unique_id, monkeypatch
) -> None:
    device_id = unique_id("dev-")
    state_dir: Path = tmp_path / device_id
    reply = await enroll_device(
        mqtt_admin, mosquitto_server, state_dir, device_id, Ed25519PrivateKey.generate()
    )
    rt = EdgeRuntime(state_dir, reconnect_min=0.1)
    task = asyncio.create_task(rt.run())
    try:
        await asyncio.wait_for(rt.wait_connected(), 15)
        waiting = absorb_one_cancellation(monkeypatch, TOPICS.state(device_id))
        await reporting(platform, rt, waiting)
        # A client with the device's id takes its session over: the device's connection ends.
        async with aiomqtt.Client(
            mosquitto_server.host, mosquitto_server.port, username=reply.mqtt.username,
            password=reply.mqtt.password, identifier=reply.mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
        ):  # fmt: skip
            pass
        await rt.wait_for(lambda r: r.stats["connections"] >= 2 and r.connected, 20)
    finally:
        rt.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 20)
        await forget_device(state_dir)


async def test_deployer_link_stops_although_a_handler_absorbed_the_cancellation(
    mosquitto_server, mqtt_user, unique_id
) -> None:
    from services.deployer.mqtt import MqttLink

    user = await mqtt_user(roles=[SERVICE_ROLE])
    topic = f"{TOPICS.prefix}/devices/{unique_id('dev-')}/state"
    handling = asyncio.Event()

    async def on_message(message: aiomqtt.Message) -> None:
        handling.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a wait_for in 3.11 may
            await asyncio.Event().wait()

    link = MqttLink(
        service_mqtt(mosquitto_server, *user),
        client_id=unique_id("link-"),
        subscriptions=[topic],
    )
    await link.start(on_message=on_message)
    try:
        await link.publish(topic, b"{}", qos=1)
        await asyncio.wait_for(handling.wait(), 10)
        stopping = asyncio.create_task(link.stop())
        done, _ = await asyncio.wait({stopping}, timeout=15)
        assert done, "the link did not stop"
        stopping.result()
    finally:
        if link._task is not None and not link._task.done():
            link._task.cancel()  # the link did not stop: do not leave it running


async def test_runtime_reconnects_at_once_when_a_report_is_not_acknowledged(
    platform, mosquitto_server, mqtt_admin, tmp_path, unique_id, monkeypatch
) -> None:
    """A report whose PUBACK does not come in time (aiomqtt raises after its timeout) ends
    the session at once; before, only the next incoming message did, and after the last
    chunk none may come: the device went silent until the deployer notified it again."""
    device_id = unique_id("dev-")
    state_dir: Path = tmp_path / device_id
    await enroll_device(
        mqtt_admin, mosquitto_server, state_dir, device_id, Ed25519PrivateKey.generate()
    )
    rt = EdgeRuntime(state_dir, reconnect_min=0.1)
    task = asyncio.create_task(rt.run())
    try:
        await asyncio.wait_for(rt.wait_connected(), 15)
        real = aiomqtt.Client.publish
        failed = asyncio.Event()

        async def publish(self: aiomqtt.Client, topic: str, *args: Any, **kwargs: Any) -> None:
            if str(topic) == TOPICS.state(device_id) and not failed.is_set():
                failed.set()
                raise aiomqtt.MqttError("Operation timed out")
            await real(self, topic, *args, **kwargs)

        monkeypatch.setattr(aiomqtt.Client, "publish", publish)
        await platform.publish_raw(device_id, b"not a manifest")
        await asyncio.wait_for(failed.wait(), 10)
        await rt.wait_for(lambda r: r.stats["connections"] >= 2 and r.connected, 20)
    finally:
        rt.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 20)
        await forget_device(state_dir)
