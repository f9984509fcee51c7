"""The edge runtime on a real broker: confinement by the broker's ACLs, and activation
while the device is serving."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime
from schemas.events import TargetState
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import (
    TOPICS,
    bias_model,
    device_public_key,
    enroll_device,
    fake_platform,
    manifest_for,
    padded_model,
    put,
    running,
    service_mqtt,
)


async def test_device_cannot_touch_another_devices_topics(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    key = Ed25519PrivateKey.generate()
    a, b = unique_id("dev-a-"), unique_id("dev-b-")
    reply_a = await enroll_device(mqtt_admin, mosquitto_server, tmp_path / a, a, key)
    await enroll_device(mqtt_admin, mosquitto_server, tmp_path / b, b, key)
    svc = await mqtt_user(roles=[SERVICE_ROLE])
    async with (
        aiomqtt.Client(mosquitto_server.host, mosquitto_server.port,
                       username=reply_a.mqtt.username, password=reply_a.mqtt.password,
                       identifier=reply_a.mqtt.client_id,
                       protocol=aiomqtt.ProtocolVersion.V5) as device_a,
        aiomqtt.Client(mosquitto_server.host, mosquitto_server.port, username=svc[0],
                       password=svc[1], protocol=aiomqtt.ProtocolVersion.V5) as platform,
    ):  # fmt: skip
        for topic in (TOPICS.desired(b), TOPICS.device_chunks(b), TOPICS.state(b),
                      TOPICS.metrics(b), f"{TOPICS.prefix}/devices/+/desired",
                      f"{TOPICS.prefix}/#"):  # fmt: skip
            codes = await device_a.subscribe(topic, qos=1)
            assert [c.value for c in codes] == [0x87], topic  # type: ignore[union-attr]
        assert [c.value for c in await device_a.subscribe(TOPICS.desired(a), qos=1)] == [1]  # type: ignore[union-attr]

        await platform.subscribe(f"{TOPICS.prefix}/devices/+/state", qos=1)
        await platform.subscribe(f"{TOPICS.prefix}/devices/+/metrics", qos=1)
        # Forged publishes get a PUBACK and are dropped by the broker; A's own message,
        # sent after them on the same connection, arrives first and alone.
        await device_a.publish(TOPICS.state(b), b"forged-state", qos=1)
        await device_a.publish(TOPICS.metrics(b), b"forged-metrics", qos=1)
        await device_a.publish(TOPICS.metrics(a), b"mine", qos=1)
        received = []
        async with asyncio.timeout(5):
            async for message in platform.messages:
                received.append((str(message.topic), message.payload))
                if message.payload == b"mine":
                    break
        await asyncio.sleep(0.3)
        while len(platform.messages):
            message = await anext(platform.messages)
            received.append((str(message.topic), message.payload))
    # The broker is shared with other tests: look only at these two devices' topics.
    ours = {TOPICS.state(a), TOPICS.state(b), TOPICS.metrics(a), TOPICS.metrics(b)}
    assert [m for m in received if m[0] in ours] == [(TOPICS.metrics(a), b"mine")]


async def test_activation_under_load_fails_no_request(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    key = Ed25519PrivateKey.generate()
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=262144)
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    await enroll_device(mqtt_admin, mosquitto_server, state_dir, device_id, key)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    v1 = await put(store, bias_model(0.25))
    v2 = await put(store, padded_model(4 * 1024 * 1024, seed=21))
    async with (
        fake_platform(service_mqtt(mosquitto_server, *user), store, key) as platform,
        running(EdgeRuntime(state_dir)) as rt,
    ):
        pub = device_public_key(state_dir)
        m1 = manifest_for(store, v1, device_id=device_id, public_key=pub, sequence=1)
        await platform.publish_manifest(m1)
        await rt.wait_for(lambda r: r.active is not None, 20)

        answered: Counter[str] = Counter()
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    info, _ = await rt.host.run()
                    answered[info.version] += 1
                except Exception as exc:  # every failure is what this test looks for
                    failures.append(exc)
                await asyncio.sleep(0.002)

        load = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.3)
        m2 = manifest_for(store, v2, device_id=device_id, public_key=pub, sequence=2,
                          version="2.0.0")  # fmt: skip
        await platform.publish_manifest(m2)
        await rt.wait_for(lambda r: r.active is not None and r.active.version == "2.0.0", 30)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*load)
    assert failures == []
    assert answered["1.0.0"] > 0 and answered["2.0.0"] > 0
    assert rt.snapshot().deployment.state is TargetState.ACTIVE  # type: ignore[union-attr]
    assert rt.snapshot().previous.version == "1.0.0"  # type: ignore[union-attr]
