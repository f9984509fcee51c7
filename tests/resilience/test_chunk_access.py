"""The chunk server cannot be aimed: a device asks for chunks to be sent to another
device's topic, or for an artifact it has no deployment of, and nothing is sent; the
rightful device asking for the same chunks gets them.

Its own module: the API platform of test_access.py runs a deployer that joins the same
shared subscription and would take some of these requests."""

from __future__ import annotations

import asyncio
import os

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas.transfer import ChunkRequest
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import TOPICS, enroll_device, fake_platform, put, service_mqtt


def request_props(response_topic: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    return props


async def test_chunk_server_cannot_be_aimed_at_another_device(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    key = Ed25519PrivateKey.generate()
    a, b = unique_id("dev-a-"), unique_id("dev-b-")
    ra = await enroll_device(mqtt_admin, mosquitto_server, tmp_path / a, a, key)
    rb = await enroll_device(mqtt_admin, mosquitto_server, tmp_path / b, b, key)
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=4096)
    info = await put(store, os.urandom(20_000))
    svc = await mqtt_user(roles=[SERVICE_ROLE])

    def client(reply):
        return aiomqtt.Client(
            mosquitto_server.host, mosquitto_server.port, username=reply.mqtt.username,
            password=reply.mqtt.password, identifier=reply.mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
        )  # fmt: skip

    get = TOPICS.artifact_get(info.artifact_id)
    async with (
        fake_platform(service_mqtt(mosquitto_server, *svc), store, key) as platform,
        client(ra) as device_a,
        client(rb) as device_b,
    ):
        platform.allowed.add((b, info.artifact_id))  # B has a deployment of it; A has none
        await device_a.subscribe(TOPICS.device_chunks(a), qos=1)
        await device_b.subscribe(TOPICS.device_chunks(b), qos=1)
        attempts = [(a, TOPICS.device_chunks(b)), (a, TOPICS.device_chunks(a)),
                    (b, TOPICS.device_chunks(a))]  # fmt: skip
        for claimed, response_topic in attempts:
            request = ChunkRequest(device_id=claimed, deployment_id="d", indexes=(0, 1))
            await device_a.publish(
                get, request.model_dump_json().encode(), qos=1,
                properties=request_props(response_topic),
            )  # fmt: skip
        async with asyncio.timeout(10):
            while platform.server.requests < len(attempts):
                await asyncio.sleep(0.05)
        assert platform.server.refused == len(attempts)
        # The rightful request, last: B gets its two chunks, and nothing else came before.
        request = ChunkRequest(device_id=b, deployment_id="d", indexes=(0, 1))
        await device_b.publish(
            get, request.model_dump_json().encode(), qos=1,
            properties=request_props(TOPICS.device_chunks(b)),
        )  # fmt: skip
        got: list[int] = []
        async with asyncio.timeout(10):
            async for message in device_b.messages:
                props = dict(message.properties.UserProperty)
                got.append(int(props["index"]))
                if len(got) == 2:
                    break
        await asyncio.sleep(0.3)
        assert len(device_a.messages) == 0 and len(device_b.messages) == 0
    assert sorted(got) == [0, 1]
    assert platform.server.chunks_sent == 2
